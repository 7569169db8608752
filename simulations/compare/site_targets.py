"""The targets of the multi-site benchmarks (``data.partition`` sites or domains): does joining
the federation pay, above all for the small sites?

A site is small with at most ``SMALL_SITE`` users. Each target is met or missed with the numbers
that decide it; None where a method it needs did not run.
"""

from __future__ import annotations

import math
from functools import partial

from simulations.compare.plan import METHODS, eps_text
from simulations.compare.records import Method, Summary, Target
from simulations.compare.records import mean_ndcg as stat
from simulations.compare.targets import add_target, compare_per_platform, product_method

M = Method
SMALL_SITE = 500  # users
# partition -> (product over local-only on the small sites' mean, on the largest site)
PRODUCT_OVER_LOCAL = {"sites": (1.5, 1.05), "domains": (1.3, None)}
FINAL_OVER_LOCAL_FINAL = 1.1  # small sites' mean: the final ranking with vs without joining
FINAL_OVER_EASE = 1.05  # mean over sites
FINAL_OVER_BEST_PART = 0.98  # every site: the fusion against the best thing it fuses
UNSEEN_OVER_ZERO_SHOT = 2.0


def _ratio(summary: Summary, ours: Method, other: Method, names: list[str]) -> tuple | None:
    a = [stat(summary, ours, n) for n in names]
    b = [stat(summary, other, n) for n in names]
    if not names or any(v is None for v in a + b):
        return None
    mean_a, mean_b = math.fsum(a) / len(a), math.fsum(b) / len(b)  # type: ignore[arg-type]
    return mean_a, mean_b, (mean_a / mean_b if mean_b else math.inf)


def _ratio_target(
    add, summary: Summary, ours: Method, other: Method, names: list[str], at_least: float, what: str
) -> None:
    found = _ratio(summary, ours, other, names)
    label = f"{METHODS[ours].label} ≥ {at_least:g}× {METHODS[other].label} on {what}"
    if found is None:
        add(label, None, "not computable")
        return
    a, b, r = found
    add(label, r >= at_least, f"{', '.join(names)}: {a:.4f} vs {b:.4f} = {r:.2f}×")


def site_targets(
    summary: Summary, users: dict[str, int], partition: str, product_eps: float
) -> list[Target]:
    """The multi-site targets of ``partition``; [] for a partition that has none."""
    if partition not in PRODUCT_OVER_LOCAL:
        return []
    eps = eps_text(product_eps)
    product = product_method(summary)
    final, local_final = product.with_local, M.LOCAL_ONLY_LOCAL
    trained = [n for n in users if stat(summary, M.LOCAL_ONLY, n) is not None]
    small = [n for n in trained if users[n] <= SMALL_SITE]
    out: list[Target] = []
    add = partial(add_target, out)
    on_small, on_largest = PRODUCT_OVER_LOCAL[partition]
    what = f"the mean of the sites with ≤ {SMALL_SITE} users (ε={eps})"
    _ratio_target(add, summary, product, M.LOCAL_ONLY, small, on_small, what)
    if on_largest is not None and trained:
        largest = max(trained, key=lambda n: users[n])
        _ratio_target(
            add, summary, product, M.LOCAL_ONLY, [largest], on_largest, "the largest site"
        )
    if partition == "sites":
        _ratio_target(add, summary, final, local_final, small, FINAL_OVER_LOCAL_FINAL, what)
        _ratio_target(add, summary, final, M.EASE, trained, FINAL_OVER_EASE, "the mean over sites")
        add(*_best_part_target(summary, trained, product, final))
    # the federation without one site, ranked on that site
    unseen = [n for n in users if stat(summary, M.FEDERATED_UNSEEN, n) is not None]
    if unseen:
        site = unseen[0]
        met, detail = compare_per_platform(
            summary, [site], M.FEDERATED_UNSEEN, M.POPULARITY, strict=False
        )
        add(f"the global model on a site it never saw ({site}) ≥ Popularity", met, detail)
        if partition == "sites":
            _ratio_target(
                add,
                summary,
                M.FEDERATED_UNSEEN,
                M.ZERO_SHOT,
                [site],
                UNSEEN_OVER_ZERO_SHOT,
                "the site it never saw",
            )
    return out


def _best_part_target(
    summary: Summary, names: list[str], model: Method, final: Method
) -> tuple[str, bool | None, str]:
    """Every site's final ranking against the best of what it fuses (the model and the site's
    own Popularity, ItemKNN and EASE)."""
    label = (
        f"{METHODS[final].label} ≥ {FINAL_OVER_BEST_PART:g}× the best of its own components "
        "on every site"
    )
    parts = (model, M.POPULARITY, M.ITEMKNN, M.EASE)
    details, verdicts = [], []
    for n in names:
        ours = stat(summary, final, n)
        known = {p: v for p in parts if (v := stat(summary, p, n)) is not None}
        if ours is None or not known:
            continue
        best = max(known, key=lambda p: known[p])
        ok = ours >= FINAL_OVER_BEST_PART * known[best]
        verdicts.append(ok)
        details.append(
            f"{n}: {ours:.4f} vs {METHODS[best].label} {known[best]:.4f}"
            + ("" if ok else " (missed)")
        )
    if not verdicts:
        return label, None, "not computable"
    return label, all(verdicts), "; ".join(details)
