"""The multi-site targets pooled over several comparisons, on hand-made results.json files."""

import json

import pytest

from shared.metrics import METRIC_NAMES
from simulations.compare.pooled import main, pool
from simulations.compare.records import SLICES, Method, RunRecord

M = Method
USERS = {"big": 2000, "tiny": 100}


def _run(method: Method, seed: int, per: dict[str, float]) -> dict:
    test = {
        n: {s: {"users": 5, **{k: v for k in METRIC_NAMES}} for s in SLICES} for n, v in per.items()
    }
    return RunRecord(f"{method}/{seed}", method, seed, 8.0, list(per), 1.0, test, {}, []).to_json()


def _write(path, runs, partition="sites", users=USERS):
    path.mkdir()
    doc = {
        "config": {"data.partition": partition},
        "platforms": {n: {"users": u} for n, u in users.items()},
        "product_epsilon": 8.0,
        "runs": runs,
    }
    (path / "results.json").write_text(json.dumps(doc))
    return path


def test_each_figure_is_the_mean_over_every_comparisons_runs(tmp_path):
    a = _write(
        tmp_path / "a",
        [
            _run(M.LOCAL_ONLY, 0, {"big": 0.04, "tiny": 0.01}),
            _run(M.LOCAL_ONLY, 1, {"big": 0.04, "tiny": 0.02}),
            _run(M.FEDERATED_DP_PERSONALIZED, 0, {"big": 0.05, "tiny": 0.03}),
            _run(M.FEDERATED_DP_PERSONALIZED, 1, {"big": 0.05, "tiny": 0.03}),
            _run(M.FEDERATED_UNSEEN, 0, {"tiny": 0.02}),  # only in the first: not pooled
        ],
    )
    b = _write(
        tmp_path / "b",
        [
            _run(M.LOCAL_ONLY, 0, {"big": 0.07, "tiny": 0.03}),
            _run(M.FEDERATED_DP_PERSONALIZED, 0, {"big": 0.02, "tiny": 0.06}),
        ],
    )
    pooled = pool([a, b])
    assert pooled.runs == 3 and pooled.dropped == [M.FEDERATED_UNSEEN]
    first = pooled.targets[0]  # the product over local-only on the small sites' mean
    assert "tiny: 0.0400 vs 0.0200 = 2.00×" in first.detail and first.met
    largest = pooled.targets[1]
    assert "big: 0.0400 vs 0.0500 = 0.80×" in largest.detail and not largest.met


def test_comparisons_of_other_benchmarks_are_refused(tmp_path):
    a = _write(tmp_path / "a", [_run(M.LOCAL_ONLY, 0, {"big": 0.04, "tiny": 0.01})])
    b = _write(
        tmp_path / "b",
        [_run(M.LOCAL_ONLY, 0, {"big": 0.04, "tiny": 0.01})],
        users={"big": 2000, "tiny": 90},
    )
    with pytest.raises(ValueError, match="another benchmark"):
        pool([a, b])


def test_the_command_prints_the_table_and_the_targets_or_names_a_bad_path(tmp_path, capsys):
    a = _write(
        tmp_path / "a",
        [
            _run(M.LOCAL_ONLY, 0, {"big": 0.04, "tiny": 0.01}),
            _run(M.FEDERATED_DP_PERSONALIZED, 0, {"big": 0.05, "tiny": 0.03}),
        ],
    )
    assert main([str(a)]) == 0
    out = capsys.readouterr().out
    assert "| Local-only (DP) | 0.0400 | 0.0100 | **0.0250** | 1 |" in out
    assert "**met**: Federated + personalised (DP) ≥ 1.5×" in out and "not computable" in out
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "no such file" in capsys.readouterr().err
