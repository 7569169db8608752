"""`fedxrec rank` as a new user runs it: a real process, its stderr, its exit code."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared.process import DEFAULTS
from simulations.cli import main
from tests.conftest import platform_as_jsonl

ROOT = Path(__file__).resolve().parents[3]
NOISE = ("Warning", "Loading weights", "Traceback")


def fedxrec(*args: str) -> subprocess.CompletedProcess:
    """The installed command in a fresh process, without the defaults the test process set
    (so the command has to set them itself)."""
    env = {k: v for k, v in os.environ.items() if k not in DEFAULTS and k != "FEDXREC_DEBUG"}
    command = [sys.executable, "-c", "import sys; from simulations.cli import main; "
               "sys.exit(main())", *args]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_rank_shows_no_library_noise_and_a_repeat_reads_its_caches(
    adapter_dir, encoder_dir, platform_dir
):
    cache = platform_dir / "cache"
    args = [
        "rank", "--adapter", str(adapter_dir), "--items", str(platform_dir / "items.csv"),
        "--encoder", str(encoder_dir), "--cache-dir", str(cache), "--device", "cpu",
        "--history", "m1,m2", "--k", "3", "--format", "json",
    ]  # fmt: skip
    first, second = fedxrec(*args), fedxrec(*args)
    for run in (first, second):
        assert run.returncode == 0, run.stderr
        assert not [word for word in NOISE if word in run.stderr], run.stderr
    assert "8 item vectors encoded" in first.stderr and "loaded from cache" not in first.stderr
    assert (
        "fedxrec rank: item vectors, collaborative index and fusion weights loaded from cache "
        f"{cache}" in second.stderr
    )
    assert json.loads(second.stdout)["users"] == json.loads(first.stdout)["users"]
    fusion = json.loads(first.stdout)["fusion"]  # what the fit chose, its shrinkage included
    assert set(fusion["weights"]) >= {"model", "popularity"} and fusion["kappa"] >= 0


def _write_jsonl(path: Path, line: int, **changes: object) -> Path:
    rows = [json.loads(text) for text in path.read_text().splitlines()]
    rows[line - 1].update(changes)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


BAD_FILES = [
    ("items", {"categories": 5}, "categories 5 is not a list of names"),
    ("items", {"categories": [1, 2]}, "categories [1, 2] holds a non-string"),
    ("items", {"title": {"en": "Heat"}}, 'title {"en": "Heat"} is not a string'),
    ("items", {"item_id": True}, "item_id true is not an id"),
    ("interactions", {"timestamp": True}, "timestamp true is not a number"),
    ("interactions", {"user_id": [1]}, "user_id [1] is not an id"),
]


@pytest.mark.parametrize(("stem", "changes", "message"), BAD_FILES, ids=repr)
def test_rank_with_a_bad_file_says_which_line_and_field_in_one_paragraph(
    capsys, monkeypatch, tmp_path, adapter_dir, encoder_dir, platform_dir, stem, changes, message
):
    monkeypatch.delenv("FEDXREC_DEBUG", raising=False)
    site = platform_as_jsonl(platform_dir, tmp_path / "site")
    bad = _write_jsonl(site / f"{stem}.jsonl", 3, **changes)
    code = main(
        [
            "rank", "--adapter", str(adapter_dir), "--items", str(site / "items.jsonl"),
            "--encoder", str(encoder_dir), "--cache-dir", str(tmp_path / "cache"),
            "--device", "cpu", "--history", "m1",
        ]
    )  # fmt: skip
    error, hint = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert error.startswith(f"fedxrec rank: error: {bad}, line 3: {message}"), error
    assert hint == "(set FEDXREC_DEBUG=1 to see the traceback)"


def test_a_bad_items_file_and_a_bad_users_file_end_the_process_with_code_2(
    tmp_path, adapter_dir, encoder_dir, platform_dir
):
    site = platform_as_jsonl(platform_dir, tmp_path / "site")
    users = _write_jsonl(tmp_path / "site" / "interactions.jsonl", 2, rating="five")
    common = ["rank", "--adapter", str(adapter_dir), "--encoder", str(encoder_dir), "--no-cache"]
    (site / "interactions.jsonl").rename(tmp_path / "users.jsonl")  # the ranking is text-only
    done = fedxrec(
        *common, "--items", str(site / "items.jsonl"), "--users", str(tmp_path / "users.jsonl")
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (
        f"{users.parent.parent / 'users.jsonl'}, line 2: rating 'five' is not a number"
        in done.stderr
    )
    _write_jsonl(site / "items.jsonl", 1, categories=[1, 2])
    done = fedxrec(*common, "--items", str(site / "items.jsonl"), "--history", "m1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(
        f"fedxrec rank: error: {site / 'items.jsonl'}, line 1: categories"
    )


@pytest.mark.parametrize("port, said", [("70000", "70000 is out of range"), ("http", "'http'")])
def test_serve_refuses_a_port_that_cannot_be_before_loading_anything(capsys, port, said):
    with pytest.raises(SystemExit) as done:
        main(["serve", "--adapter", "nowhere", "--items", "nothing.csv", "--port", port])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --port: {said}" in err and "Traceback" not in err


def test_rank_names_an_adapter_settings_file_that_is_not_an_object(
    capsys, tmp_path, adapter_dir, encoder_dir, platform_dir
):
    broken = tmp_path / "adapter"
    shutil.copytree(adapter_dir, broken)
    (broken / "fedxrec.json").write_text("[1, 2]")
    code = main(
        ["rank", "--adapter", str(broken), "--items", str(platform_dir / "items.csv"),
         "--encoder", str(encoder_dir), "--no-cache", "--history", "m1"]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert f"{broken / 'fedxrec.json'} holds a JSON list, not an object" in err
