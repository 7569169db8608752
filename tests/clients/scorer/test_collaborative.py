"""The site's own collaborative signals and their fusion with the model (hand-made fixtures)."""

import math
import random

import pytest
import torch
from safetensors.torch import save_file

from clients.scorer import collaborative
from clients.scorer.collaborative import FORMAT, CollaborativeIndex, build_collaborative_index
from clients.scorer.fusion import fit_fusion, fuse, simplex_grid, standardise, standardised_signals
from shared.text import Item
from tests.clients.scorer.support import fitted_fusion, make_platform


def brute_force_knn(sequences, items, history):
    """ItemKNN by definition: Σ_h |users with h and j| / √(|users with h|·|users with j|)."""
    users_of = [{u for u, s in enumerate(sequences) if i in s} for i in range(items)]
    scores = []
    for j in range(items):
        total = 0.0
        for h in history:
            if h != j and users_of[h] and users_of[j]:
                total += len(users_of[h] & users_of[j]) / math.sqrt(
                    len(users_of[h]) * len(users_of[j])
                )
        scores.append(total)
    return scores


@pytest.fixture
def random_platform():
    rng = random.Random(4)
    sequences = [rng.sample(range(30), rng.randint(3, 12)) for _ in range(40)]
    return make_platform(sequences, items=32)  # items 30 and 31: nobody has them


