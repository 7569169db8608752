import csv
import json
import math

import pytest

from shared.data import DataError, load_platform, read_interactions, read_items
from tests.conftest import platform_as_jsonl


def test_fixture_parses_and_orders_histories_in_time(tiny_platform):
    data = tiny_platform
    assert data.users == ["u1", "u2", "u3"]  # u4 has 2 interactions: too few for leave-last-out
    ids = lambda seq: [data.items[i].item_id for i in seq]  # noqa: E731
    assert ids(data.sequences[1]) == ["m7", "m3", "m8"]  # u2's rows are out of order in the file
    history, target = data.split(0, "test")
    assert ids(history) == ["m1", "m2", "m6"] and data.items[target].item_id == "m5"
    history, target = data.split(0, "validation")
    assert ids(history) == ["m1", "m2"] and data.items[target].item_id == "m6"
    assert ids(data.train_sequence(2)) == ["m4", "m8", "m5"]
    assert data.items[0].categories == ("Action", "Sci-Fi")


def test_jsonl_equals_csv(tmp_path, tiny_platform, platform_dir):
    other = load_platform(platform_as_jsonl(platform_dir, tmp_path / "j"), "tiny")
    assert other.sequences == tiny_platform.sequences
    assert other.items == tiny_platform.items


def _edit(folder, name, transform):
    path = folder / name
    path.write_text(transform(path.read_text()))


@pytest.mark.parametrize(
    ("file", "transform", "message"),
    [
        ("items.csv", lambda t: t.replace("item_id,title", "item_id,name"), "missing column"),
        (
            "items.csv",
            lambda t: t.replace("m3,Toy Story", "m3,"),
            "line 4: item 'm3' has an empty title",
        ),
        (
            "interactions.csv",
            lambda t: t + "u9,m99,5,1\n",
            "line 16: item 'm99' is not in the items",
        ),
        (
            "interactions.csv",
            lambda t: t.replace("u1,m2,200", "u1,m2,yesterday"),
            "line 3: timestamp 'yesterday'",
        ),
        ("interactions.csv", lambda t: t + "u1,m1,100,5\n", "line 16: duplicate of line 2"),
        ("interactions.csv", lambda t: t.replace("timestamp,", ""), "missing column"),
        ("items.csv", lambda t: t + "m1,Again,2000,,\n", "item 'm1' is listed twice"),
    ],
)
def test_bad_input_names_file_row_and_fix(platform_dir, file, transform, message):
    _edit(platform_dir, file, transform)
    with pytest.raises(DataError) as err:
        load_platform(platform_dir)
    assert file in str(err.value)
    assert message in str(err.value)


def test_missing_files(tmp_path, platform_dir):
    with pytest.raises(DataError, match="does not exist"):
        load_platform(tmp_path / "nowhere")
    (platform_dir / "items.csv").unlink()
    with pytest.raises(DataError, match="no items.csv or items.jsonl"):
        load_platform(platform_dir)


def test_bad_jsonl_line(tmp_path):
    (tmp_path / "items.jsonl").write_text('{"item_id": "a", "title": "A"}\nnot json\n')
    (tmp_path / "interactions.jsonl").write_text("")
    with pytest.raises(DataError, match=r"items.jsonl, line 2: not valid JSON"):
        load_platform(tmp_path)


# ---- every field of both files, in both formats, with a value of the wrong type or form --------

ITEM_FIELDS = ("item_id", "title", "categories", "year", "description")
INTERACTION_FIELDS = ("user_id", "item_id", "timestamp", "rating")
BAD_JSONL = [
    *[("items", "item_id", v) for v in (True, 1.5, None, {"id": 1}, ["m1"], "", "  ")],
    *[("items", "title", v) for v in ({"en": "Heat"}, 5, None, ["Heat"], True, "", "  ")],
    *[("items", "categories", v) for v in (5, [1, 2], ["Action", None], {"a": 1}, True)],
    *[("items", "year", v) for v in (1995.5, True, ["1995"], {"y": 1995}, math.inf)],
    *[("items", "description", v) for v in (5, ["space"], {"en": "space"}, False)],
    *[("interactions", "user_id", v) for v in (True, 2.5, None, [], {"u": 1}, "")],
    *[("interactions", "item_id", v) for v in (False, 1.25, None, ["m1"], {"m": 1}, " ")],
    *[("interactions", "timestamp", v) for v in (True, "notatime", None, [1], {"t": 1}, math.nan)],
    *[("interactions", "rating", v) for v in (True, "five", [5], {"stars": 5}, math.inf)],
]
# A CSV cell is always text, so only an empty or malformed text can be wrong, and a description
# or a year (any text: shared/fields.py) never is.
BAD_CSV = [
    *[("items", "item_id", v) for v in ("", "  ")],
    *[("items", "title", v) for v in ("", " ")],
    ("items", "categories", '["Action", "Drama"]'),
    *[("interactions", "user_id", v) for v in ("", " ")],
    ("interactions", "item_id", ""),
    *[("interactions", "timestamp", v) for v in ("notatime", "", "inf", "12:30")],
    *[("interactions", "rating", v) for v in ("five", "nan", "4 stars")],
]


