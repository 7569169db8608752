"""User-level DP for a site's own counts: the Gaussian calibration, the contribution bound, the
noisy index and the ε the scorer reports."""

import json
import math
import random

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from clients.scorer.collaborative import CollaborativeIndex, build_collaborative_index
from clients.scorer.ease import sparse_history_matrix
from clients.scorer.model import load_site_scorer
from clients.scorer.private_counts import (
    CountPrivacy,
    gaussian_delta,
    gaussian_noise_multiplier,
    recent_distinct_positions,
)
from tests.clients.scorer.support import make_platform, save_tiny_adapter, save_tiny_encoder


def test_gaussian_delta_matches_the_analytic_formula_by_hand():
    # z = 1, ε = 1: Φ(−0.5) − e·Φ(−1.5) = 0.308538 − 2.718282·0.066807 = 0.126936
    assert gaussian_delta(1.0, 1.0) == pytest.approx(0.126936, abs=1e-5)
    assert gaussian_delta(1.0, 0.0) == 1.0


def test_noise_multiplier_is_the_smallest_that_meets_delta():
    for eps, delta in ((1.0, 1e-5), (4.0, 1e-6), (8.0, 1e-5)):
        z = gaussian_noise_multiplier(eps, delta)
        assert gaussian_delta(eps, z) <= delta < gaussian_delta(eps, z * 0.999)
    assert gaussian_noise_multiplier(1.0, 1e-5) > gaussian_noise_multiplier(8.0, 1e-5)


def test_analytic_gaussian_is_no_looser_than_opacus_rdp_for_one_release():
    z = gaussian_noise_multiplier(2.0, 1e-5)
    acc = RDPAccountant()
    acc.step(noise_multiplier=z, sample_rate=1.0)
    assert acc.get_epsilon(delta=1e-5) >= 2.0  # RDP's bound is looser: it needs more ε


def test_releases_compose_into_one_gaussian():
    one = CountPrivacy(2.0, 1e-5, max_items=3)
    two = CountPrivacy(2.0, 1e-5, max_items=3, releases=2)
    assert two.noise_multiplier == pytest.approx(one.noise_multiplier * math.sqrt(2))
    assert one.sensitivity == pytest.approx(math.sqrt(3 * 4 / 2))


def test_bad_count_privacy_settings_are_refused():
    for kwargs, message in (
        ({"epsilon": 0.0, "delta": 1e-5}, "ε must be > 0"),
        ({"epsilon": math.inf, "delta": 1e-5}, "ε must be > 0 and finite"),
        ({"epsilon": 1.0, "delta": 0.0}, "δ must be in"),
        ({"epsilon": 1.0, "delta": 1e-5, "max_items": 0}, "at least 1"),
    ):
        with pytest.raises(ValueError, match=message):
            CountPrivacy(**kwargs)


def test_each_user_counts_at_most_max_items_distinct_recent_items():
    assert recent_distinct_positions([1, 2, 1, 3, 4, 4], 3) == [2, 3, 5]
    assert recent_distinct_positions([5, 5, 5], 3) == [2]
    assert recent_distinct_positions([], 3) == []


def test_one_users_change_to_the_released_counts_is_the_sensitivity():
    """The numbers the noise is added to (the co-occurrence matrix's upper triangle, diagonal
    included), with and without one user who has more than max_items interactions: the L2 change
    is exactly Δ."""
    rng = random.Random(0)
    others = [rng.sample(range(12), rng.randint(2, 8)) for _ in range(10)]
    heavy = [0, 1, 2, 3, 4, 5, 1, 2]  # 6 distinct items, more than max_items = 4
    privacy = CountPrivacy(1.0, 1e-5, max_items=4)

    def released(sequences):
        kept = [[s[p] for p in recent_distinct_positions(s, 4)] for s in sequences]
        m = sparse_history_matrix(kept, 12)
        return (m.T @ m).toarray()[np.triu_indices(12)]

    change = np.linalg.norm(released([*others, heavy]) - released(others))
    assert change == pytest.approx(privacy.sensitivity)


def test_dp_index_differs_from_the_exact_one_and_reports_its_privacy(tmp_path):
    rng = random.Random(3)
    sequences = [rng.sample(range(20), rng.randint(3, 9)) for _ in range(60)]
    data = make_platform(sequences, 20)
    exact = build_collaborative_index(data, sequences)
    noisy = build_collaborative_index(
        data, sequences, privacy=CountPrivacy(1.0, 1e-5, max_items=5), seed=1
    )
    assert exact.privacy is None and noisy.privacy["epsilon"] == 1.0
    assert noisy.privacy["noise_std"] > 0
    assert not torch.equal(exact.popularity, noisy.popularity)
    assert not torch.equal(exact.similarity, noisy.similarity)
    assert noisy.fingerprint != exact.fingerprint  # a cached exact index is never taken for DP
    assert (noisy.counts >= 0).all() and noisy.ease is not None
    assert torch.isfinite(noisy.ease).all()
    noisy.save(tmp_path / "dp.safetensors")
    back = CollaborativeIndex.load(tmp_path / "dp.safetensors", noisy.fingerprint, data.items)
    assert back is not None and back.privacy == noisy.privacy
    assert torch.equal(back.popularity, noisy.popularity)  # drawn once, kept, not redrawn


