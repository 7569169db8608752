"""Scale benchmark of the site scorer: catalogues of 10k, 100k and 1M items.

The catalogue is synthetic, since encoding a million texts on a CPU takes hours (the encoder's
throughput is measured on its own, items/s, so a reader can extrapolate):

- item vectors: unit vectors of the model's item-vector width (``model.dim``) around topic
  centres (an item's cosine to another of its topic about 0.5, to the rest about 0), as
  adapted text vectors cluster;
- interactions: users with power-law history lengths (5 to 100 items), each drawing half of its
  items from the catalogue's power-law popularity and half from one topic.

For each size and each way of ranking (``full``: today's scorer, every item scored, where it
fits; ``flat`` and ``hnsw``: the two-stage ranking, clients/scorer/candidates.py), in a fresh
process so that its resident memory is its own: the candidate index's build seconds, the
process's resident memory, p50/p99 latency of a 10-item-history hybrid ranking at 1 and 8
concurrent clients (in process, through the service's request batcher; the HTTP layer's own
cost is what ``simulations.bench.scorer`` measures), and recall@10: the share of the exact
model top-10 (brute force over every item) found among the request's candidates.

    python -m simulations.bench.scale [--sizes 10000,100000,1000000] [--seconds 8] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import ModelConfig

SIZES = (10_000, 100_000, 1_000_000)
FULL_MAX_ITEMS = 1_000_000  # today's scorer is measured up to here
DIM = ModelConfig().dim  # the model's item vectors (the adaptor's output)
HISTORY = 10
RECALL_QUERIES = 200
TOPIC_ITEMS = 500  # items per topic centre
P99_TARGET_MS = 20.0


def synthetic_site(items: int, seed: int = 0) -> tuple[np.ndarray, list[list[int]]]:
    """(unit item vectors [items, DIM] float32, each user's item rows oldest first)."""
    rng = np.random.default_rng(seed)
    topics = max(8, items // TOPIC_ITEMS)
    centres = rng.standard_normal((topics, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    topic_of = rng.integers(0, topics, items)
    vectors = np.empty((items, DIM), dtype=np.float32)
    for start in range(0, items, 100_000):
        end = min(items, start + 100_000)
        noise = rng.standard_normal((end - start, DIM)).astype(np.float32) / np.sqrt(DIM)
        vectors[start:end] = centres[topic_of[start:end]] + noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.9
    popularity = popularity[rng.permutation(items)]
    popularity /= popularity.sum()
    members = [np.flatnonzero(topic_of == t) for t in range(topics)]
    users = items // 4
    lengths = np.minimum(100, (5 * rng.pareto(1.5, users) + 5).astype(int))
    popular = rng.choice(items, size=int(lengths.sum()), p=popularity)
    sequences, at = [], 0
    for length, topic in zip(lengths, rng.integers(0, topics, users), strict=True):
        own = rng.choice(members[topic], size=length - length // 2)
        seq = np.concatenate([popular[at : at + length // 2], own])
        at += length // 2
        rng.shuffle(seq)
        sequences.append(list(dict.fromkeys(int(i) for i in seq)))
    return vectors, sequences


def prepare(items: int, folder: Path) -> dict[str, Any]:
    """Generate a site of ``items`` items and build its counts, saved in ``folder``."""
    from clients.scorer.collaborative import build_collaborative_index
    from shared.data import PlatformData

    started = time.perf_counter()
    vectors, sequences = synthetic_site(items)
    np.save(folder / "vectors.npy", vectors)
    data = PlatformData(
        "synthetic",
        _items(items),
        [f"u{u}" for u in range(len(sequences))],
        sequences,
        [[float(t) for t in range(len(s))] for s in sequences],
    )
    generated = time.perf_counter() - started
    started = time.perf_counter()
    local = build_collaborative_index(data, sequences)
    counts_s = time.perf_counter() - started
    local.save(folder / "counts.safetensors")
    histories = [s[-HISTORY:] for s in sequences if len(s) >= HISTORY][:2000]
    (folder / "histories.json").write_text(json.dumps(histories))
    return {
        "items": items,
        "users": len(sequences),
        "interactions": sum(map(len, sequences)),
        "generate_s": round(generated, 1),
        "counts_build_s": round(counts_s, 1),
        "neighbours": int(local.neighbours.shape[1]),
    }


def _items(items: int) -> list[Any]:
    from shared.text import Item

    return [Item(f"i{r}", f"item {r}") for r in range(items)]


def measure(folder: Path, kind: str, seconds: float, device: str) -> dict[str, Any]:
    """One (catalogue, ranking) row, in this process (called in a fresh one per row)."""
    import torch

    from clients.scorer.candidates import build_candidate_index
    from clients.scorer.collaborative import CollaborativeIndex
    from clients.scorer.fusion import FusionWeights
    from clients.scorer.item_index import ItemIndex
    from clients.scorer.local_signals import LocalSignals
    from clients.scorer.model import ScorerModel, SiteScorer
    from clients.scorer.ranking import Query, recommend
    from shared.config import ModelConfig
    from shared.model import build_recommender

    rec = build_recommender(ModelConfig(), device=device)
    vectors = torch.from_numpy(np.load(folder / "vectors.npy")).to(device)
    items = _items(len(vectors))
    index = ItemIndex(items, vectors, f"synthetic{len(items)}", "bench", encoded=0)
    counts = CollaborativeIndex.load(folder / "counts.safetensors", _fingerprint(folder), items)
    if counts is None:
        raise RuntimeError(f"{folder}: the counts did not load")
    # the fusion's fit is not what is measured here: a fixed mix of every signal, shrunk
    mix = {"model": 0.4, "itemknn": 0.2, "popularity": 0.1, "ease": 0.3}
    fusion = FusionWeights(mix, 0.0, 0.0, 0, kappa=3.0, new_user_model=0.5)
    local = LocalSignals(counts, fusion, folder / "interactions")
    started = time.perf_counter()
    candidates = None if kind == "full" else build_candidate_index(index, counts, requested=kind)
    build_s = time.perf_counter() - started
    model = ScorerModel(rec, folder, "bench", {}, "", "", "fp32")
    snapshot = SiteScorer(model, index, folder / "items", local, candidates)
    histories = json.loads((folder / "histories.json").read_text())
    queries = [Query(history_rows=tuple(h)) for h in histories]

    def rank(q: Query) -> list[Any]:
        return recommend(rec, index, [q], local=local, candidates=candidates)[0]

    rank(queries[0])  # warm-up
    row: dict[str, Any] = {
        "items": len(items),
        "index": kind,
        "device": device,
        "date": date.today().isoformat(),
        "build_s": round(build_s, 2),
        "ef_search": int(candidates.index.hnsw.efSearch) if kind == "hnsw" else None,
        "rss_mb": round(_rss_mb()),
        "recall@10": _recall(rec, index, candidates, counts, queries) if candidates else 1.0,
    }
    out = []
    speed = _topk_vs_faiss(rec, index, queries) if kind == "full" else None
    for clients in (1, 8):
        latencies = asyncio.run(_load(snapshot, queries, clients, seconds))
        ordered = sorted(latencies)
        out.append(
            {
                **row,
                "clients": clients,
                "requests": len(ordered),
                "p50_ms": round(1000 * statistics.median(ordered), 2),
                "p99_ms": round(1000 * ordered[int(0.99 * (len(ordered) - 1))], 2),
                "rss_mb": round(max(row["rss_mb"], _rss_mb())),
                **({"topk_vs_faiss": speed} if speed is not None else {}),
            }
        )
    return {"rows": out}


def _fingerprint(folder: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(folder / "counts.safetensors"), framework="pt") as fh:
        return (fh.metadata() or {})["fingerprint"]


async def _load(snapshot: Any, queries: list[Any], clients: int, seconds: float) -> list[float]:
    from clients.scorer.batcher import RankBatcher

    batcher = RankBatcher()
    await batcher.start()
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def client(first: int) -> None:
        n = first
        while time.perf_counter() < end:
            started = time.perf_counter()
            ranked = await batcher.rank(snapshot, queries[n % len(queries)])
            latencies.append(time.perf_counter() - started)
            assert len(ranked) == 10
            n += clients

    await asyncio.gather(*(client(c) for c in range(clients)))
    await batcher.stop()
    return latencies


def _recall(rec: Any, index: Any, candidates: Any, counts: Any, queries: list[Any]) -> float:
    """Share of the exact model top-10 (every item scored) among the requests' candidates."""
    import torch

    from clients.scorer.candidates import MODEL_CANDIDATES, candidate_rows

    found = total = 0
    for q in queries[:RECALL_QUERIES]:
        with torch.inference_mode():
            user = rec.user_vectors([list(q.history_rows)], index.vectors)
            scores = (user @ index.vectors.T)[0]
            scores[list(q.history_rows)] = float("-inf")
        exact = set(scores.topk(10).indices.tolist())
        nearest = candidates.nearest(user, MODEL_CANDIDATES + len(q.history_rows))[0]
        rows = set(
            candidate_rows(
                candidates,
                nearest,
                q.history_rows,
                len(index.items),
                counts,
                set(q.history_rows),
            ).tolist()
        )
        found += len(exact & rows)
        total += len(exact)
    return round(found / total, 4)


def _topk_vs_faiss(rec: Any, index: Any, queries: list[Any], repeats: int = 200) -> float:
    """FAISS ``IndexFlatIP`` seconds ÷ ``ranking.top_k`` seconds for one exact top-10 at batch 1
    (above 1: ours is faster), timed alternately on the same user vectors."""
    import faiss
    import torch

    from clients.scorer.ranking import top_k

    with torch.inference_mode():
        users = rec.user_vectors([list(q.history_rows) for q in queries[:repeats]], index.vectors)
    flat = faiss.IndexFlatIP(index.vectors.shape[1])
    flat.add(index.vectors.numpy())
    host = users.numpy()
    ours = theirs = 0.0
    for u in range(len(users)):
        started = time.perf_counter()
        top_k(users[u : u + 1], index.vectors, 10)
        ours += time.perf_counter() - started
        started = time.perf_counter()
        flat.search(host[u : u + 1], 10)
        theirs += time.perf_counter() - started
    return round(theirs / ours, 3)


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def encoding_throughput(device: str, texts: int = 512) -> float:
    """Items/s of the real encoder over MovieLens-like item texts."""
    from clients.scorer.item_index import encode_texts
    from shared.config import ModelConfig
    from shared.model import build_recommender

    rec = build_recommender(ModelConfig(), device=device)
    sample = [
        f"Film {i} ({1950 + i % 60}). Drama, Comedy. A story of night {i}" for i in range(texts)
    ]
    encode_texts(rec, sample[:64], max_tokens=rec.config.max_item_tokens, progress=False)
    started = time.perf_counter()
    encode_texts(rec, sample, max_tokens=rec.config.max_item_tokens, progress=False)
    return texts / (time.perf_counter() - started)


def kinds_for(items: int) -> list[str]:
    kinds = ["full"] if items <= FULL_MAX_ITEMS else []
    return kinds + ["flat", "hnsw"]


def _merged(
    previous: dict[str, Any], rows: list[dict[str, Any]], sites: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The previous run's rows and sites with those of this run's (size, ranking) replaced; a
    kept row keeps the date it was measured on."""
    measured = {(r["items"], r["index"]) for r in rows}
    kept = [
        {**r, "date": r.get("date", previous.get("date"))}
        for r in previous.get("rows", [])
        if (r["items"], r["index"]) not in measured
    ]
    order = {kind: n for n, kind in enumerate(("full", "flat", "hnsw"))}
    merged = sorted(kept + rows, key=lambda r: (r["items"], order.get(r["index"], 9), r["clients"]))
    sizes = {s["items"] for s in sites}
    return merged, sorted(
        [s for s in previous.get("sites", []) if s["items"] not in sizes] + sites,
        key=lambda s: s["items"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.bench.scale", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="catalogue sizes")
    parser.add_argument("--seconds", type=float, default=8.0, help="per latency run (default 8)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--kinds",
        default="",
        help="only these rankings (full,flat,hnsw); their rows replace the same size's in --json",
    )
    parser.add_argument("--json", type=Path, default=Path("docs/results/bench/scale.json"))
    parser.add_argument("--measure", nargs=2, metavar=("FOLDER", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # one row, in its own process
        print(
            json.dumps(measure(Path(args.measure[0]), args.measure[1], args.seconds, args.device))
        )
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rows, sites = [], []
    previous = json.loads(args.json.read_text(encoding="utf-8")) if args.json.is_file() else {}
    partial = bool(args.kinds) and bool(previous)  # updates the previous run's rows only
    encode = previous["encoding_items_per_s"] if partial else encoding_throughput(args.device)
    print(f"text encoding: {encode:.0f} items/s ({1e6 / encode / 60:.0f} min per million items)")
    with tempfile.TemporaryDirectory(prefix="fedxrec-scale-") as tmp:
        for items in sizes:
            folder = Path(tmp, str(items))
            folder.mkdir()
            site = prepare(items, folder)
            sites.append(site)
            print(f"{items:>9,} items: {site}", flush=True)
            for kind in args.kinds.split(",") if args.kinds else kinds_for(items):
                found = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "simulations.bench.scale",
                        "--seconds",
                        str(args.seconds),
                        "--device",
                        args.device,
                        "--measure",
                        str(folder),
                        kind,
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if found.returncode:
                    print(f"  {kind}: failed\n{found.stderr[-2000:]}", flush=True)
                    continue
                for row in json.loads(found.stdout.strip().splitlines()[-1])["rows"]:
                    rows.append(row)
                    print(
                        f"  {kind:>4} {row['clients']} client(s): p50 {row['p50_ms']:7.2f} ms  "
                        f"p99 {row['p99_ms']:7.2f} ms  recall@10 {row['recall@10']:.3f}  "
                        f"build {row['build_s']:6.1f} s  rss {row['rss_mb']:6.0f} MB",
                        flush=True,
                    )
    if partial:
        rows, sites = _merged(previous, rows, sites)
    out = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.device}",
        "encoding_items_per_s": round(encode, 1),
        "p99_target_ms": P99_TARGET_MS,
        "sites": sites,
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
