"""`fedxrec rank` and `fedxrec serve`: a site ranks its own catalogue with the global adapter.

Building the parser imports nothing heavy (``--help`` is instant); the model, torch and FastAPI
are imported by the commands that use them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clients.scorer.defaults import (
    CANDIDATE_KINDS,
    DEFAULT_MAX_ITEMS,
    FULL_MAX_ITEMS,
    PRECISIONS,
)
from shared.cli import run_command

if TYPE_CHECKING:
    from clients.scorer.model import SiteScorer
    from clients.scorer.ranking import Query, Recommendation

USERS_PER_BATCH = 256


def _port(text: str) -> int:
    """A TCP port for argparse: 0 (any free one) to 65535, said as an argparse error otherwise."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is out of range: ports are 0 to 65535")
    return port


def register(subparsers: Any) -> None:
    rank = subparsers.add_parser(
        "rank",
        help="rank this site's catalogue for a user history (or a file of users)",
        description=(
            "Rank the items of --items for a history with the base encoder + the federation's "
            "adapter (LoRA + sequence head). When the site has its interactions file (--interactions, "
            "or interactions.csv|jsonl beside the items file), the ranking is hybrid: the model's "
            "score fused with the site's own co-occurrence, popularity and EASE signals, weighted "
            "by a fit on the site's validation split (--text-only: the model alone). Each "
            "recommendation has its score and the history items most similar to it. Item vectors, "
            "the site's counts and the fitted weights are cached on disk."
        ),
    )
    _add_model_options(rank)
    who = rank.add_mutually_exclusive_group(required=True)
    who.add_argument("--history", help="item ids of this site, oldest first: ID,ID,...")
    who.add_argument("--text", help="a free-text history, used as the user text as it is")
    who.add_argument(
        "--users",
        type=Path,
        help="an interactions file (.csv/.jsonl: user_id, item_id, timestamp): rank for each user",
    )
    rank.add_argument("--k", type=int, default=10, help="items per user (default 10)")
    rank.add_argument("--format", choices=("table", "json"), default="table")
    rank.add_argument(
        "--include-seen", action="store_true", help="keep history items in the ranking"
    )
    rank.set_defaults(run=run_rank)

    serve = subparsers.add_parser(
        "serve",
        help="serve rankings over HTTP (POST /rank, GET /health, GET /model, POST /reload)",
        description=(
            "Serve this site's rankings with FastAPI. The server listens once the model and the "
            "item index are ready; POST /reload (or --watch) loads a new adapter in the "
            "background and swaps it in atomically."
        ),
    )
    _add_model_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    serve.add_argument(
        "--port", type=_port, default=8000, help="0-65535; default 8000; 0 picks a free port"
    )
    serve.add_argument(
        "--watch",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="reload when the adapter folder or items file changes, checked every SECONDS (0 = off)",
    )
    serve.add_argument(
        "--max-batch", type=int, default=64, help="most requests ranked in one device call"
    )
    serve.add_argument(
        "--admin-token-file",
        type=Path,
        help="a file holding the token that /reload and /openapi.json require "
        "('Authorization: Bearer TOKEN'); or set FEDXREC_ADMIN_TOKEN. Without one they are off",
    )
    serve.set_defaults(run=run_serve)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--adapter", type=Path, required=True, help="the global adapter folder (peft format)"
    )
    parser.add_argument(
        "--items", type=Path, required=True, help="the catalogue: items.csv or items.jsonl"
    )
    parser.add_argument(
        "--encoder",
        default="",
        help="base encoder: a local folder or HF name (default: the installed all-MiniLM-L6-v2)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="auto", help="auto = fp16 on CUDA, fp32 on CPU"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where item vectors are cached (default: $FEDXREC_CACHE_DIR or ~/.cache/fedxrec)",
    )
    parser.add_argument("--no-cache", action="store_true", help="encode every item, cache nothing")
    parser.add_argument(
        "--interactions",
        type=Path,
        help="the site's interactions file for the hybrid ranking (default: the interactions "
        "file beside --items, if any)",
    )
    parser.add_argument(
        "--text-only",
        action="store_true",
        help="rank with the model alone, without the site's own collaborative signals",
    )
    parser.add_argument(
        "--local-epsilon",
        type=float,
        default=0.0,
        help="make the site's own counts user-level DP with this ε (a budget of the site's own, "
        "separate from the federation's; δ = min(1e-5, 0.1/users)); 0 = exact counts (default)",
    )
    parser.add_argument(
        "--local-max-items",
        type=int,
        default=DEFAULT_MAX_ITEMS,
        help="with --local-epsilon: distinct items counted per user, their most recent "
        f"(default {DEFAULT_MAX_ITEMS})",
    )
    parser.add_argument(
        "--count-ledger",
        type=Path,
        default=None,
        help="with --local-epsilon: the file that records every release of the site's DP "
        "counts (default $FEDXREC_COUNT_LEDGER or ~/.local/state/fedxrec/count_releases.json); "
        "replicas on several machines should share one",
    )
    parser.add_argument(
        "--new-count-release",
        action="store_true",
        help="with --local-epsilon: allow drawing counts the ledger says were released before "
        "(another release: the ε of all releases is reported)",
    )
    parser.add_argument(
        "--candidates",
        choices=CANDIDATE_KINDS,
        default="auto",
        help="full = score the whole catalogue per request (exact); hnsw / flat = two-stage: "
        "the nearest items to the user in a FAISS index (hnsw: approximate, for millions of "
        "items; flat: exact), the history's ItemKNN neighbours and the site's popular items, "
        "then the fused score on those only; auto (default) = full up to "
        f"{FULL_MAX_ITEMS:,} items, hnsw beyond. The index is cached beside the item vectors",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0 = torch's default: one per core)",
    )


