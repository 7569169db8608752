import json

import pytest
import torch

from clients.scorer.item_index import UnknownItemError
from clients.scorer.model import load_site_scorer
from clients.scorer.ranking import Query, dot_scores, query_for_ids, recommend, top_k
from shared.adapter import get_adapter_arrays, save_adapter
from shared.config import ModelConfig
from shared.model import build_recommender
from simulations.cli import main

TOL = 1e-5


@pytest.fixture
def scorer(adapter_dir, encoder_dir, platform_dir):
    return load_site_scorer(
        adapter_dir,
        platform_dir / "items.csv",
        encoder=str(encoder_dir),
        cache_dir="",
        device="cpu",
    )


def reference_user(head, recent_first):
    """The transformer over the window's item vectors, oldest first, with no padding."""
    vectors = recent_first[: head.window].flip(0)
    mask = torch.ones(1, len(vectors), dtype=torch.bool)
    return head(vectors.unsqueeze(0), mask)[0]


def brute_force(scorer, history, k, excluded=()):
    """Reference: the user vector by hand, every item scored one by one, sorted, excluded rows
    dropped. ``history``: catalogue rows (oldest first), or a free text (most recent first)."""
    rec, index = scorer.model.rec, scorer.index
    with torch.no_grad():
        if isinstance(history, str):
            recent = rec.encode_items([p.strip() for p in history.split(";")])
        else:
            recent = index.vectors[list(history)[::-1]]
        user = reference_user(rec.head, recent)
    scores = {index.items[r].item_id: float(index.vectors[r] @ user) for r in range(len(index))}
    banned = {index.items[r].item_id for r in excluded}
    ranked = sorted((i for i in scores if i not in banned), key=lambda i: -scores[i])
    return scores, ranked[:k]


def assert_same_ranking(got, scores, expected_ids):
    """Same scores in the same order, each item's score its own (ties may swap ids)."""
    assert len(got) == len(expected_ids)
    for rec, expected in zip(got, expected_ids, strict=True):
        assert rec.score == pytest.approx(scores[expected], abs=TOL)
        assert rec.score == pytest.approx(scores[rec.item_id], abs=TOL)


def test_ranking_equals_brute_force_for_every_user(scorer, tiny_platform):
    queries = [Query(history_rows=tuple(seq), k=5) for seq in tiny_platform.sequences]
    results = recommend(scorer.model.rec, scorer.index, queries)
    for seq, got in zip(tiny_platform.sequences, results, strict=True):
        scores, expected = brute_force(scorer, seq, 5, excluded=seq)
        assert_same_ranking(got, scores, expected)


def test_history_is_excluded_unless_asked_to_keep_it(scorer):
    history = ["m1", "m2", "m6"]
    kept = recommend(
        scorer.model.rec,
        scorer.index,
        [query_for_ids(scorer.index, history, k=8, exclude_seen=False)],
    )[0]
    dropped = recommend(
        scorer.model.rec, scorer.index, [query_for_ids(scorer.index, history, k=8)]
    )[0]
    assert len(kept) == 8 and {r.item_id for r in kept} >= set(history)
    assert len(dropped) == 5 and not {r.item_id for r in dropped} & set(history)
    assert [r.item_id for r in dropped] == [r.item_id for r in kept if r.item_id not in history]


def test_explanations_name_the_most_similar_history_items(scorer):
    index = scorer.index
    history = ["m4", "m1", "m2", "m6"]
    (recs,) = recommend(scorer.model.rec, index, [query_for_ids(index, history, k=4)])
    for rec in recs:
        assert len(rec.because) == 3
        unit = torch.nn.functional.normalize(index.vectors, dim=1)
        sims = {h: float(unit[index.row_of[h]] @ unit[index.row_of[rec.item_id]]) for h in history}
        best = sorted(history, key=lambda h: -sims[h])[:3]
        assert [e.similarity for e in rec.because] == pytest.approx([sims[h] for h in best])
        assert {e.item_id for e in rec.because} <= set(history)
        assert all(e.title == index.items[index.row_of[e.item_id]].title for e in rec.because)


def test_free_text_history_is_the_user_text(scorer):
    text = "Toy Story (1995); Fargo (1996)"
    (recs,) = recommend(scorer.model.rec, scorer.index, [Query(text=text, k=3)])
    scores, expected = brute_force(scorer, text, 3)
    assert_same_ranking(recs, scores, expected)
    assert {e.title for e in recs[0].because} == {"Toy Story (1995)", "Fargo (1996)"}
    assert all(e.item_id is None for e in recs[0].because)


def test_chunked_search_equals_full_sort_with_exclusions():
    gen = torch.Generator().manual_seed(0)
    items = torch.nn.functional.normalize(torch.randn(1000, 16, generator=gen), dim=1)
    users = torch.nn.functional.normalize(torch.randn(5, 16, generator=gen), dim=1)
    exclude = [[], [0, 999, 500], list(range(0, 1000, 2)), [3], []]
    scores, rows = top_k(users, items, 10, exclude, chunk_rows=37)
    full = users @ items.T
    for u, banned in enumerate(exclude):
        full[u, banned] = float("-inf")
    ref_scores, ref_rows = full.topk(10, dim=1)
    torch.testing.assert_close(scores, ref_scores)
    assert torch.equal(rows, ref_rows)


