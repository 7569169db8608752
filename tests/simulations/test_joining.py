"""What joining gives each site: the site trained alone beside the federation's model, in process,
with the tiny encoder."""

import math

from shared.adapter import adapter_hash, read_adapter
from simulations.inprocess import federate
from simulations.joining import COLUMNS, SiteGain, gains_rows, joined_adapter, site_gains
from simulations.simulate import baseline_metrics
from tests.clients.scorer.support import save_tiny_adapter, save_tiny_encoder
from tests.conftest import tiny_federation_config, write_synthetic_site


def test_each_site_is_trained_alone_and_measured_beside_the_federation(tmp_path, tiny_vocab):
    cfg = tiny_federation_config(save_tiny_encoder(tiny_vocab, tmp_path / "encoder"))
    sites = {
        name: write_synthetic_site(tmp_path / name, users=users, seed=seed, prefix=name)
        for name, users, seed in (("big", 12, 1), ("small", 6, 2))
    }
    run = federate(sites, cfg, tmp_path / "federation")
    joined = {n: run.personal_adapters().get(n, run.global_adapter()) for n in sites}
    lines: list[str] = []
    baselines = baseline_metrics(cfg, tmp_path, list(sites))
    gains = site_gains(cfg, sites, joined, tmp_path / "alone", baselines, log=lines.append)

    assert [g.site for g in gains] == ["big", "small"] and [g.users for g in gains] == [12, 6]
    assert len(lines) == 2 and "small (6 users) trains alone" in lines[1]
    for gain in gains:
        figures = [gain.popularity, gain.ease, gain.alone, gain.joined]
        assert all(0.0 <= f <= 1.0 for f in figures + [gain.alone_final, gain.joined_final])
        # each site's own federation of one: its ledger and its model, apart from the joined one
        alone_state = tmp_path / "alone" / gain.site / "state" / gain.site
        assert (alone_state / "privacy_ledger.json").is_file()
        alone_model = read_adapter(tmp_path / "alone" / gain.site / "out" / "adapter")
        assert any((alone_model[k] != joined[gain.site][k]).any() for k in alone_model)
    rows = gains_rows(gains)
    assert rows[0] == list(COLUMNS) and rows[1][:2] == ["big", "12"]


def test_the_gain_is_the_final_ranking_joined_over_alone():
    gain = SiteGain("s", 10, 0.1, None, 0.1, 0.2, 0.25, 0.3)
    assert math.isclose(gain.gain, 1.2)
    assert gain.row()[3] == "—" and gain.row()[-1] == "1.20×"  # no EASE figure: shown as such


def test_a_site_ranks_with_its_personal_model_else_the_global_one(tmp_path, tiny_vocab):
    save_tiny_adapter(tiny_vocab, tmp_path / "adapter", seed=1)
    save_tiny_adapter(tiny_vocab, tmp_path / "state" / "kept" / "personal", seed=2)
    global_model = read_adapter(tmp_path / "adapter")
    personal = read_adapter(tmp_path / "state" / "kept" / "personal")
    assert adapter_hash(joined_adapter(tmp_path, "kept")) == adapter_hash(personal)
    assert adapter_hash(joined_adapter(tmp_path, "other")) == adapter_hash(global_model)