def test_dp_counts_need_a_catalogue_small_enough_for_the_dense_matrix():
    data = make_platform([[0, 1], [1, 2]], 3)
    with pytest.raises(ValueError, match="catalogues up to 2 items"):
        build_collaborative_index(
            data, data.sequences, privacy=CountPrivacy(1.0, 1e-5), ease_max_items=2
        )


def test_the_scorer_reports_the_counts_privacy_and_refuses_it_without_a_cache(
    tiny_vocab, platform_dir, tmp_path
):
    encoder = save_tiny_encoder(tiny_vocab, tmp_path / "encoder")
    adapter = save_tiny_adapter(tiny_vocab, tmp_path / "adapter", seed=2)

    def load(**kwargs):
        return load_site_scorer(
            adapter,
            platform_dir / "items.csv",
            encoder=str(encoder),
            progress=False,
            device="cpu",
            **kwargs,
        )

    scorer = load(cache_dir=tmp_path / "cache", local_epsilon=2.0, local_max_items=5)
    fusion = scorer.local.describe()
    assert fusion["count_privacy"]["epsilon"] == 2.0
    assert fusion["count_privacy"]["releases"] == 2  # the fit's index and serving's
    assert load(cache_dir=tmp_path / "cache2").local.describe()["count_privacy"] is None
    with pytest.raises(ValueError, match="--local-epsilon needs the cache"):
        load(cache_dir="", local_epsilon=2.0)


def test_every_release_of_the_counts_is_recorded_and_a_second_draw_refused(
    tiny_vocab, platform_dir, tmp_path, count_ledger
):
    """The same interactions under another cache, or after the cache file was damaged, would be
    drawn again while each draw reports its own ε: the count ledger refuses that draw unless
    the operator allows it, and reports the ε of every release."""
    import shutil

    from clients.scorer.count_releases import CountReleaseRefused, CountReleases
    from clients.scorer.model import load_site_scorer

    encoder = save_tiny_encoder(tiny_vocab, tmp_path / "encoder")
    adapter = save_tiny_adapter(tiny_vocab, tmp_path / "adapter", seed=2)

    def load(cache, **kwargs):
        return load_site_scorer(
            adapter, platform_dir / "items.csv", encoder=str(encoder), progress=False,
            device="cpu", cache_dir=cache, local_epsilon=2.0, **kwargs,
        )  # fmt: skip

    first = load(tmp_path / "cache")
    assert first.local.describe()["count_privacy"]["epsilon_of_all_releases"] == 2.0
    assert len(json.loads(count_ledger.read_text())["releases"]) == 1
    again = load(tmp_path / "cache")  # the cache holds them: no new release
    assert again.local.from_cache and len(json.loads(count_ledger.read_text())["releases"]) == 1
    assert again.local.describe()["count_privacy"]["epsilon_of_all_releases"] == 2.0

    # the same interactions at another path, under another cache: refused before any draw
    moved = tmp_path / "elsewhere"
    shutil.copytree(platform_dir, moved, ignore=shutil.ignore_patterns("cache*"))
    with pytest.raises(CountReleaseRefused, match=r"released 1 time\(s\) already \(ε 2 in all"):
        load_site_scorer(
            adapter, moved / "items.csv", encoder=str(encoder), progress=False, device="cpu",
            cache_dir=tmp_path / "other-cache", local_epsilon=2.0,
        )  # fmt: skip
    # a damaged cache file is not silently redrawn either
    for damaged in (tmp_path / "cache" / "local").glob("collaborative-*.safetensors"):
        damaged.write_bytes(b"not safetensors")
    with pytest.raises(CountReleaseRefused, match="--new-count-release"):
        load(tmp_path / "cache")
    # allowed: a second release, and the ε of both is what is reported
    allowed = CountReleases(count_ledger, allow_new=True)
    redrawn = load(tmp_path / "cache", count_releases=allowed)
    assert redrawn.local.describe()["count_privacy"]["epsilon_of_all_releases"] == 4.0
    assert len(json.loads(count_ledger.read_text())["releases"]) == 2

    count_ledger.write_text("{not json")
    with pytest.raises(CountReleaseRefused, match="restore it from a backup"):
        load(tmp_path / "cache3")
