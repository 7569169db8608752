"""The HTTP service as a real uvicorn server on 127.0.0.1 (a free port), called with httpx."""

import contextlib
import threading
import time
from functools import partial

import httpx
import pytest

from clients.scorer.http_api import MAX_BODY_BYTES, bind, build_server, create_app
from clients.scorer.model import load_site_scorer
from clients.scorer.ranking import query_for_ids, recommend
from clients.scorer.service import ScorerService, watched_files
from tests.clients.scorer.support import save_tiny_adapter

TOL = 1e-4
HISTORY = ["m4", "m1", "m2"]
TOKEN = "an-admin-token-for-the-tests"
ADMIN = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def site(tiny_vocab, platform_dir, encoder_dir):
    """A served adapter folder (adapter A) and a loader for the service."""
    adapter_dir = save_tiny_adapter(tiny_vocab, platform_dir / "global", seed=1, round_=1)
    load = partial(
        load_site_scorer,
        adapter_dir,
        platform_dir / "items.csv",
        encoder=str(encoder_dir),
        cache_dir=platform_dir / "cache",
        progress=False,
        device="cpu",  # the tests' answers are compared with CPU references
    )
    return adapter_dir, load


@contextlib.contextmanager
def running_server(service, **app_options):
    """uvicorn in a thread on a free loopback port; stopped through its handle."""
    app_options.setdefault("admin_token", TOKEN)
    server = build_server(create_app(service, **app_options))
    sock = bind("127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=30) as c:
            yield c
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()
        assert not thread.is_alive()


def answer_of(scorer, history, k=3):
    """The site's ranking, computed without the service (hybrid: interactions.csv is there)."""
    query = query_for_ids(scorer.index, history, k=k)
    (recs,) = recommend(scorer.model.rec, scorer.index, [query], local=scorer.local)
    return [(r.item_id, r.score) for r in recs]


def assert_matches(body, expected):
    got = [(i["item_id"], i["score"]) for i in body["items"]]
    assert len(got) == len(expected)
    for (got_id, got_score), (_, want_score) in zip(got, expected, strict=True):
        assert got_score == pytest.approx(want_score, abs=TOL)
        assert got_score == pytest.approx(dict(expected).get(got_id, -9), abs=TOL)


def test_rank_health_and_model(site, encoder_dir):
    adapter_dir, load = site
    scorer = load()
    with running_server(ScorerService(load, scorer)) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["items"] == 8
        model = client.get("/model").json()
        assert model["adapter_hash"] == scorer.model.adapter_hash and model["round"] == 1
        assert model["encoder"] == str(encoder_dir) and model["items"] == 8
        assert model["ranking"] == "hybrid"  # /model reports the fitted fusion weights
        assert model["fusion"]["weights"] == scorer.local.fusion.to_dict()["weights"]
        assert model["fusion"]["kappa"] == scorer.local.fusion.kappa  # and its shrinkage

        reply = client.post("/rank", json={"history": HISTORY, "k": 3})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["adapter_hash"] == scorer.model.adapter_hash
        assert_matches(body, answer_of(scorer, HISTORY))
        assert [i["rank"] for i in body["items"]] == [1, 2, 3]
        for item in body["items"]:
            assert item["item_id"] not in HISTORY
            assert {e["item_id"] for e in item["because"]} <= set(HISTORY)
            assert len(item["because"]) == 3

        reply = client.post(
            "/rank", json={"history": "Fargo (1996); Heat", "k": 8, "exclude_seen": False}
        )
        assert reply.status_code == 200 and len(reply.json()["items"]) == 8


BAD_REQUESTS = [
    ({"history": ["m1", ""]}, 422, "empty item id"),
    ({}, 422, "history: Field required"),
    ({"history": ["m1"], "k": 0}, 422, "k=0 is out of range"),
    ({"history": ["m1"], "k": 1001}, 422, "k=1001 is out of range"),
    ({"history": ["m1"], "k": "many"}, 422, "k: Input should be a valid integer"),
    ({"history": ["m1"], "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
    ({"history": {"m1": 1}}, 422, "history"),
    ({"history": ["m1", True]}, 422, "history[1] true is not an id"),
    ({"history": ["m1", 1.5]}, 422, "history[1] 1.5 is not an id"),
    ({"history": [None]}, 422, "history[0] null is not an id"),
    ({"history": [["m1"]]}, 422, 'history[0] ["m1"] is not an id'),
    ({"history": [{"id": "m1"}]}, 422, 'history[0] {"id": "m1"} is not an id'),
    ({"history": ["m1"] * 1001}, 422, "history has 1001 item ids"),
    ({"history": "x" * 10_001}, 422, "10001 characters"),
]


def test_bad_requests_get_a_4xx_naming_the_problem(site):
    _, load = site
    with running_server(ScorerService(load, load())) as client:
        for body, status, message in BAD_REQUESTS:
            reply = client.post("/rank", json=body)
            assert reply.status_code == status and message in reply.json()["detail"], body
        reply = client.post(
            "/rank", content=b'{"history": [', headers={"content-type": "application/json"}
        )
        assert reply.status_code == 422 and "JSON" in reply.json()["detail"]
        json_type = {"content-type": "application/json"}
        oversized = b'{"history": "' + b"a" * MAX_BODY_BYTES + b'"}'
        reply = client.post("/rank", content=oversized, headers=json_type)
        assert reply.status_code == 413 and "too large" in reply.json()["detail"]

        def chunks():  # no Content-Length: counted while it streams in
            for _ in range(20):
                yield b"a" * 8192

        reply = client.post("/rank", content=chunks(), headers=json_type)
        assert reply.status_code == 413
        reply = client.post("/rank", content=b"history=m1", headers={"content-type": "text/plain"})
        assert reply.status_code == 415
        assert "send the body as JSON with 'Content-Type: application/json'" in reply.text
        # none of them reached the model
        assert client.get("/model").json()["batches"] == 0
        assert client.get("/health").status_code == 200


def test_concurrent_requests_are_batched_and_each_answered_correctly(site):
    _, load = site
    scorer = load()
    histories = [[f"m{1 + (i + j) % 8}" for j in range(1 + i % 4)] for i in range(24)]
    start = threading.Barrier(len(histories))
    replies = [None] * len(histories)

    def ask(n, client):
        start.wait()
        replies[n] = client.post("/rank", json={"history": histories[n], "k": 3})

    with running_server(ScorerService(load, scorer)) as client:
        threads = [threading.Thread(target=ask, args=(n, client)) for n in range(len(histories))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = client.get("/model").json()
    for history, reply in zip(histories, replies, strict=True):
        assert reply.status_code == 200, reply.text
        assert_matches(reply.json(), answer_of(scorer, history))
    assert stats["largest_batch"] > 1 and stats["batches"] < len(histories)


def test_reload_under_load_never_fails_or_mixes_adapters(site, tiny_vocab, tmp_path):
    adapter_dir, hybrid = site
    # the model alone: the site's fit would give two random models no weight and the same answer
    load = partial(hybrid, text_only=True)
    old = load()
    new_copy = save_tiny_adapter(tiny_vocab, tmp_path / "b", seed=2, round_=2)
    new = load_site_scorer(
        new_copy,
        old.items_file,
        encoder=old.model.encoder,
        cache_dir="",
        progress=False,
        device="cpu",
        text_only=True,
    )
    expected = {
        old.model.adapter_hash: answer_of(old, HISTORY),
        new.model.adapter_hash: answer_of(new, HISTORY),
    }
    # the two adapters answer differently enough for a mix to show
    assert max(abs(a[1] - b[1]) for a, b in zip(*expected.values(), strict=True)) > 10 * TOL or [
        a[0] for a in expected[old.model.adapter_hash]
    ] != [b[0] for b in expected[new.model.adapter_hash]]

    stop = threading.Event()
    replies = []

    def hammer(client):
        while not stop.is_set():
            replies.append(client.post("/rank", json={"history": HISTORY, "k": 3}))

    with running_server(ScorerService(load, old)) as client:
        workers = [threading.Thread(target=hammer, args=(client,)) for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(0.3)
        save_tiny_adapter(tiny_vocab, adapter_dir, seed=2, round_=2)  # the coordinator's write
        assert client.post("/reload", headers=ADMIN).json()["status"] in ("started", "queued")
        deadline = time.monotonic() + 30
        while client.get("/model").json()["adapter_hash"] != new.model.adapter_hash:
            assert time.monotonic() < deadline, "the new adapter was never swapped in"
            time.sleep(0.05)
        time.sleep(0.3)
        stop.set()
        for w in workers:
            w.join()
        model = client.get("/model").json()
        waited = client.post("/reload", params={"wait": "true"}, headers=ADMIN)
    assert model["round"] == 2 and model["generation"] == 2 and model["last_reload_error"] is None
    assert waited.status_code == 200 and waited.json()["adapter_hash"] == new.model.adapter_hash
    assert all(r.status_code == 200 for r in replies)
    seen = [r.json()["adapter_hash"] for r in replies]
    assert set(seen) == set(expected) and seen.index(new.model.adapter_hash) > 0
    assert seen == sorted(seen, key=lambda h: h == new.model.adapter_hash)  # no way back
    for reply, adapter in zip(replies, seen, strict=True):
        assert_matches(reply.json(), expected[adapter])


@pytest.mark.parametrize(
    "broken, content, said",
    [
        ("adapter_model.safetensors", b"half a file", "corrupt"),
        ("fedxrec.json", b'["a list", "not the settings"]', "holds a JSON list, not an object"),
        ("fedxrec.json", b'{"round": 1,', "is not valid JSON"),
    ],
)
def test_failed_reload_keeps_serving_the_old_adapter(site, broken, content, said):
    adapter_dir, load = site
    scorer = load()
    with running_server(ScorerService(load, scorer)) as client:
        (adapter_dir / broken).write_bytes(content)
        reply = client.post("/reload", params={"wait": "true"}, headers=ADMIN)
        assert reply.status_code == 409
        assert said in reply.json()["detail"] and broken in reply.json()["detail"]
        assert f"still serving adapter {scorer.model.adapter_hash}" in reply.json()["detail"]
        health = client.get("/health").json()
        assert health["adapter_hash"] == scorer.model.adapter_hash
        assert said in health["last_reload_error"]
        ranked = client.post("/rank", json={"history": HISTORY, "k": 3})
        assert ranked.status_code == 200
        assert_matches(ranked.json(), answer_of(scorer, HISTORY))


def test_watched_adapter_folder_is_reloaded(site, tiny_vocab, platform_dir):
    adapter_dir, load = site
    scorer = load()
    service = ScorerService(
        load,
        scorer,
        watch_paths=watched_files(adapter_dir, platform_dir / "items.csv"),
        watch_interval_s=0.1,
    )
    with running_server(service) as client:
        save_tiny_adapter(tiny_vocab, adapter_dir, seed=3, round_=3)
        deadline = time.monotonic() + 30
        while client.get("/model").json()["round"] != 3:
            assert time.monotonic() < deadline, "the watcher never reloaded"
            time.sleep(0.05)
        assert client.get("/model").json()["adapter_hash"] != scorer.model.adapter_hash


def test_admin_endpoints_need_the_token_and_one_reload_runs_at_a_time(site):
    _, load = site
    with running_server(ScorerService(load, load()), admin_token=None) as client:
        reply = client.post("/reload")
        assert reply.status_code == 403 and "--admin-token-file" in reply.json()["detail"]
        assert client.get("/openapi.json").status_code == 403
        assert client.get("/docs").status_code == 404
    slow = threading.Event()

    def slow_load():
        slow.wait(10)
        return load()

    service = ScorerService(slow_load, load())
    with running_server(service) as client:
        assert client.post("/reload", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/openapi.json", headers=ADMIN).json()["info"]["title"]
        assert client.post("/reload", headers=ADMIN).status_code == 202
        deadline = time.monotonic() + 10
        while not service.reloading:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        second = client.post("/reload", headers=ADMIN)
        assert second.status_code == 409 and "already running" in second.json()["detail"]
        slow.set()


def test_k_and_flags_are_strictly_typed(site):
    _, load = site
    with running_server(ScorerService(load, load())) as client:
        for body in ({"history": HISTORY, "k": "5"}, {"history": HISTORY, "k": True},
                     {"history": HISTORY, "exclude_seen": "no"}):  # fmt: skip
            reply = client.post("/rank", json=body)
            assert reply.status_code == 422, body


def test_an_adapter_with_absurd_weights_is_refused_on_load_and_on_reload(site, tiny_vocab):
    from shared.adapter import read_adapter, save_adapter
    from shared.model import ModelOutputError
    from tests.clients.scorer.support import tiny_config

    adapter_dir, load = site
    good = load()
    arrays = read_adapter(adapter_dir)
    arrays["head.out_norm.weight"] = arrays["head.out_norm.weight"] * 1e12  # finite, absurd
    with running_server(ScorerService(load, good)) as client:
        save_adapter(arrays, tiny_config(), adapter_dir)
        with pytest.raises(ModelOutputError, match="absurd scores"):
            load()
        reply = client.post("/reload", params={"wait": "true"}, headers=ADMIN)
        assert reply.status_code == 409 and "absurd scores" in reply.json()["detail"]
        health = client.get("/health").json()
        assert health["adapter_hash"] == good.model.adapter_hash and health["model_check"]
        assert client.post("/rank", json={"history": HISTORY, "k": 3}).status_code == 200


def test_a_lone_surrogate_gets_a_422_and_its_neighbours_their_answers(site):
    """Text JSON can carry but UTF-8 cannot ("\\udfff") is refused by itself, while good
    requests sent at the same moment are answered as usual."""
    _, load = site
    scorer = load()
    bad_bodies = [b'{"history": "star \\udfff wars"}', b'{"history": ["m1", "\\ud800"]}']
    good = [[f"m{1 + (i + j) % 8}" for j in range(1 + i % 3)] for i in range(12)]
    start = threading.Barrier(len(good) + len(bad_bodies))
    replies: dict = {}

    def ask(key, client):
        start.wait()
        if isinstance(key, int):
            replies[key] = client.post("/rank", json={"history": good[key], "k": 3})
        else:
            replies[key] = client.post(
                "/rank", content=key, headers={"content-type": "application/json"}
            )

    with running_server(ScorerService(load, scorer)) as client:
        keys = [*range(len(good)), *bad_bodies]
        threads = [threading.Thread(target=ask, args=(key, client)) for key in keys]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for n, history in enumerate(good):
        assert replies[n].status_code == 200, replies[n].text
        assert_matches(replies[n].json(), answer_of(scorer, history))
    text, ids = (replies[body] for body in bad_bodies)
    assert text.status_code == 422 and "history holds a character that is not valid" in text.text
    assert "U+DFFF" in text.text
    assert ids.status_code == 422 and "history[1] holds a character" in ids.text


def test_a_request_that_fails_in_its_batch_fails_alone(site, monkeypatch):
    """A fault inside the model (not caught by validation) fails only the request that causes
    it: the batch is ranked again one request at a time."""
    import asyncio

    from clients.scorer import batcher as batching
    from clients.scorer.ranking import Query

    _, load = site
    scorer = load()
    real = batching.recommend

    def recommend(rec, index, queries, **kwargs):
        if any(q.text == "boom" for q in queries):
            raise RuntimeError("this query broke the model")
        return real(rec, index, queries, **kwargs)

    monkeypatch.setattr(batching, "recommend", recommend)
    queries = [Query(text="star wars", k=3), Query(text="boom", k=3), Query(text="fargo", k=3)]

    async def rank_all():
        ranker = batching.RankBatcher()
        await ranker.start()
        try:
            return await asyncio.gather(
                *(ranker.rank(scorer, q) for q in queries), return_exceptions=True
            )
        finally:
            await ranker.stop()

    first, broken, last = asyncio.run(rank_all())
    assert isinstance(broken, RuntimeError) and "broke the model" in str(broken)
    for query, answer in ((queries[0], first), (queries[2], last)):
        expected = real(scorer.model.rec, scorer.index, [query], local=scorer.local)[0]
        assert [r.item_id for r in answer] == [r.item_id for r in expected]


def test_a_new_user_gets_the_sites_prior_and_unknown_ids_are_left_out_and_named(site):
    """No history, a blank text or only ids the catalogue does not hold: a new user, ranked by
    the model's prior mixed with the site's popularity as the fit chose; known ids keep their
    say and the unknown ones are named in the reply."""
    from clients.scorer.fusion import new_user_scores

    _, load = site
    scorer = load()
    prior = scorer.model.rec.scores([[]], scorer.index.vectors)[0]
    expected = new_user_scores(prior, scorer.local.index, scorer.local.fusion.new_user_model)
    best = [scorer.index.items[int(r)].item_id for r in expected.argsort(descending=True)[:3]]
    with running_server(ScorerService(load, scorer)) as client:
        for history in ([], "  ", ["gone", "elsewhere-9"]):
            reply = client.post("/rank", json={"history": history, "k": 3})
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert body["new_user"] is True
            assert [i["item_id"] for i in body["items"]] == best
        assert body["unknown_items"] == ["gone", "elsewhere-9"]
        mixed = client.post("/rank", json={"history": ["m1", "gone", "m2"], "k": 3}).json()
    assert mixed["new_user"] is False and mixed["unknown_items"] == ["gone"]
    assert_matches(mixed, answer_of(scorer, ["m1", "m2"]))
