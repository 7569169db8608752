"""The figures of `fedxrec compare`'s report.

Drawn with matplotlib's object API (``Figure``, no pyplot): saving a PNG needs no display and
this module never changes the process's matplotlib backend.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

# (round, mean, std) points of one line
Curve = list[tuple[int, float, float]]
# Methods often overlap exactly (same ε per round, or no visible change): a line style and marker
# per method keeps each one visible under the others.
STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1)), "v"), ((0, (1, 3)), "x")]


def _save(fig: Figure, path: Path, *, tight: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _grid(count: int) -> tuple[Figure, list[Axes]]:
    cols = min(count, 3)
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(4.6 * cols, 3.4 * rows + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def plot_rounds(
    curves: dict[str, dict[str, Curve]], path: Path, *, ylabel: str, title: str
) -> Path:
    """One panel per platform, one line per method: ``curves[method][platform]``."""
    platforms = sorted({p for per in curves.values() for p in per})
    fig, axes = _grid(max(len(platforms), 1))
    handles = {}
    for ax, platform in zip(axes, platforms, strict=False):
        for n, (method, per) in enumerate(curves.items()):
            points = per.get(platform)
            if not points:
                continue
            xs = [r for r, _, _ in points]
            ys = [m for _, m, _ in points]
            sd = [s for _, _, s in points]
            style, marker = STYLES[n % len(STYLES)]
            (line,) = ax.plot(
                xs, ys, linestyle=style, marker=marker, markersize=4, color=f"C{n}", label=method
            )
            handles[method] = line
            if any(sd):
                lo = [y - s for y, s in zip(ys, sd, strict=True)]
                hi = [y + s for y, s in zip(ys, sd, strict=True)]
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
        ax.set_title(platform)
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.legend(
        list(handles.values()), list(handles), loc="lower center", ncol=len(handles), fontsize=8
    )
    return _save(fig, path, tight=False)


def plot_privacy_utility(
    points: dict[str, list[tuple[float, float, float]]],
    references: dict[str, float],
    path: Path,
    *,
    title: str,
) -> Path:
    """NDCG@10 against ε (log axis; ε = ∞, no DP, drawn at the right edge).

    ``points[line] = [(ε, mean, std)]`` (one line per platform and one for the mean);
    ``references[label] = value`` are drawn as horizontal lines (centralized, local-only...).
    """
    finite = sorted({e for pts in points.values() for e, _, _ in pts if math.isfinite(e)})
    has_inf = any(not math.isfinite(e) for pts in points.values() for e, _, _ in pts)
    inf_x = (finite[-1] * 4 if finite else 1.0) if has_inf else None

    def x_of(eps: float) -> float:
        return eps if math.isfinite(eps) else float(inf_x)

    fig = Figure(figsize=(8.4, 4.2))
    ax = fig.subplots()
    for name, pts in points.items():
        pts = sorted(pts, key=lambda p: x_of(p[0]))
        xs = [x_of(e) for e, _, _ in pts]
        ys = [m for _, m, _ in pts]
        errs = [s for _, _, s in pts]
        is_mean = name == "mean"
        ax.errorbar(
            xs,
            ys,
            yerr=errs if any(errs) else None,
            marker="o",
            capsize=3,
            linewidth=2.2 if is_mean else 1.0,
            alpha=1.0 if is_mean else 0.6,
            label=f"federated: {name}",
        )
    for n, (label, value) in enumerate(references.items()):
        ax.axhline(value, linestyle="--", linewidth=1, color=f"C{n + 5}", label=label)
    ax.set_xscale("log")
    ticks = [*finite, *([inf_x] if inf_x else [])]
    if ticks:
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{e:g}" for e in finite] + (["∞ (no DP)"] if inf_x else []))
        ax.minorticks_off()
    ax.set_xlabel("ε per platform (user-level, whole federation)")
    ax.set_ylabel("test NDCG@10")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_methods(
    values: dict[str, dict[str, tuple[float, float]]], path: Path, *, title: str
) -> Path:
    """Grouped bars: ``values[method][platform] = (mean, std)``, platforms on the x axis."""
    methods = list(values)
    groups = list(dict.fromkeys(p for per in values.values() for p in per))
    width = 0.8 / max(len(methods), 1)
    fig = Figure(figsize=(max(7.5, 1.6 * len(groups) + 3.5), 4.2))
    ax = fig.subplots()
    for n, method in enumerate(methods):
        xs = [g + (n - (len(methods) - 1) / 2) * width for g in range(len(groups))]
        ys = [values[method].get(p, (math.nan, 0.0))[0] for p in groups]
        errs = [values[method].get(p, (math.nan, 0.0))[1] for p in groups]
        ax.bar(xs, ys, width, yerr=errs if any(errs) else None, capsize=2, label=method)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_ylabel("test NDCG@10")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
