"""README's results table from a comparison's results.json, so the published table is generated.

    python -m simulations.compare.readme_table docs/results/ml-100k/results.json

One row per method in summary order: test NDCG@10 per platform and the platform mean (± the
standard deviation over seeds where there are several), Recall@10, and the cold-user and
cold-item slices; the unseen platform, when there is one, as the last row. ``--intervals`` adds
each platform's 95 % bootstrap interval over its users (multi-site benchmarks, where a small
site's figure is noisy) and its user count to the header.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from simulations.compare.plan import METHODS
from simulations.compare.records import INTERVAL_KEY, Method

# The unseen platform has its own row; the ε sweep has the privacy–utility table.
_OWN_ROWS = (Method.FEDERATED_UNSEEN, Method.FEDERATED_EPS)


def unseen_label(site: str) -> str:
    """The row of the federation that never saw ``site``, ranking it."""
    return f"Federated without {site} (DP), ranking {site}"


def _cell(stat: dict[str, Any] | None) -> str:
    if not stat:
        return "–"
    if stat.get("n", 1) > 1:
        return f"{stat['mean']:.4f} ± {stat['std']:.4f}"
    return f"{stat['mean']:.4f}"


def _site_cell(cell: dict[str, Any], intervals: bool) -> str:
    text = _cell(cell.get("ndcg@10"))
    interval = cell.get(INTERVAL_KEY)
    if intervals and interval and text != "–":
        text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    return text


def readme_table(results: dict[str, Any], *, intervals: bool = False) -> str:
    """The markdown table of `results` (a results.json document)."""
    info = results["platforms"]
    platforms = [p["name"] if isinstance(p, dict) else p for p in info]
    columns = platforms
    if intervals and isinstance(info, dict):
        columns = [f"{p} ({info[p]['users']} users)" for p in platforms]
    header = ["method", *columns, "**mean**", "Recall@10 (mean)", "cold users", "cold items"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = [m for m in METHODS if m not in _OWN_ROWS] + [m for m in Method if m not in METHODS]
    for method in order:
        summary = results["summary"].get(method.value)
        if summary is None or method in _OWN_ROWS:
            continue
        per_platform = summary.get("platforms", {})
        label = METHODS[method].label if method in METHODS else method.value
        mean = summary.get("mean", {})
        cells = [_site_cell(per_platform.get(p, {}).get("all", {}), intervals) for p in platforms]
        row = [
            label.format(eps=summary.get("epsilon")),
            *cells,
            f"**{_cell(mean.get('all', {}).get('ndcg@10'))}**",
            _cell(mean.get("all", {}).get("recall@10")),
            _cell(mean.get("cold_users", {}).get("ndcg@10")),
            _cell(mean.get("cold_items", {}).get("ndcg@10")),
        ]
        lines.append("| " + " | ".join(row) + " |")
    unseen = results.get("unseen_platform")
    if unseen:
        cell = unseen["methods"].get("federated_unseen", {})
        row = ["–"] * len(header)
        row[0] = unseen_label(unseen["platform"])
        if unseen["platform"] in platforms:
            row[1 + platforms.index(unseen["platform"])] = _site_cell(cell, intervals)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a comparison's results.json")
    parser.add_argument(
        "--intervals",
        action="store_true",
        help="each platform's 95 %% interval over its users, and its user count in the header",
    )
    args = parser.parse_args(argv)
    try:
        results = json.loads(args.results.read_text())
    except (OSError, json.JSONDecodeError) as error:
        print(f"error: cannot read {args.results}: {error}", file=sys.stderr)
        return 2
    print(readme_table(results, intervals=args.intervals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
