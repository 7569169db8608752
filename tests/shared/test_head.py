import numpy as np
import pytest
import torch

from shared import head as head_module
from shared.head import TransformerHead, recent_window, user_vectors
from shared.whitening import catalogue_moments, pooled_moments, whitening_arrays


def _head(dim=8, window=4, seed=0, blocks=2, heads=2):
    torch.manual_seed(seed)
    head = TransformerHead(6, dim=dim, window=window, blocks=blocks, heads=heads, dropout=0.0)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return head.eval()


def _table(items=9, dim=8, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(items, dim, generator=gen)


def test_the_window_is_right_aligned_most_recent_last():
    rows, mask = recent_window([[1, 2], [3, 4, 5, 6, 7], []], 3)
    assert rows.tolist() == [[0, 1, 2], [5, 6, 7], [0, 0, 0]]
    assert mask.tolist() == [[False, True, True], [True, True, True], [False, False, False]]


def test_a_slot_sees_only_the_past_and_never_the_padding():
    """Causality: a slot's output ignores later items; the last slot is the user vector."""
    head, table = _head(), _table()
    with torch.no_grad():
        rows, mask = recent_window([[3, 5, 1, 7]], 4)
        every = head(table[rows], mask, every_slot=True)[0]  # [5, d]: start, 3, 5, 1, 7
        changed_rows, _ = recent_window([[3, 5, 1, 2]], 4)
        changed = head(table[changed_rows], mask, every_slot=True)[0]
    torch.testing.assert_close(every[-1], user_vectors(head, table, [[3, 5, 1, 7]])[0])
    torch.testing.assert_close(changed[:-1], every[:-1])  # a later item changes no earlier slot
    assert not torch.allclose(changed[-1], every[-1])
    padded = table.clone()
    padded[0] = 100.0  # the padding slots read table[0]: changing it changes nothing
    with torch.no_grad():
        short = user_vectors(head, table, [[3, 5]])[0]
        again = user_vectors(head, padded, [[3, 5]])[0]
    torch.testing.assert_close(again, short)


def test_an_empty_history_is_the_models_prior():
    head, table = _head(), _table()
    with torch.no_grad():
        empty = user_vectors(head, table, [[]])[0]
        other = user_vectors(head, _table(seed=7), [[]])[0]
    assert torch.isfinite(empty).all()
    torch.testing.assert_close(empty, other)  # the catalogue does not enter it


def test_longer_histories_read_only_the_window():
    head, table = _head(window=3), _table()
    with torch.no_grad():
        long = user_vectors(head, table, [[8, 0, 3, 5, 1]])
        recent = user_vectors(head, table, [[3, 5, 1]])
    torch.testing.assert_close(long, recent)


def test_the_head_never_sees_an_id():
    """The same item vectors under shuffled catalogue rows (other IDs) give the same scores."""
    head, table = _head(), _table()
    histories = [[0, 3, 8], [5], [2, 1, 7, 6, 4]]
    with torch.no_grad():
        scores = user_vectors(head, table, histories) @ table.T
        order = torch.randperm(len(table), generator=torch.Generator().manual_seed(5))
        new_row = {int(old): new for new, old in enumerate(order)}
        shuffled = table[order]
        moved = [[new_row[i] for i in h] for h in histories]
        again = user_vectors(head, shuffled, moved) @ shuffled.T
    torch.testing.assert_close(again[:, [new_row[i] for i in range(len(table))]], scores)


def test_chunked_users_equal_one_pass(monkeypatch):
    head, table = _head(), _table()
    histories = [[i % 9, (i * 7) % 9, (i * 5) % 9][: 1 + i % 3] for i in range(23)]
    with torch.no_grad():
        whole = user_vectors(head, table, histories)
        monkeypatch.setattr(head_module, "USER_ELEMENTS", 2 * 5 * 8)  # 2 users per chunk
        chunked = user_vectors(head, table, histories)
    torch.testing.assert_close(chunked, whole)


def test_the_whitening_makes_the_catalogue_white():
    gen = torch.Generator().manual_seed(0)
    mixing = torch.eye(6) + 0.3 * torch.randn(6, 6, generator=gen)  # well conditioned
    vectors = torch.randn(400, 6, generator=gen, dtype=torch.float64) @ mixing.double() + 3.0
    head = TransformerHead(6, dim=4, window=2, blocks=1, heads=1, dropout=0.0)
    arrays = whitening_arrays(catalogue_moments(vectors))
    with torch.no_grad():
        head.adaptor.mean.copy_(torch.as_tensor(arrays["adaptor.mean"]))
        head.adaptor.whitening.copy_(torch.as_tensor(arrays["adaptor.whitening"]))
        white = head.adaptor.whiten(vectors.float()).double()
    torch.testing.assert_close(
        white.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-4, rtol=0
    )
    cov = white.T @ white / len(white)
    off_diagonal = cov - torch.diag(torch.diagonal(cov))
    assert float(off_diagonal.abs().max()) < 1e-5  # decorrelated
    variances = torch.diagonal(cov)  # unit, up to the ridge on the smallest directions
    assert float(variances.max()) <= 1.0 + 1e-5 and float(variances.min()) > 0.97


def test_pooled_moments_are_the_moments_of_the_catalogues_together():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(50, 5, generator=gen, dtype=torch.float64) + 1.0
    b = torch.randn(30, 5, generator=gen, dtype=torch.float64) * 2.0
    pooled = pooled_moments([catalogue_moments(a), catalogue_moments(b)])
    together = catalogue_moments(torch.cat([a, b]))
    assert pooled.items == 80
    np.testing.assert_allclose(pooled.mean, together.mean, atol=1e-12)
    np.testing.assert_allclose(pooled.covariance, together.covariance, atol=1e-12)


def test_moments_of_different_encoders_are_refused():
    from shared.whitening import WhiteningError

    gen = torch.Generator().manual_seed(2)
    small, wide = torch.randn(10, 4, generator=gen), torch.randn(10, 6, generator=gen)
    with pytest.raises(WhiteningError, match="different widths"):
        pooled_moments([catalogue_moments(small), catalogue_moments(wide)])
