"""The site's signals cache: a repeated load reads them back, a change or a damaged file rebuilds."""

import json
import logging

import pytest
import torch

from clients.scorer import local_signals
from clients.scorer.local_signals import COLLABORATIVE_INDEX, FUSION_WEIGHTS
from clients.scorer.model import load_site_scorer
from clients.scorer.ranking import query_for_ids, recommend

BOTH = (COLLABORATIVE_INDEX, FUSION_WEIGHTS)


@pytest.fixture
def load(adapter_dir, encoder_dir, platform_dir):
    def load(**options):
        return load_site_scorer(
            adapter_dir,
            platform_dir / "items.csv",
            encoder=str(encoder_dir),
            cache_dir=platform_dir / "cache",
            progress=False,
            device="cpu",
            **options,
        )

    return load


def ranking(scorer, history=("m1", "m2")):
    query = query_for_ids(scorer.index, list(history), k=5)
    (recs,) = recommend(scorer.model.rec, scorer.index, [query], local=scorer.local)
    return [(r.item_id, round(r.score, 5)) for r in recs]


def refuse_to_read_interactions(monkeypatch):
    def read_interactions(*args, **kwargs):
        raise AssertionError("the interactions file was read again")

    monkeypatch.setattr(local_signals, "read_interactions", read_interactions)


def test_a_repeated_load_reads_the_index_and_weights_back_without_the_interactions(
    load, monkeypatch, platform_dir
):
    first = load()
    assert first.local.from_cache == () and first.index.encoded == 8
    refuse_to_read_interactions(monkeypatch)
    second = load()
    assert second.local.from_cache == BOTH and second.index.encoded == 0
    assert second.local.fusion.to_dict() == first.local.fusion.to_dict()
    assert torch.equal(second.local.index.ease, first.local.index.ease)
    assert ranking(second) == ranking(first)
    summary = second.cache_summary()
    assert summary == (
        "item vectors, collaborative index and fusion weights loaded from cache "
        f"{platform_dir / 'cache'}"
    )
    assert "built" in first.cache_summary() and "loaded" not in first.cache_summary()


def test_changed_interactions_build_a_new_index(load, platform_dir):
    first = load()
    with (platform_dir / "interactions.csv").open("a") as fh:
        fh.write("u4,m5,30,4\n")  # u4 now has 3 interactions: one more user
    second = load()
    assert second.local.from_cache == ()
    assert second.local.index.fingerprint != first.local.index.fingerprint
    assert second.local.index.counts[4] == first.local.index.counts[4] + 1  # m5


def test_the_same_interactions_in_other_bytes_keep_their_index(load, platform_dir):
    """A file rewritten with the same content (here: JSON Lines instead of CSV) finds its index
    by content: DP counts are not drawn again when only the file's form changed."""
    first = load(local_epsilon=4.0)
    rows = (platform_dir / "interactions.csv").read_text().splitlines()
    header = rows[0].split(",")
    jsonl = platform_dir / "interactions.jsonl"
    with jsonl.open("w") as fh:
        for row in rows[1:]:
            fields = dict(zip(header, row.split(","), strict=True))
            fh.write(json.dumps({**fields, "timestamp": int(fields["timestamp"])}) + "\n")
    second = load(local_epsilon=4.0, interactions=jsonl)
    assert second.local.from_cache == BOTH
    assert torch.equal(second.local.index.popularity, first.local.index.popularity)


def test_a_changed_catalogue_gets_its_own_index(load, platform_dir):
    """One more item with no interaction: the cached index has the old catalogue's rows."""
    load()
    with (platform_dir / "items.csv").open("a") as fh:
        fh.write("m9,Zardoz,1974,Sci-Fi,\n")
    second = load()
    assert second.local.from_cache == () and second.local.index.items == 9
    assert len(ranking(second)) == 5


@pytest.mark.parametrize("damaged", ["collaborative-*", "fusion-*", "interactions-*"])
def test_a_damaged_cache_file_is_rebuilt_with_a_warning(load, platform_dir, caplog, damaged):
    first = load()
    for path in (platform_dir / "cache" / "local").glob(damaged):
        path.write_bytes(b"\x00 not what was written")
    with caplog.at_level(logging.WARNING):
        second = load()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("ignoring the") and damaged[:-1] in warning, warning
    assert ranking(second) == ranking(first)
    third = load()  # the rebuilt files are good again
    assert third.local.from_cache == BOTH
