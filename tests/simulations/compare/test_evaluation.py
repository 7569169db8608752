"""How a comparison measures a model: the new-item slice of the site's final ranking."""

import random

from clients.scorer.fusion import fit_site_fusion, fused_split_ranks, training_index
from shared.config import FedxrecConfig
from shared.data import PlatformData
from shared.text import Item
from simulations.compare.data import apart_metrics, counted_before, slice_metrics
from simulations.compare.evaluation import Evaluator


def timed_platform() -> PlatformData:
    """Item k is first seen at time k: the newest 20 % (items 16-19) appeared at or after 16."""
    rng = random.Random(3)
    sequences = [sorted(rng.sample(range(20), rng.randint(4, 9))) for _ in range(40)]
    return PlatformData(
        name="p",
        items=[Item(f"i{k}", f"title {k}") for k in range(20)],
        users=[f"u{k}" for k in range(40)],
        sequences=sequences,
        times=[[float(i) for i in s] for s in sequences],
    )


def test_new_item_slice_is_ranked_with_the_counts_of_the_cut_off_day(tiny_rec, monkeypatch):
    data = timed_platform()
    evaluator = Evaluator(FedxrecConfig(), [data], curve_users=0)
    monkeypatch.setattr(evaluator, "model", lambda arrays: tiny_rec)
    assert evaluator.cutoffs["p"] == 16.0
    new_users = evaluator.slices["p"]["new_items"]
    assert new_users and all(data.sequences[u][-1] >= 16 for u in new_users)
    # the cut-off day's counts know nothing of the new items; the site's full counts do
    assert float(evaluator.counted_before(data).counts[16:].sum()) == 0.0
    assert float(evaluator.local(data).counts[16:].sum()) > 0.0

    tested = evaluator.test({}, [data], hybrid=True)

    vectors = tiny_rec.catalogue_vectors(data.item_texts)
    weights = fit_site_fusion(tiny_rec, data, training_index(data), vectors)
    assert tested.fusion["p"] == weights.to_dict()  # one fit, on validation, for both rankings
    before = training_index(data, sequences=counted_before(data, 16.0))
    expected = fused_split_ranks(tiny_rec, data, before, vectors, weights, users=new_users)
    assert (
        tested.hybrid_test["p"]["new_items"] == apart_metrics({"new_items": expected})["new_items"]
    )
    # every other slice is the full ranking's, and the model alone's new-item slice is its own
    full = fused_split_ranks(tiny_rec, data, training_index(data), vectors, weights)
    assert tested.hybrid_ranks["p"] == full
    assert tested.hybrid_test["p"]["all"] == slice_metrics(full, evaluator.slices["p"])["all"]
    model_ranks = tested.ranks["p"]
    assert (
        tested.test["p"]["new_items"]
        == apart_metrics({"new_items": [model_ranks[u] for u in new_users]})["new_items"]
    )