def test_itemknn_equals_the_brute_force_definition(random_platform):
    data = random_platform
    index = build_collaborative_index(data, data.sequences, neighbours=32)
    histories = [data.sequences[0][:4], [5, 9], [30], []]
    got = index.scores(histories)["itemknn"]
    for row, history in enumerate(histories):
        expected = brute_force_knn(data.sequences, 32, history)
        torch.testing.assert_close(got[row], torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_itemknn_adds_every_history_entrys_neighbours_also_across_chunks(
    random_platform, monkeypatch
):
    data = random_platform
    index = build_collaborative_index(data, data.sequences, neighbours=5)  # item 31: none (-1)
    histories = [data.sequences[0][:6], [], [3, 3, 9], [31], data.sequences[1]]
    expected = torch.zeros(len(histories), index.items)
    for u, history in enumerate(histories):
        for h in history:  # a repeated item counts twice
            for j, s in zip(
                index.neighbours[h].tolist(), index.similarity[h].tolist(), strict=True
            ):
                if j >= 0:
                    expected[u, j] += s
    whole = index.scores(histories)["itemknn"]
    torch.testing.assert_close(whole, expected, atol=1e-6, rtol=1e-6)
    monkeypatch.setattr(collaborative, "KNN_CHUNK", 3)  # chunks end inside histories
    assert torch.equal(index.scores(histories)["itemknn"], whole)


def test_top_k_keeps_each_items_most_similar_neighbours(random_platform):
    data = random_platform
    full = build_collaborative_index(data, data.sequences, neighbours=32)
    top = build_collaborative_index(data, data.sequences, neighbours=5)
    for i in range(30):
        kept = top.neighbours[i][top.neighbours[i] >= 0]
        assert len(kept) <= 5
        best = full.similarity[i][:5]
        torch.testing.assert_close(top.similarity[i][: len(kept)], best[: len(kept)])


def test_recency_weighted_popularity():
    # item 0: two interactions long ago; item 1: one at the end of the span
    data = make_platform([[0, 1], [0, 2]], items=3, times=[[0.0, 100.0], [0.0, 50.0]])
    index = build_collaborative_index(data, data.sequences)
    pop = index.popularity.tolist()
    assert pop[1] == pytest.approx(1.0)  # at the end: weight 1
    assert pop[0] == pytest.approx(2 * 0.5**10)  # two, each 10 half-lives old
    assert pop[2] == pytest.approx(0.5**5)
    assert index.counts.tolist() == [2.0, 1.0, 1.0]


def test_index_is_saved_and_rebuilt_when_interactions_change(tmp_path, random_platform):
    data = random_platform
    path = tmp_path / "local.safetensors"
    index = build_collaborative_index(data, data.sequences)
    index.save(path)
    again = CollaborativeIndex.load(path, index.fingerprint, data.items)
    assert again is not None and torch.equal(again.similarity, index.similarity)
    assert torch.equal(again.ease, index.ease)
    changed = [*data.sequences[:-1], data.sequences[-1] + [31]]
    other = build_collaborative_index(data, changed)
    assert other.fingerprint != index.fingerprint
    assert CollaborativeIndex.load(path, other.fingerprint, data.items) is None  # stale: rebuild
    path.write_bytes(b"damaged")
    assert CollaborativeIndex.load(path, index.fingerprint, data.items) is None


def test_an_index_of_another_catalogue_is_never_read_back(tmp_path, random_platform):
    """The interactions alone do not say which rows the tensors index: a catalogue with one more
    item (or the same items in another order) needs its own index."""
    data = random_platform
    path = tmp_path / "local.safetensors"
    index = build_collaborative_index(data, data.sequences)
    index.save(path)
    longer = [*data.items, Item("new", "a new item")]
    assert CollaborativeIndex.load(path, index.fingerprint, longer) is None
    assert CollaborativeIndex.load(path, index.fingerprint, data.items[::-1]) is None
    assert CollaborativeIndex.load(path, index.fingerprint, data.items) is not None


def _saved_tensors(index: CollaborativeIndex) -> dict[str, torch.Tensor]:
    """What ``index.save`` writes, as copies a test may damage before writing them itself."""
    names = ["neighbours", "similarity", "popularity", "counts", "ease", "ease_rows"]
    return {n: getattr(index, n).clone() for n in names if getattr(index, n) is not None}


@pytest.mark.parametrize("damage", ["shape", "neighbour", "missing"])
def test_a_cached_index_whose_tensors_do_not_fit_is_rebuilt(tmp_path, random_platform, damage):
    data = random_platform
    index = build_collaborative_index(data, data.sequences)
    tensors = _saved_tensors(index)
    if damage == "shape":
        tensors["counts"] = tensors["counts"][:-1].clone()
    elif damage == "neighbour":
        tensors["neighbours"] = tensors["neighbours"].clone()
        tensors["neighbours"][0, 0] = len(data.items)
    else:
        del tensors["similarity"]
    path = tmp_path / "local.safetensors"
    tensors = {name: tensor.contiguous() for name, tensor in tensors.items()}
    save_file(tensors, str(path), metadata={"format": FORMAT, "fingerprint": index.fingerprint})
    assert CollaborativeIndex.load(path, index.fingerprint, data.items) is None


def test_standardise_ignores_the_history():
    scores = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    z = standardise(scores, torch.tensor([[False, False, False, True]]))
    torch.testing.assert_close(z[0, :3], torch.tensor([-1.2247, 0.0, 1.2247]), atol=1e-4, rtol=0)


def test_simplex_grid():
    grid = simplex_grid(["a", "b", "c"], step=0.5)
    assert len(grid) == 6 and all(sum(w.values()) == pytest.approx(1.0) for w in grid)


def test_a_new_item_reaches_the_top_through_the_model(random_platform):
    """Item 31 has no interaction on the site: its collaborative signals are the model's."""
    data = random_platform
    index = build_collaborative_index(data, data.sequences)
    history = [data.sequences[0][:5]]
    model = torch.zeros(1, 32)
    model[0, 31] = 10.0  # the model is sure of the new item
    signals = standardised_signals(model, index, history)
    for name in ("itemknn", "popularity", "ease"):
        assert signals[name][0, 31] == signals["model"][0, 31]
    weights = {"model": 0.2, "itemknn": 0.4, "popularity": 0.2, "ease": 0.2}
    fused = fuse(signals, weights)
    fused[0, history[0]] = float("-inf")
    assert int(fused[0].argmax()) == 31


def test_fusion_weights_never_see_the_test_split(random_platform, tiny_vocab, tiny_model_config):
    """The fit reads validation histories and targets only: corrupting every test target (the
    last item) leaves the weights unchanged."""
    data = random_platform
    corrupted = make_platform(
        [s[:-1] + [(s[-1] + 7) % 30] for s in data.sequences], items=32
    )  # same training and validation parts, other test targets
    assert all(
        corrupted.split(u, "validation") == data.split(u, "validation")
        for u in range(data.num_users)
    )

    fit = fitted_fusion(data, tiny_vocab, tiny_model_config)
    assert fit == fitted_fusion(corrupted, tiny_vocab, tiny_model_config)


def test_fit_prefers_the_signal_that_predicts():
    """Users follow co-occurrence; a model that scores at random gets no weight."""
    pairs = [(2 * k, 2 * k + 1) for k in range(10)]
    sequences = [list(pairs[u % 10]) + [20 + u % 3] for u in range(60)]
    data = make_platform(sequences, items=23)
    index = build_collaborative_index(data, [s[:-1] for s in sequences])
    histories = [[s[0]] for s in sequences]
    targets = [s[1] for s in sequences]
    noise = torch.randn(len(histories), 23, generator=torch.Generator().manual_seed(0))
    fit = fit_fusion(noise, index, histories, targets)
    assert fit.weights["model"] == 0.0 and fit.validation_ndcg > fit.model_only_ndcg
    assert fit.validation_ndcg == pytest.approx(1.0)
    assert max(fit.weights.values()) == 1.0  # no mix beats the signal that is already perfect


def _two_kinds_of_users(users: int):
    """Even users follow co-occurrence, odd users the model: only a mix serves both."""
    pairs = [(2 * k, 2 * k + 1) for k in range(10)]
    sequences = [list(pairs[u % 10]) + [20 + u % 3] for u in range(users)]
    data = make_platform(sequences, items=40)
    index = build_collaborative_index(data, [s[:-1] for s in sequences])
    histories = [[s[0]] for s in sequences]
    targets = [s[1] if u % 2 == 0 else 30 + u % 10 for u, s in enumerate(sequences)]
    scores = torch.randn(users, 40, generator=torch.Generator().manual_seed(1))
    for u in range(1, users, 2):
        scores[u, targets[u]] += 5.0
    return scores, index, histories, targets


def test_a_mix_is_kept_only_when_it_clearly_beats_the_best_single_signal():
    scores, index, histories, targets = _two_kinds_of_users(60)
    mixed = fit_fusion(scores, index, histories, targets)
    assert max(mixed.weights.values()) < 1 and mixed.mix_gain_z >= 1.645
    single = fit_fusion(scores, index, histories, targets, min_z=math.inf)
    assert max(single.weights.values()) == 1.0
    assert single.validation_ndcg < mixed.validation_ndcg  # the rule gave something up here
    # two users (one of each kind) cannot show a gain that clear (z = 1 at most): the best
    # single signal ranks alone
    few = fit_fusion(*_two_kinds_of_users(2))
    assert max(few.weights.values()) == 1.0 and few.mix_gain_z < 1.645


def test_shrinkage_gives_the_model_an_item_the_counts_barely_know(random_platform):
    """With κ, a count signal's z-score for an item seen n times is blended with the model's as
    n / (n + κ): the rarest known item moves towards the model, the most counted barely moves."""
    data = random_platform
    index = build_collaborative_index(data, data.sequences)
    counts = index.counts
    rare = int(torch.where(counts > 0, counts, torch.inf).argmin())
    common = int(counts.argmax())
    history = [data.sequences[0][:3]]
    model = torch.randn(1, 32, generator=torch.Generator().manual_seed(2))
    exact = standardised_signals(model, index, history)
    shrunk = standardised_signals(model, index, history, kappa=1e9)
    for item in (rare, common):
        if item in history[0]:
            continue
        torch.testing.assert_close(shrunk["popularity"][0, item], exact["model"][0, item])
    mild = standardised_signals(model, index, history, kappa=1.0)
    share = float(counts[common] / (counts[common] + 1.0))
    expected = share * exact["popularity"][0, common] + (1 - share) * exact["model"][0, common]
    torch.testing.assert_close(mild["popularity"][0, common], expected)


@pytest.mark.parametrize("seed", range(4))
def test_the_ascent_finds_at_least_what_the_grid_finds(seed):
    """On signals of mixed quality the pairwise ascent reaches the 0.1 grid's best NDCG@10."""
    from clients.scorer.fusion import simplex_ascent

    gen = torch.Generator().manual_seed(seed)
    users, items = 80, 30
    targets = torch.randint(0, items, (users,), generator=gen)
    signals = {}
    for name, strength in (("model", 1.5), ("b", 1.0), ("c", 0.5), ("d", 0.0)):
        scores = torch.randn(users, items, generator=gen)
        scores[torch.arange(users), targets] += strength * torch.rand(users, generator=gen) * 3
        signals[name] = scores

    def ndcg(weights):
        fused = fuse(signals, weights)
        ranks = (fused >= fused[torch.arange(users), targets].unsqueeze(1)).sum(1).tolist()
        from shared.metrics import ranking_metrics

        return ranking_metrics(ranks)["ndcg@10"]

    names = list(signals)
    grid_best = max(ndcg(w) for w in simplex_grid(names))
    singles = [{n: float(n == m) for n in names} for m in names]
    ascent_best, weights = simplex_ascent(ndcg, singles)
    assert ascent_best >= grid_best - 1e-12
    assert sum(weights.values()) == pytest.approx(1.0) and min(weights.values()) >= 0


def test_the_fit_reports_its_shrinkage(random_platform):
    from clients.scorer.fusion import KAPPAS

    scores, index, histories, targets = _two_kinds_of_users(60)
    fit = fit_fusion(scores, index, histories, targets)
    assert fit.kappa in KAPPAS and fit.to_dict()["kappa"] == fit.kappa
    assert fit_fusion(scores, index, histories, targets, kappas=(0.0,)).kappa == 0.0


def test_the_new_user_blend_follows_whichever_prior_predicts(random_platform):
    """Validation targets that are the site's most popular items ask for popularity; targets the
    model's prior puts first ask for the prior."""
    from clients.scorer.fusion import fit_new_user_blend, new_user_scores

    data = random_platform
    index = build_collaborative_index(data, data.sequences)
    popular = [int(i) for i in index.popularity.argsort(descending=True)[:3]]
    noise = torch.randn(index.items, generator=torch.Generator().manual_seed(3))
    assert fit_new_user_blend(noise, index, popular * 10) <= 0.3  # mostly popularity
    liked = [int(i) for i in index.popularity.argsort()[:3]]  # the least popular items
    prior = noise.clone()
    prior[liked] += 10.0
    weight = fit_new_user_blend(prior, index, liked * 10)
    assert weight > 0.5
    top = new_user_scores(prior, index, weight).argsort(descending=True)[:3]
    assert set(top.tolist()) == set(liked)


# -- EASE over the site's most popular items (catalogues above ease_max_items) ---------------------
def _ease_signal(index, histories):
    return index.scores(histories)["ease"]


def test_ease_over_a_subset_that_is_the_whole_catalogue_is_full_ease(random_platform):
    data = random_platform
    full = build_collaborative_index(data, data.sequences)
    subset = build_collaborative_index(data, data.sequences, ease_max_items=0, ease_items=1000)
    assert full.ease_rows is None and subset.ease_rows is not None
    assert sorted(subset.ease_rows.tolist()) == list(range(32))
    assert subset.ease_rows.tolist() != list(range(32))  # most popular first: rows reordered
    histories = [data.sequences[0][:4], [5, 9], [30], []]
    torch.testing.assert_close(
        _ease_signal(subset, histories), _ease_signal(full, histories), atol=1e-5, rtol=1e-5
    )


def test_above_ease_max_items_ease_covers_the_most_popular_items(random_platform):
    import numpy as np
    import scipy.sparse as sp

    from clients.scorer.ease import ease_weights

    data = random_platform
    index = build_collaborative_index(data, data.sequences, ease_max_items=20, ease_items=8)
    counts = index.counts.tolist()
    rows = index.ease_rows.tolist()
    # the 8 most interacted items, most first, ties by row
    assert rows == sorted(range(32), key=lambda i: (-counts[i], i))[:8]
    assert index.ease.shape == (8, 8)
    users = np.repeat(np.arange(len(data.sequences)), [len(s) for s in data.sequences])
    matrix = sp.csr_matrix(
        (np.ones(len(users)), (users, [i for s in data.sequences for i in s])), shape=(40, 32)
    ).toarray()
    restricted = matrix[:, rows].T @ matrix[:, rows]
    torch.testing.assert_close(index.ease, ease_weights(restricted))
    histories = [data.sequences[0][:6], [rows[0], rows[3]], [30]]
    got = _ease_signal(index, histories)
    outside = [r for r in range(32) if r not in rows]
    assert torch.count_nonzero(got[:, outside]) == 0
    h = torch.zeros(len(histories), 8)
    for u, history in enumerate(histories):
        h[u, [rows.index(r) for r in history if r in rows]] = 1.0
    torch.testing.assert_close(got[:, rows], h @ index.ease)
    assert torch.count_nonzero(got[1]) > 0


def test_ease_at_candidate_columns_is_the_full_scores_there(random_platform):
    data = random_platform
    index = build_collaborative_index(data, data.sequences, ease_max_items=20, ease_items=8)
    histories = [data.sequences[0][:6], [int(index.ease_rows[0]), 31, 2], [30], []]
    full = index.scores(histories)
    columns = torch.tensor([*index.ease_rows.tolist()[::-1], 0, 1, 2, 31, 32, 40, 5, 5])
    got = index.scores(histories, columns)
    expected = torch.nn.functional.pad(full["ease"], (0, 41 - 32))[:, columns]
    torch.testing.assert_close(got["ease"], expected, atol=1e-5, rtol=1e-5)
    assert torch.count_nonzero(got["ease"][:, -4:-2]) == 0  # rows 32, 40: added since: 0
    assert torch.count_nonzero(got["ease"][0, :8]) > 0


def test_ease_rows_are_saved_and_checked(tmp_path, random_platform, caplog):
    data = random_platform
    index = build_collaborative_index(data, data.sequences, ease_max_items=20, ease_items=8)
    path = tmp_path / "local.safetensors"
    index.save(path)
    again = CollaborativeIndex.load(path, index.fingerprint, data.items)
    assert again is not None and torch.equal(again.ease_rows, index.ease_rows)
    histories = [data.sequences[1][:5], [int(index.ease_rows[2])]]
    assert torch.equal(_ease_signal(again, histories), _ease_signal(index, histories))
    tensors = _saved_tensors(index)
    tensors["ease_rows"][3] = len(data.items)  # a row past the catalogue
    tensors = {name: tensor.contiguous() for name, tensor in tensors.items()}
    save_file(tensors, str(path), metadata={"format": FORMAT, "fingerprint": index.fingerprint})
    with caplog.at_level("WARNING"):
        assert CollaborativeIndex.load(path, index.fingerprint, data.items) is None
    assert "ease_rows name rows outside the catalogue" in caplog.text
    del tensors["ease_rows"]  # [8, 8] weights without their rows are not a full EASE
    save_file(tensors, str(path), metadata={"format": FORMAT, "fingerprint": index.fingerprint})
    assert CollaborativeIndex.load(path, index.fingerprint, data.items) is None


def test_a_60k_item_catalogue_gets_ease_over_its_most_popular_items(monkeypatch):
    import numpy as np

    from clients.scorer import ease as ease_module
    from clients.scorer.ease import EASE_LARGE_ITEMS

    items, rng = 60_000, np.random.default_rng(0)
    popularity = 1.0 / np.arange(1, items + 1) ** 1.1  # power-law, about 180k interactions
    lengths = rng.integers(5, 40, size=8_000)
    drawn = rng.choice(items, size=int(lengths.sum()), p=popularity / popularity.sum()).tolist()
    ends = np.cumsum(lengths).tolist()
    sequences = [list(dict.fromkeys(drawn[e - n : e])) for n, e in zip(lengths, ends, strict=True)]
    inverted = []  # what EASE inverts; the inverse itself is tested above (here: too slow)
    monkeypatch.setattr(
        ease_module,
        "ease_weights",
        lambda gram, *a: inverted.append(gram.shape) or torch.from_numpy(gram).float(),
    )
    data = make_platform(sequences, items=items)
    index = build_collaborative_index(data, sequences)
    m = EASE_LARGE_ITEMS
    assert inverted == [(m, m)] and index.ease.shape == (m, m) and index.ease_rows.shape == (m,)
    tensors = [index.neighbours, index.similarity, index.popularity, index.counts, index.ease]
    assert all(t.numel() < items * items // 100 for t in tensors)
    scores = index.scores([sequences[0][:10]])["ease"]
    assert scores.shape == (1, items)
    outside = torch.ones(items, dtype=torch.bool)
    outside[index.ease_rows] = False
    assert torch.count_nonzero(scores[0, outside]) == 0 and torch.count_nonzero(scores) > 0


def test_a_few_users_ease_scores_are_the_dense_products(random_platform):
    # a request batch takes the sparse product; the fits take the dense one: the same scores
    from clients.scorer.ease import SPARSE_USERS, ease_scores, history_matrix

    data = random_platform
    index = build_collaborative_index(data, data.sequences)
    histories = [data.sequences[0][:6], [], [3, 3, 9], [31]]
    few = ease_scores(index.ease, None, histories, index.items)
    dense = history_matrix(histories, index.items) @ index.ease
    torch.testing.assert_close(few, dense, atol=1e-5, rtol=1e-5)
    many = ease_scores(index.ease, None, histories * (SPARSE_USERS // 4 + 1), index.items)
    torch.testing.assert_close(many[: len(histories)], dense, atol=0.0, rtol=0.0)
    assert torch.count_nonzero(few[1]) == 0 and torch.count_nonzero(few[0]) > 0
