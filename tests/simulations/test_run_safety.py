"""`fedxrec simulate` never loses a run: everything is checked before anything is deleted."""

import shutil

import pytest

from shared.config import DataConfig
from shared.data import DataError
from simulations.cli import main
from simulations.data.partition import prepare_platforms


def _finished_run(out):
    """The files a finished run leaves (their content does not matter here)."""
    for folder in ("platforms/a", "state/a", "rounds/round-001", "adapter"):
        (out / folder).mkdir(parents=True)
    (out / "metrics.json").write_text("{}")
    (out / "state" / "a" / "privacy_ledger.json").write_text("{}")
    return sorted(p.relative_to(out) for p in out.rglob("*"))


def test_a_finished_run_is_never_replaced_without_overwrite(tmp_path, capsys):
    before = _finished_run(tmp_path)
    assert main(["simulate", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "holds a previous run" in err and "--resume" in err and "--overwrite" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_bad_data_is_refused_before_an_overwrite_deletes_anything(tmp_path, capsys):
    before = _finished_run(tmp_path)
    code = main(["simulate", "--out", str(tmp_path), "--overwrite", "--data", "ml-100kk"])
    assert code == 2 and "neither a known data set" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_resume_needs_a_stopped_federation_and_keeps_its_platforms(tmp_path, capsys):
    assert main(["simulate", "--out", str(tmp_path), "--resume"]) == 2
    assert "holds no stopped federation" in capsys.readouterr().err
    assert main(["simulate", "--out", str(tmp_path), "--resume", "--data", "ml-1m"]) == 2
    assert "drop --data" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: one or the other
        main(["simulate", "--out", str(tmp_path), "--resume", "--overwrite"])
    assert "not allowed with argument --resume" in capsys.readouterr().err


def test_platform_names_that_cannot_travel_are_refused_up_front(tmp_path, platform_dir):
    data = tmp_path / "mine"
    shutil.copytree(platform_dir, data / "books,films")
    with pytest.raises(DataError, match="'books,films'.*no commas"):
        prepare_platforms(DataConfig(dataset=str(data)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_platforms_and_max_users_apply_to_your_own_data(tmp_path, platform_dir):
    data = tmp_path / "mine"
    for name in ("books", "films", "news"):
        shutil.copytree(platform_dir, data / name)
    cfg = DataConfig(dataset=str(data), platforms="films,news", max_users=2)
    names = prepare_platforms(cfg, tmp_path / "out")
    assert names == ["films", "news"]
    from shared.data import load_platform

    assert all(load_platform(tmp_path / "out" / n, n).num_users == 2 for n in names)
    with pytest.raises(DataError, match="--platforms names music"):
        prepare_platforms(DataConfig(dataset=str(data), platforms="music"), tmp_path / "o2")


def test_a_data_error_names_your_file_not_the_copy(tmp_path, platform_dir):
    data = tmp_path / "mine" / "books"
    shutil.copytree(platform_dir, data)
    with (data / "interactions.csv").open("a") as fh:
        fh.write("u1,m1,yesterday,5\n")
    with pytest.raises(DataError) as err:
        prepare_platforms(DataConfig(dataset=str(tmp_path / "mine")), tmp_path / "out")
    assert str(data / "interactions.csv") in str(err.value) and "timestamp" in str(err.value)
