"""Two-stage ranking: candidates from a FAISS index, the fused score on them only, the cache."""

import dataclasses
import logging
import random

import pytest

from clients.scorer.candidates import build_candidate_index, candidate_rows, chosen_kind
from clients.scorer.fusion import OFFSET, SCALE, FusionWeights
from clients.scorer.live_catalogue import with_item, without_item
from clients.scorer.model import load_site_scorer
from clients.scorer.ranking import Query, recommend
from shared.data import Interaction, write_platform
from shared.text import Item

GENRES = ("Drama", "Comedy", "Horror", "Sci-Fi", "Romance", "Western")


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory):
    """60 films and 40 users with 5-15 interactions each, skewed towards the first films."""
    rng = random.Random(3)
    items = [
        Item(
            f"m{i}",
            f"Film {i} {rng.choice(['night', 'day', 'sea', 'city'])}",
            str(1950 + i),
            (GENRES[i % 6], GENRES[(i * 7) % 6]),
        )
        for i in range(60)
    ]
    interactions = []
    for u in range(40):
        picked = {min(int(rng.paretovariate(1.2)) - 1, 59) for _ in range(rng.randint(5, 15))}
        picked |= set(rng.sample(range(60), 3))
        for t, i in enumerate(sorted(picked, key=lambda _: rng.random())):
            interactions.append(Interaction(f"u{u}", f"m{i}", float(t + u)))
    return write_platform(tmp_path_factory.mktemp("site"), items, interactions)


def _scorer(adapter_dir, encoder_dir, site_dir, **kw):
    return load_site_scorer(
        adapter_dir, site_dir / "items.jsonl", encoder=str(encoder_dir), device="cpu", **kw
    )


QUERIES = [
    Query(history_rows=(0, 1, 2, 17)),
    Query(history_rows=(5, 40, 59), k=7),
    Query(history_rows=(3, 9, 21), k=20, exclude_seen=False),
    Query(),  # a new user: the site's prior
]


def _listed(ranked):
    return [[(r.item_id, round(r.score, 4)) for r in recs] for recs in ranked]


@pytest.mark.parametrize(
    ("kind", "text_only", "new_items"),
    [("flat", False, False), ("hnsw", False, False), ("flat", True, False), ("hnsw", True, False)]
    + [("flat", False, True), ("hnsw", False, True)],
)
def test_two_stage_is_the_full_ranking_when_every_item_is_a_candidate(
    adapter_dir, encoder_dir, site_dir, kind, text_only, new_items
):
    scorer = _scorer(adapter_dir, encoder_dir, site_dir, cache_dir="", text_only=text_only)
    assert scorer.candidates is None  # 60 items: ranked in full by default
    if scorer.local is not None:  # every signal has a say, shrunk towards the model
        mix = {"model": 0.4, "itemknn": 0.3, "popularity": 0.1, "ease": 0.2}
        fusion = FusionWeights(mix, 0.0, 0.0, 40, kappa=3.0, new_user_model=0.5)
        local = dataclasses.replace(scorer.local, fusion=fusion)
        if new_items:  # rows 40-59 unknown to the counts: query 2's latest item, with the fallback
            counts = local.index.counts.clone()
            counts[40:] = 0
            index = dataclasses.replace(local.index, counts=counts)
            weights = {**mix, SCALE: 3.0, OFFSET: 2.0}
            local = dataclasses.replace(
                local, index=index, fusion=dataclasses.replace(fusion, weights=weights)
            )
            off = dataclasses.replace(local, fusion=fusion)
            rec, index_ = scorer.model.rec, scorer.index
            moved = recommend(rec, index_, QUERIES, local=local)
            assert _listed(moved)[1] != _listed(recommend(rec, index_, QUERIES, local=off))[1]
        scorer = dataclasses.replace(scorer, local=local)
    local = scorer.local.index if scorer.local else None
    # 400 nearest items per request > 60: every row is a candidate
    candidates = build_candidate_index(scorer.index, local, requested=kind)
    rec, index = scorer.model.rec, scorer.index
    full = recommend(rec, index, QUERIES, local=scorer.local)
    two_stage = recommend(rec, index, QUERIES, local=scorer.local, candidates=candidates)
    # the same items in the same order; the scores up to the two matrix products' float error
    assert [[i for i, _ in r] for r in _listed(two_stage)] == [
        [i for i, _ in r] for r in _listed(full)
    ]
    for got, want in zip(two_stage, full, strict=True):
        assert [r.score for r in got] == pytest.approx([r.score for r in want], abs=1e-4)
    assert [len(r) for r in full] == [10, 7, 20, 10]


