"""The multi-site targets over several comparisons of one benchmark, each figure the mean over
all their runs (e.g. two training seeds on one partition and one on a second partition seed):

    python -m simulations.compare.pooled runs/sites-seed0 runs/sites-seed1

Each folder (or results.json) must come from the same partition with the same sites of the same
sizes and the same product ε. Only the methods every comparison ran are pooled (a ratio of a
method over three runs to one over two would compare different partitions); the others are
named. Per-user intervals are not pooled: the partitions put different users on a site.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

from simulations.compare.plan import METHODS
from simulations.compare.readme_table import unseen_label
from simulations.compare.records import Method, RunRecord, Summary, Target
from simulations.compare.records import mean_ndcg as stat
from simulations.compare.results import summarize_runs
from simulations.compare.site_targets import site_targets
from simulations.compare.targets import product_method, target_line

# the rows of the pooled table: what a reader compares per site
TABLE_METHODS = (
    Method.POPULARITY,
    Method.EASE,
    Method.LOCAL_ONLY,
    Method.FEDERATED_DP,
    Method.FEDERATED_DP_PERSONALIZED,
    Method.LOCAL_ONLY_LOCAL,
    Method.FEDERATED_DP_PERSONALIZED_LOCAL,
    Method.FEDERATED_UNSEEN,
)


@dataclasses.dataclass(frozen=True)
class Pooled:
    sources: list[str]
    partition: str
    users: dict[str, int]
    dropped: list[Method]  # methods some comparison did not run
    summary: Summary
    targets: list[Target]

    @property
    def runs(self) -> int:
        """Runs of the product over all sources."""
        return len(self.summary[product_method(self.summary)].seeds) if self.summary else 0


def read_results(path: Path) -> dict[str, Any]:
    """A comparison's results.json (``path`` is the file or its folder)."""
    file = path / "results.json" if path.is_dir() else path
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise ValueError(
            f"{file}: no such file (give a comparison's folder or its results.json)"
        ) from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not a results.json ({err})") from None


def pool(paths: list[Path]) -> Pooled:
    """The summary and the multi-site targets of every run in ``paths``' comparisons."""
    if not paths:
        raise ValueError("give at least one comparison folder")
    documents = [read_results(p) for p in paths]
    first = documents[0]
    partition = first["config"].get("data.partition", "genres")
    users = {n: int(p["users"]) for n, p in first["platforms"].items()}
    for path, doc in zip(paths, documents, strict=True):
        other = {n: int(p["users"]) for n, p in doc["platforms"].items()}
        if doc["config"].get("data.partition", "genres") != partition or other != users:
            raise ValueError(
                f"{path}: another benchmark ({doc['config'].get('data.partition')} with sites "
                f"{other}) than {paths[0]} ({partition} with {users}): pool only runs of one"
            )
        if doc["product_epsilon"] != first["product_epsilon"]:
            raise ValueError(f"{path}: product ε {doc['product_epsilon']} ≠ {paths[0]}'s")
    # a site's users differ between partitions: no per-user figure is pooled
    per_doc = [[RunRecord.from_json(r) for r in d["runs"]] for d in documents]
    everywhere = set.intersection(*({r.method for r in runs} for runs in per_doc))
    dropped = sorted({r.method for runs in per_doc for r in runs} - everywhere)
    runs = [
        dataclasses.replace(r, ranks={}) for rs in per_doc for r in rs if r.method in everywhere
    ]
    summary = summarize_runs(runs)
    targets = site_targets(summary, users, partition, float(first["product_epsilon"]))
    return Pooled([str(p) for p in paths], partition, users, dropped, summary, targets)


def pooled_table(pooled: Pooled) -> str:
    """Markdown: test NDCG@10 per site, the mean over the pooled runs (n = how many)."""
    names = list(pooled.users)
    header = ["method", *[f"{n} ({pooled.users[n]} users)" for n in names], "**mean**", "runs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in TABLE_METHODS:
        summary = pooled.summary.get(method)
        if summary is None:
            continue
        values = [stat(pooled.summary, method, n) for n in names]
        cells = ["–" if v is None else f"{v:.4f}" for v in values]
        shown = [v for v in values if v is not None]
        mean = f"**{math.fsum(shown) / len(shown):.4f}**" if len(shown) == len(names) else "–"
        label = METHODS[method].label.format(eps=summary.epsilon)
        if method == Method.FEDERATED_UNSEEN:
            label = unseen_label(
                next(n for n, v in zip(names, values, strict=True) if v is not None)
            )
        lines.append("| " + " | ".join([label, *cells, mean, str(len(summary.seeds))]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.compare.pooled",
        description="The multi-site targets over several comparisons of one benchmark "
        "(each figure the mean over all their runs), as markdown.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="comparison folders or results.json")
    args = parser.parse_args(argv)
    try:
        pooled = pool(args.paths)
    except ValueError as err:
        print(f"pooled: {err}", file=sys.stderr)
        return 2
    print(f"{pooled.partition}: {', '.join(pooled.sources)} ({pooled.runs} runs of the product)")
    print()
    print(pooled_table(pooled))
    if pooled.dropped:
        print(
            f"\nnot in every comparison, not pooled: {', '.join(m.value for m in pooled.dropped)}"
        )
    print()
    print("\n".join(target_line(t) for t in pooled.targets) or "(no multi-site targets)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