def test_one_user_on_the_cpu_is_searched_as_several_are():
    # one user takes numpy's matrix-vector product; the result must be torch's, row for row
    gen = torch.Generator().manual_seed(1)
    items = torch.nn.functional.normalize(torch.randn(3000, 32, generator=gen), dim=1)
    users = torch.nn.functional.normalize(torch.randn(4, 32, generator=gen), dim=1)
    for u in range(len(users)):
        one = dot_scores(users[u : u + 1], items)
        assert one.shape == (1, 3000) and one.dtype == torch.float32
        torch.testing.assert_close(one, users[u : u + 1] @ items.T)
        banned = [[7, int(one.argmax())]]
        scores, rows = top_k(users[u : u + 1], items, 10, banned, chunk_rows=1000)
        batch_scores, batch_rows = top_k(users, items, 10, banned * 4, chunk_rows=1000)
        assert torch.equal(rows[0], batch_rows[u]) and int(one.argmax()) not in rows[0]
        torch.testing.assert_close(scores[0], batch_scores[u])


def test_unknown_ids_are_left_out_and_named_and_nothing_known_is_a_new_user(scorer):
    query = query_for_ids(scorer.index, ["m1", "nope", "m2", "nope"])
    assert query.history_rows == tuple(scorer.index.rows_for(["m1", "m2"]))
    assert query.unknown_ids == ("nope",) and not query.new_user
    assert query_for_ids(scorer.index, [" ", ""]).new_user
    assert query_for_ids(scorer.index, ["nope"]).new_user and Query(text="  ").new_user
    with pytest.raises(UnknownItemError, match="'nope'.*not in this site's catalogue of 8 items"):
        scorer.index.rows_for(["m1", "nope"])  # where an unknown id is an error, it says so
    with pytest.raises(ValueError, match="k=0 is out of range"):
        Query(text="Fargo", k=0)


def _cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_rank_command_json_and_table(capsys, scorer, adapter_dir, encoder_dir, platform_dir):
    common = [
        "--adapter", str(adapter_dir), "--items", str(platform_dir / "items.csv"),
        "--encoder", str(encoder_dir), "--cache-dir", str(platform_dir / "cache"),
        "--device", "cpu",
    ]  # fmt: skip
    code, out, _ = _cli(
        capsys, "rank", *common, "--history", "m1,m2", "--k", "3", "--format", "json"
    )
    assert code == 0
    answer = json.loads(out)
    (user,) = answer["users"]
    query = query_for_ids(scorer.index, ["m1", "m2"], k=3)
    # interactions.csv lies beside items.csv: the site's ranking is hybrid by default
    assert answer["ranking"] == "hybrid" and scorer.local is not None
    assert sum(answer["fusion"]["weights"].values()) == pytest.approx(1.0)
    expected = recommend(scorer.model.rec, scorer.index, [query], local=scorer.local)[0]
    assert [i["item_id"] for i in user["items"]] == [r.item_id for r in expected]
    code, out, _ = _cli(
        capsys, "rank", *common, "--history", "m1,m2", "--k", "3", "--format", "json",
        "--text-only",
    )  # fmt: skip
    text_only = json.loads(out)
    assert text_only["ranking"] == "text-only" and text_only["fusion"] is None
    expected = recommend(scorer.model.rec, scorer.index, [query])[0]
    assert [i["item_id"] for i in text_only["users"][0]["items"]] == [r.item_id for r in expected]
    assert user["items"][0]["because"][0]["item_id"] in {"m1", "m2"}
    assert answer["adapter_hash"] == scorer.model.adapter_hash

    users_file = platform_dir / "interactions.csv"
    code, out, _ = _cli(capsys, "rank", *common, "--users", str(users_file), "--format", "json")
    assert code == 0 and [u["user_id"] for u in json.loads(out)["users"]] == [
        "u1",
        "u2",
        "u3",
        "u4",
    ]

    code, out, _ = _cli(capsys, "rank", *common, "--text", "Alien (1979)", "--k", "2")
    assert code == 0 and "because" in out and out.count("\n") >= 5

    code, _, err = _cli(capsys, "rank", *common, "--history", "m1,zz")
    assert code == 0 and "not in this catalogue, left out: 'zz'" in err
    code, _, err = _cli(capsys, "rank", *common, "--history", "zz")
    assert code == 0 and "no known item: a new user, ranked by the site's prior" in err
    code, _, err = _cli(capsys, "rank", *common, "--history", "m1", "--k", "0")
    assert code == 2 and "--k 0 is out of range" in err

    code, out, _ = _cli(capsys, "rank", *common, "--history", "m1,m2", "--local-epsilon", "4")
    assert code == 0 and "counts user-level DP ε=4" in out
    for flags, message in (
        (["--local-epsilon", "-1"], "--local-epsilon -1.0: give an ε > 0"),
        (["--local-epsilon", "inf"], "--local-epsilon inf"),
        (["--local-max-items", "0"], "--local-max-items 0"),
        (["--local-epsilon", "4", "--text-only"], "--text-only uses none"),
        (["--local-epsilon", "4", "--no-cache"], "--local-epsilon needs the cache"),
    ):
        code, _, err = _cli(capsys, "rank", *common, "--history", "m1", *flags)
        assert code == 2 and message in err and "Traceback" not in err, err


@pytest.mark.integration
def test_real_encoder_ranks_exactly(tmp_path, platform_dir):
    """all-MiniLM-L6-v2 with a fresh adapter: exact ranking over the adaptor's item vectors."""
    cfg = ModelConfig()
    save_adapter(get_adapter_arrays(build_recommender(cfg)), cfg, tmp_path / "adapter")
    scorer = load_site_scorer(
        tmp_path / "adapter", platform_dir / "items.csv", cache_dir="", device="cpu"
    )
    rec = scorer.model.rec
    assert rec.text_dim == 384 and rec.dim == cfg.dim == scorer.index.vectors.shape[1]
    (recs,) = recommend(rec, scorer.index, [Query(text="Toy Story (1995)", k=8)])
    scores, expected = brute_force(scorer, "Toy Story (1995)", 8)
    assert_same_ranking(recs, scores, expected)