def test_candidates_are_the_nearest_the_neighbours_the_popular_and_the_new_rows(
    adapter_dir, encoder_dir, site_dir
):
    scorer = _scorer(adapter_dir, encoder_dir, site_dir, cache_dir="")
    local = scorer.local.index
    candidates = build_candidate_index(scorer.index, local, requested="flat")
    candidates = dataclasses.replace(candidates, rows=50, popular=(7, 8))
    nearest = candidates.nearest(scorer.index.vectors[:1], 5)[0]
    got = set(candidate_rows(candidates, nearest, (0,), 60, local, {0, 8}).tolist())
    neighbours = {int(r) for r in local.neighbours[0] if r >= 0}
    assert got == (set(nearest.tolist()) | {7} | set(range(50, 60)) | neighbours) - {0, 8}


def test_an_added_item_is_ranked_and_a_removed_one_never_is(adapter_dir, encoder_dir, site_dir):
    scorer = _scorer(adapter_dir, encoder_dir, site_dir, cache_dir="", candidates="flat")
    assert scorer.candidates is not None and scorer.candidates.rows == 60
    twin = scorer.index.items[4]
    added, _ = with_item(scorer, dataclasses.replace(twin, item_id="new1"))  # m4's text
    query = Query(history_rows=(4,), k=60, exclude_seen=True)
    ids = [
        r.item_id
        for r in recommend(
            added.model.rec, added.index, [query], local=added.local, candidates=added.candidates
        )[0]
    ]
    assert "new1" in ids  # past the index's rows, a candidate of every request
    removed = without_item(added, "m9")
    ranked = recommend(
        removed.model.rec,
        removed.index,
        [query, Query()],
        local=removed.local,
        candidates=removed.candidates,
    )
    assert all("m9" not in [r.item_id for r in recs] for recs in ranked)


def test_the_index_is_cached_by_model_and_catalogue_and_rebuilt_when_either_changes(
    adapter_dir, encoder_dir, site_dir, tmp_path, caplog
):
    cache = tmp_path / "cache"
    first = _scorer(adapter_dir, encoder_dir, site_dir, cache_dir=cache, candidates="hnsw")
    assert first.candidates is not None and not first.candidates.from_cache
    (path,) = cache.glob("candidates-hnsw-*.faiss")
    again = build_candidate_index(first.index, None, requested="hnsw", cache_dir=cache)
    assert again.from_cache and again.index.ntotal == 60
    other_model = dataclasses.replace(first.index, model_fingerprint="another-adapter")
    assert not build_candidate_index(
        other_model, None, requested="hnsw", cache_dir=cache
    ).from_cache
    edited, _ = with_item(first, Item("m60", "Heat", "1995"))
    rebuilt = build_candidate_index(edited.index, None, requested="hnsw", cache_dir=cache)
    assert not rebuilt.from_cache and rebuilt.index.ntotal == 61
    assert len(list(cache.glob("candidates-hnsw-*.faiss"))) == 3
    path.write_bytes(b"not a faiss index")
    with caplog.at_level(logging.WARNING):
        damaged = build_candidate_index(first.index, None, requested="hnsw", cache_dir=cache)
    assert not damaged.from_cache and "ignoring the cached candidate index" in caplog.text
    queries = first.index.vectors[:3]
    near = damaged.nearest(queries, 1)
    best = (queries @ first.index.vectors.T).argmax(1).tolist()  # the largest inner product
    assert [int(n[0]) for n in near] == best


def test_the_kind_follows_the_catalogue_size_unless_chosen():
    assert chosen_kind(50_000) == "full"
    assert chosen_kind(50_001) == "hnsw"
    assert chosen_kind(10**7, "flat") == "flat"
    assert chosen_kind(10, "hnsw") == "hnsw"
    with pytest.raises(ValueError, match="choose one of auto, full, flat, hnsw"):
        chosen_kind(10, "ivf")


def test_model_reports_the_candidates(adapter_dir, encoder_dir, site_dir):
    scorer = _scorer(adapter_dir, encoder_dir, site_dir, cache_dir="", candidates="flat")
    described = scorer.describe()["candidates"]
    assert described["kind"] == "flat" and described["indexed_items"] == 60
    assert described["popular_candidates"] == 60  # fewer items than POPULAR_CANDIDATES
    assert _scorer(adapter_dir, encoder_dir, site_dir, cache_dir="").describe()["candidates"] == (
        "full ranking"
    )