def _load(args: argparse.Namespace, *, progress: bool) -> SiteScorer:
    import torch

    from clients.scorer.count_releases import CountReleases, default_count_ledger
    from clients.scorer.model import load_site_scorer

    if args.threads < 0:
        raise ValueError(f"--threads {args.threads}: use 0 (torch's default) or more")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (args.local_epsilon >= 0 and math.isfinite(args.local_epsilon)):
        raise ValueError(f"--local-epsilon {args.local_epsilon}: give an ε > 0, or 0 for exact")
    if args.local_max_items < 1:
        raise ValueError(f"--local-max-items {args.local_max_items}: count at least 1 item")
    if (args.count_ledger or args.new_count_release) and not args.local_epsilon:
        raise ValueError("--count-ledger and --new-count-release go with --local-epsilon")
    if args.local_epsilon and args.text_only:
        raise ValueError("--local-epsilon makes the site's counts DP; --text-only uses none")
    scorer = load_site_scorer(
        args.adapter,
        args.items,
        encoder=args.encoder,
        device=args.device,
        precision=args.precision,
        cache_dir="" if args.no_cache else args.cache_dir,
        progress=progress,
        interactions=args.interactions,
        text_only=args.text_only,
        local_epsilon=args.local_epsilon,
        local_max_items=args.local_max_items,
        count_releases=CountReleases(
            args.count_ledger or default_count_ledger(), allow_new=args.new_count_release
        )
        if args.local_epsilon
        else None,
        candidates=args.candidates,
    )
    if progress:
        print(f"fedxrec {args.command}: {scorer.cache_summary()}", file=sys.stderr, flush=True)
    return scorer


