import json

import pytest

from shared.data import DataError, load_platform


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
    folder = tmp_path / "j"
    folder.mkdir()
    import csv

    for stem in ("items", "interactions"):
        with (
            (platform_dir / f"{stem}.csv").open() as fh,
            (folder / f"{stem}.jsonl").open("w") as out,
        ):
            for row in csv.DictReader(fh):
                if stem == "items":
                    row["categories"] = row["categories"].split("|")
                out.write(json.dumps(row) + "\n")
    other = load_platform(folder, "tiny")
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