def test_the_bad_input_suite_covers_every_field():
    for cases, fields_left_out in (
        (BAD_JSONL, set()),
        (BAD_CSV, {("items", "description"), ("items", "year")}),
    ):
        covered = {(stem, name) for stem, name, _ in cases}
        every = {("items", f) for f in ITEM_FIELDS} | {
            ("interactions", f) for f in INTERACTION_FIELDS
        }
        assert covered == every - fields_left_out


def _write_with(folder, stem, suffix, field, value):
    """Rewrite ``folder/stem.suffix`` with ``field`` of its second row set to ``value``; return
    the file and that row's line number."""
    path = folder / f"{stem}{suffix}"
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        rows[1][field] = value
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return path, 2
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[1][field] = value
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path, 3


def _assert_names_file_line_and_field(folder, path, line, field):
    with pytest.raises(DataError) as err:
        load_platform(folder)
    message = str(err.value)
    assert issubclass(err.type, ValueError)
    assert message.startswith(f"{path}, line {line}: "), message
    assert field in message, message
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("stem", "field", "value"), BAD_JSONL, ids=repr)
def test_a_wrong_jsonl_value_names_the_file_line_and_field(
    tmp_path, platform_dir, stem, field, value
):
    folder = platform_as_jsonl(platform_dir, tmp_path / "site")
    path, line = _write_with(folder, stem, ".jsonl", field, value)
    message = _assert_names_file_line_and_field(folder, path, line, field)
    if not isinstance(value, str):
        assert json.dumps(value) in message  # the value as it is in the file


@pytest.mark.parametrize(("stem", "field", "value"), BAD_CSV, ids=repr)
def test_a_wrong_csv_value_names_the_file_line_and_field(platform_dir, stem, field, value):
    path, line = _write_with(platform_dir, stem, ".csv", field, value)
    _assert_names_file_line_and_field(platform_dir, path, line, field)


def test_messages_say_how_to_fix_the_value(tmp_path, platform_dir):
    folder = platform_as_jsonl(platform_dir, tmp_path / "site")
    path, _ = _write_with(folder, "items", ".jsonl", "categories", [1, 2])
    with pytest.raises(DataError, match=r"categories \[1, 2\] holds a non-string: give a list"):
        read_items(path)
    path, _ = _write_with(folder, "items", ".jsonl", "title", {"en": "Heat"})
    with pytest.raises(DataError, match=r'title \{"en": "Heat"\} is not a string: give it as text'):
        read_items(path)
    path, _ = _write_with(folder, "interactions", ".jsonl", "timestamp", True)
    with pytest.raises(DataError, match="timestamp true is not a number; use Unix seconds"):
        read_interactions(path, {f"m{k}" for k in range(1, 9)})


def test_jsonl_values_of_the_right_type_in_other_forms_are_read(tmp_path, platform_dir):
    """Integer ids, a "a|b" categories string, an integer year, numeric strings, null optionals."""
    folder = platform_as_jsonl(platform_dir, tmp_path / "site")
    items = [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines()]
    items[0].update(item_id=1, categories="Action|Sci-Fi", year=1977, description=None)
    items[1].update(year="", categories=None)
    (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    rows = [json.loads(line) for line in (folder / "interactions.jsonl").read_text().splitlines()]
    for row in rows:
        row["item_id"] = 1.0 if row["item_id"] == "m1" else row["item_id"]
        row.update(timestamp=float(row["timestamp"]), rating=None)
    (folder / "interactions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_platform(folder)
    first = data.items[0]
    assert (first.item_id, first.categories, first.year, first.description) == (
        "1",
        ("Action", "Sci-Fi"),
        "1977",
        "",
    )
    assert data.items[1].year == "" and data.items[1].categories == ()
    assert data.items[data.sequences[0][0]].item_id == "1"  # u1's first item, m1 renamed 1


def test_a_short_csv_row_is_refused(platform_dir):
    path = platform_dir / "interactions.csv"
    path.write_text(path.read_text() + "u9\n")
    with pytest.raises(DataError, match=r"line 16: fewer fields than the header has \(no item_id"):
        load_platform(platform_dir)