def run_rank(args: argparse.Namespace) -> int:
    from clients.scorer.rank_output import print_rank_table, rank_json
    from clients.scorer.ranking import Query, query_for_ids, recommend
    from shared.data import build_platform, read_interactions

    if args.k < 1:
        raise ValueError(f"--k {args.k} is out of range: ask for at least 1 item")
    if args.users is not None and not args.users.is_file():
        raise ValueError(f"--users {args.users}: file not found")
    scorer = _load(args, progress=True)
    index, exclude = scorer.index, not args.include_seen
    users: list[tuple[str | None, Query]]
    if args.history is not None:
        users = [
            (None, query_for_ids(index, args.history.split(","), k=args.k, exclude_seen=exclude))
        ]
    elif args.text is not None:
        if not args.text.strip():
            raise ValueError("--text is empty: give the user's history as text")
        users = [(None, Query(text=args.text, k=args.k, exclude_seen=exclude))]
    else:
        interactions = read_interactions(args.users, set(index.row_of))
        platform = build_platform("users", list(index.items), interactions, min_user_interactions=1)
        users = [
            (user, Query(history_rows=tuple(seq), k=args.k, exclude_seen=exclude))
            for user, seq in zip(platform.users, platform.sequences, strict=True)
        ]
    for user, query in users:
        if query.unknown_ids:
            shown = ", ".join(repr(i) for i in query.unknown_ids[:5])
            print(
                f"fedxrec rank: {user or 'the history'}: not in this catalogue, left out: {shown}",
                file=sys.stderr,
            )
        if query.new_user:
            print(
                f"fedxrec rank: {user or 'the history'}: no known item: a new user, ranked by "
                "the site's prior",
                file=sys.stderr,
            )
    ranked: list[list[Recommendation]] = []
    for start in range(0, len(users), USERS_PER_BATCH):
        part = [q for _, q in users[start : start + USERS_PER_BATCH]]
        ranked += recommend(
            scorer.model.rec, index, part, local=scorer.local, candidates=scorer.candidates
        )
    if args.format == "json":
        print(json.dumps(rank_json(scorer, users, ranked), indent=2))
    else:
        print_rank_table(scorer, users, ranked)
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from clients.scorer.http_api import bind, build_server, create_app
    from clients.scorer.service import ScorerService, watched_files

    if args.max_batch < 1:
        raise ValueError(f"--max-batch {args.max_batch}: must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    token = admin_token(args.admin_token_file)
    if args.host not in LOOPBACK:
        print(
            f"fedxrec serve: WARNING: listening on {args.host}, beyond this machine: anyone who "
            "can reach it can ask for rankings (admin endpoints need the token). Put it behind "
            "a TLS proxy and a firewall, or use --host 127.0.0.1",
            file=sys.stderr,
            flush=True,
        )
    # Take the port first (fails fast when it is in use) but listen only once the model is ready.
    sock = bind(args.host, args.port)
    scorer = _load(args, progress=True)
    service = ScorerService(
        partial(_load, args, progress=False),
        scorer,
        watch_paths=watched_files(
            args.adapter, args.items, scorer.local.interactions_file if scorer.local else None
        ),
        watch_interval_s=args.watch,
    )
    server = build_server(create_app(service, max_batch=args.max_batch, admin_token=token))
    host, port = sock.getsockname()[:2]
    print(
        f"fedxrec serve: adapter {scorer.model.adapter_hash}, {len(scorer.index)} items, "
        f"{'hybrid' if scorer.local else 'text-only'} ranking, "
        f"{scorer.model.rec.device} {scorer.model.precision}; listening on http://{host}:{port}",
        file=sys.stderr,
        flush=True,
    )
    server.run(sockets=[sock])
    return 0


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def admin_token(path: Path | None) -> str | None:
    """The admin token from ``path`` or $FEDXREC_ADMIN_TOKEN (None: admin endpoints off)."""
    if path is not None:
        if not path.is_file():
            raise ValueError(f"--admin-token-file {path}: file not found")
        token = path.read_text(encoding="utf-8").strip()
    else:
        token = os.environ.get("FEDXREC_ADMIN_TOKEN", "").strip()
    if token and len(token) < 16:
        raise ValueError("the admin token is shorter than 16 characters: use a long random one")
    return token or None


def main(argv: list[str] | None = None) -> int:
    """`python -m clients.scorer.cli rank|serve ...`: the scorer alone, without importing the
    federation's subcommands (a site machine that only ranks needs no Flower or Opacus)."""
    parser = argparse.ArgumentParser(prog="python -m clients.scorer.cli")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return run_command(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
