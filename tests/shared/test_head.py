import torch

from shared import head as head_module
from shared.head import SequenceHead, user_vectors, window_tensors


def _head(dim=6, n=4, seed=0):
    head = SequenceHead(dim, n)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return head


def _table(items=9, dim=6, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(items, dim, generator=gen), dim=1)


def test_an_untrained_head_is_the_mean_of_the_recent_items():
    table = _table()
    head = SequenceHead(6, 3)
    (user,) = user_vectors(head, table, [[0, 4, 5, 7]])  # oldest first: reads 7, 5, 4
    torch.testing.assert_close(user, table[[4, 5, 7]].mean(0))


def test_empty_history_gets_the_prior_alone():
    head = _head()
    (user,) = user_vectors(head, _table(), [[]])
    torch.testing.assert_close(user, head.prior.detach())


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


def test_fresh_vectors_stand_in_for_their_rows():
    head, table = _head(), _table()
    rows, mask = window_tensors([[1, 2, 3, 4]], 4)
    fresh = torch.randn(2, 6)
    slot = torch.tensor([[0, -1, 1, -1]])  # rows[0] is item 4 (most recent), rows[2] is item 2
    with torch.no_grad():
        got = head(table, rows, mask, fresh, slot)
        replaced = table.clone()
        replaced[4], replaced[2] = fresh[0], fresh[1]
        expected = head(replaced, rows, mask)
    torch.testing.assert_close(got, expected)


def test_chunked_pooling_equals_one_pass(monkeypatch):
    head, table = _head(), _table()
    histories = [[i % 9, (i * 7) % 9, (i * 5) % 9][: 1 + i % 3] for i in range(23)]
    with torch.no_grad():
        whole = user_vectors(head, table, histories)
        monkeypatch.setattr(head_module, "POOL_ELEMENTS", 2 * len(table))  # 2 users per chunk
        chunked = user_vectors(head, table, histories)
    torch.testing.assert_close(chunked, whole)
