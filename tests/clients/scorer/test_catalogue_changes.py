"""A catalogue that changes while the service runs: the journal, the live snapshot, the API."""

import pytest
import torch

from clients.scorer.catalogue_changes import (
    DELETE,
    PUT,
    append_change,
    journal_path,
    read_catalogue,
)
from clients.scorer.ranking import query_for_ids, recommend
from clients.scorer.service import ScorerService
from shared.data import DataError
from shared.text import Item
from tests.clients.scorer.test_http_api import ADMIN, running_server, site  # noqa: F401

NEW = Item("m99", "Alien", "1979", ("Horror", "Sci-Fi"), "a crew meets a creature in space")


def _ids(items):
    return [i.item_id for i in items]


def test_the_journal_replays_over_the_items_file_and_a_torn_last_line_is_ignored(platform_dir):
    items_file = platform_dir / "items.csv"
    before = _ids(read_catalogue(items_file))
    append_change(items_file, PUT, NEW.item_id, NEW)
    append_change(items_file, DELETE, "m2")
    after = read_catalogue(items_file)
    assert _ids(after) == [i for i in before if i != "m2"] + ["m99"]
    assert after[-1] == NEW
    with journal_path(items_file).open("ab") as fh:  # a crash in the middle of a change
        fh.write(b'{"op": "delete", "item_id": "m1"')
    assert _ids(read_catalogue(items_file)) == _ids(after)  # the catalogue before that change
    lines = journal_path(items_file).read_bytes().split(b"\n")
    journal_path(items_file).write_bytes(b"\n".join([b"{garbage", *lines[1:]]))
    with pytest.raises(DataError, match=r"changes.jsonl, line 1: not a catalogue change"):
        read_catalogue(items_file)


def test_an_added_item_scores_as_in_a_full_rebuild(site):  # noqa: F811
    """Text-only: the live index after one addition ranks exactly as a fresh index of the new
    catalogue (items file + journal) built from scratch."""
    adapter_dir, load = site
    scorer = load(text_only=True)
    service = ScorerService(lambda: load(text_only=True), scorer)
    live, done = service.put_item(NEW)
    assert done == "added" and len(live.index) == len(scorer.index) + 1
    assert live.index.encoded == 1  # the rest was not encoded again
    rebuilt = load(text_only=True)  # a restart: the items file with its journal
    assert _ids(rebuilt.index.items) == _ids(live.index.items)
    torch.testing.assert_close(live.index.vectors, rebuilt.index.vectors, atol=1e-5, rtol=0)
    for history in (["m1"], ["m3", "m4"]):
        got, want = (
            recommend(s.model.rec, s.index, [query_for_ids(s.index, history, k=9)])[0]
            for s in (live, rebuilt)
        )
        assert [r.item_id for r in got] == [r.item_id for r in want]
        assert [r.score for r in got] == pytest.approx([r.score for r in want], abs=1e-4)
    assert scorer.index.row_of.get("m99") is None  # the old snapshot is untouched
    before = live.index.vectors.clone()
    newer, _ = service.put_item(Item("m100", "Heat", "1995"))  # into the spare row
    assert torch.equal(live.index.vectors, before) and len(live.index) == len(scorer.index) + 1
    assert newer.index.vectors.shape[0] == live.index.vectors.shape[0] + 1


def test_the_service_adds_updates_and_removes_items_while_it_ranks(site):  # noqa: F811
    _, load = site
    scorer = load()
    service = ScorerService(load, scorer)
    with running_server(service) as client:
        item = {"title": NEW.title, "year": NEW.year, "categories": list(NEW.categories)}
        added = client.put("/items/m99", json=item, headers=ADMIN)
        assert added.status_code == 200 and added.json()["status"] == "added", added.text
        assert added.json()["items"] == len(scorer.index) + 1
        every = client.post("/rank", json={"history": ["m1"], "k": 20}).json()["items"]
        assert "m99" in [i["item_id"] for i in every]  # ranked from the next request on
        updated = client.put("/items/m99", json={**item, "title": "Aliens"}, headers=ADMIN)
        assert updated.json()["status"] == "updated"
        assert client.get("/model").json()["items"] == len(scorer.index) + 1

        assert client.delete("/items/m3", headers=ADMIN).json()["status"] == "removed"
        for history in (["m1"], ["m2", "m4"], [], "Toy Story"):
            ranked = client.post("/rank", json={"history": history, "k": 20}).json()["items"]
            assert "m3" not in [i["item_id"] for i in ranked]
        gone = client.post("/rank", json={"history": ["m3", "m1"]}).json()
        assert gone["unknown_items"] == ["m3"]

        assert client.delete("/items/m3", headers=ADMIN).status_code == 404
        bad = client.put("/items/m98", json={"title": "X", "year": [1990]}, headers=ADMIN)
        assert bad.status_code == 422 and "year [1990] is not a year" in bad.json()["detail"]
        assert client.put("/items/m98", json={"year": "1990"}, headers=ADMIN).status_code == 422
        odd = client.put("/items/m98", json={"title": "X", "rating": 5}, headers=ADMIN)
        assert odd.status_code == 422 and "unknown field(s) rating" in odd.json()["detail"]
        assert client.put("/items/m98", json=item).status_code == 401  # no token
    live_ids = set(service.current.index.row_of)
    restarted = load()  # the items file and the journal: what was served
    assert set(restarted.index.row_of) == live_ids
    assert {"m99"} <= live_ids and "m3" not in live_ids
    assert restarted.index.items[restarted.index.row_of["m99"]].title == "Aliens"
