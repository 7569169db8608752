"""Human-readable results of a federation: the console table and ``report.md``."""

from __future__ import annotations

import math
import os
import subprocess
import time
from pathlib import Path

from server.run_log import FederationLog
from shared.metrics import METRIC_NAMES


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{value:.4f}"


MODELS = (
    ("popularity", "Popularity"),
    ("itemknn", "ItemKNN"),
    ("zero_shot", "zero-shot"),
    ("federated", "federated"),
    ("personalized", "federated + personalised"),
)


def results_table(
    log: FederationLog, baselines: dict[str, dict[str, dict[str, float]]] | None = None
) -> list[list[str]]:
    """Rows: platform, model, test metrics, ε spent. ``baselines``: method → platform → metrics
    (Popularity and ItemKNN on the same split), shown first so the model is read against them."""
    rows = [["platform", "model", *METRIC_NAMES, "ε spent"]]
    spent = {
        "federated": log.epsilon_spent(personalized=False),
        "personalized": log.epsilon_spent(),
    }
    results = {**(baselines or {}), **log.final}
    for name in sorted(log.platforms):
        for method, label in MODELS:
            if name not in results.get(method, {}):
                continue
            m = results[method][name]
            eps = _fmt(spent[method].get(name)) if method in spent else "0"
            rows.append([name, label, *(_fmt(m.get(k)) for k in METRIC_NAMES), eps])
    return rows


def format_table(rows: list[list[str]], markdown: bool = False) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        lines.append(("| " + " | ".join(cells) + " |") if markdown else "  ".join(cells))
        if n == 0:
            sep = ["-" * w for w in widths]
            lines.append(("|-" + "-|-".join(sep) + "-|") if markdown else "  ".join(sep))
    return "\n".join(lines)


def code_commit() -> str:
    """The source commit; FEDXREC_COMMIT names it where the tree has no .git (an image, a copy)."""
    if os.environ.get("FEDXREC_COMMIT"):
        return os.environ["FEDXREC_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=False,
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def render_report(
    log: FederationLog,
    seconds: float | None = None,
    baselines: dict[str, dict[str, dict[str, float]]] | None = None,
) -> str:
    cfg = log.config
    eps_budget = cfg["privacy.epsilon"] if cfg["privacy.enabled"] else float("inf")
    lines = [
        "# fedxrec federation report",
        "",
        f"- Data set: **{log.dataset}**; platforms: "
        + ", ".join(
            f"{n} ({p['users']} users, {p['items']} items)"
            for n, p in sorted(log.platforms.items())
        ),
        f"- Split: {log.split}; full ranking over each platform's catalogue, history excluded.",
        f"- Seeds: data {cfg['data.seed']}, training {cfg['train.seed']}, adapter {cfg['federation.seed']}.",
        f"- Privacy: user-level DP per platform, budget ε = {eps_budget}, "
        f"δ = {_deltas(log)}, accountant {cfg['privacy.accountant']}, clip {cfg['privacy.max_grad_norm']}."
        if cfg["privacy.enabled"]
        else "- Privacy: **off** (no DP-SGD).",
        f"- Rounds: {log.completed_rounds} of {cfg['federation.rounds']}, {cfg['train.steps']} DP "
        f"steps each ({cfg['train.lora_steps']} with LoRA) at an expected batch of "
        f"{cfg['train.batch_size']} users; sequence head over the last {cfg['model.history_items']} "
        f"items; LoRA r={cfg['model.lora_r']} on {cfg['model.target_modules']}; run {log.run_id}; "
        f"commit {code_commit()}; "
        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime())}"
        + (f"; {seconds / 60:.1f} min" if seconds else "")
        + ".",
        "",
        "## Test results per platform",
        "",
        "Popularity and ItemKNN count the platform's own training interactions; zero-shot is the "
        "untuned encoder and head (round 0); federated is the global model; personalised is the "
        "global model fine-tuned by each site on its own users (when `train.personalize_steps` > 0).",
        "",
        format_table(results_table(log, baselines), markdown=True),
        "",
        "## Validation NDCG@10 and ε per round",
        "",
    ]
    names = sorted(log.platforms)
    rows = [["round", *[f"{n} NDCG@10" for n in names], *[f"{n} ε" for n in names]]]
    for entry in log.rounds:
        p = entry["platforms"]
        rows.append(
            [
                str(entry["round"]),
                *[_fmt(p.get(n, {}).get("validation", {}).get("ndcg@10")) for n in names],
                *[
                    "refused"
                    if n in entry.get("refused", {})
                    else _fmt(p.get(n, {}).get("epsilon", 0.0))
                    for n in names
                ],
            ]
        )
    lines += [format_table(rows, markdown=True), ""]
    refusals = [(e["round"], n, r) for e in log.rounds for n, r in e.get("refused", {}).items()]
    if refusals:
        lines += ["## Refusals", ""] + [f"- round {r}, {n}: {why}" for r, n, why in refusals] + [""]
    lines += [
        "Reported alongside the DP adapters, and not covered by DP: each platform's user and item "
        "counts, its mean training loss and its validation/test metrics.",
        "",
    ]
    return "\n".join(lines)


def _deltas(log: FederationLog) -> str:
    deltas = {n: m["delta"] for e in log.rounds for n, m in e["platforms"].items() if "delta" in m}
    return ", ".join(f"{n} {d:.1e}" for n, d in sorted(deltas.items())) or "1/users"
