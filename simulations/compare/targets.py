"""The targets a comparison checks: each met or missed, with the numbers that decide it."""

from __future__ import annotations

from functools import partial
from typing import Any

from simulations.compare.plan import HYBRID_SUFFIX, METHODS, eps_text

PRODUCT_MEAN_TARGET = 0.09
HYBRID_OVER_ITEMKNN = 1.05
MODEL_OVER_ITEMKNN = 0.9


def stat(summary: dict[str, Any], method: str, platform: str | None, slice_name: str = "all"):
    """Mean NDCG@10 of ``method`` on ``platform`` (None = platform mean), or None if not run."""
    entry = summary.get(method)
    if entry is None:
        return None
    cell = entry["mean"] if platform is None else entry["platforms"].get(platform, {})
    value = cell.get(slice_name, {}).get("ndcg@10")
    return None if value is None else value["mean"]


def _add(targets: list[dict[str, Any]], target: str, met: bool | None, detail: str) -> None:
    targets.append({"target": target, "met": met, "detail": detail})


def product_method(summary: dict[str, Any]) -> str:
    """The product's final ranking: the personalised model when the sites personalise."""
    return "federated_dp_personalized" if "federated_dp_personalized" in summary else "federated_dp"


def _compare_per_platform(
    summary: dict[str, Any], names: list[str], ours: str, other: str, *, strict: bool
) -> tuple[bool | None, str]:
    pairs = {n: (stat(summary, ours, n), stat(summary, other, n)) for n in names}
    known = {n: (a, b) for n, (a, b) in pairs.items() if a is not None and b is not None}
    if not known:
        return None, "not computable"
    ok = {n: (a > b if strict else a >= b) for n, (a, b) in known.items()}
    detail = "; ".join(
        f"{n}: {a:.4f} vs {b:.4f}" + ("" if ok[n] else " (missed)") for n, (a, b) in known.items()
    )
    return all(ok.values()), detail


def check_targets(
    summary: dict[str, Any], names: list[str], product_eps: float
) -> list[dict[str, Any]]:
    """The targets for the product at its ε, each met or missed with its numbers.

    ``met`` is None where a method it needs did not run (e.g. a single platform).
    """
    eps = eps_text(product_eps)
    product = product_method(summary)
    label = METHODS[product].label
    targets: list[dict[str, Any]] = []
    add = partial(_add, targets)

    met, detail = _compare_per_platform(summary, names, product, "popularity", strict=False)
    add(f"{label} (ε={eps}) ≥ Popularity on every platform (NDCG@10)", met, detail)
    mean = stat(summary, product, None)
    add(
        f"{label} (ε={eps}) platform-mean NDCG@10 ≥ {PRODUCT_MEAN_TARGET}",
        None if mean is None else mean >= PRODUCT_MEAN_TARGET,
        "not computable" if mean is None else f"{mean:.4f}",
    )
    met, detail = _compare_per_platform(summary, names, product, "local_only", strict=True)
    add(f"{label} (ε={eps}) beats local-only DP on every platform (NDCG@10)", met, detail)
    met, detail = _compare_per_platform(summary, names, product, "zero_shot", strict=True)
    add(f"{label} (ε={eps}) beats the zero-shot encoder on every platform (NDCG@10)", met, detail)
    central, fed = stat(summary, "centralized", None), stat(summary, "federated_dp", None)
    add(
        "the non-private centralized reference ≥ federated DP (platform mean NDCG@10)",
        None if central is None or fed is None else central >= fed,
        "not computable" if central is None or fed is None else f"{central:.4f} vs {fed:.4f}",
    )
    targets += hybrid_targets(summary, names, product, eps)
    unseen = [
        n
        for n in names
        if stat(summary, "federated_unseen", n) is not None
        and stat(summary, "zero_shot", n) is not None
    ]
    a = stat(summary, "federated_unseen", unseen[0]) if unseen else None
    b = stat(summary, "zero_shot", unseen[0]) if unseen else None
    add(
        "a platform left out of the federation, ranked with its model, beats zero-shot",
        None if a is None or b is None else a > b,
        "not computable" if a is None or b is None else f"{unseen[0]}: {a:.4f} vs {b:.4f}",
    )
    return targets


def hybrid_targets(
    summary: dict[str, Any], names: list[str], product: str, eps: str
) -> list[dict[str, Any]]:
    """The site's final ranking (the product's model + the site's own signals) against counting."""
    hybrid = product + HYBRID_SUFFIX
    if hybrid not in summary:
        return []
    label = METHODS[hybrid].label
    out: list[dict[str, Any]] = []
    add = partial(_add, out)

    met, detail = _compare_per_platform(summary, names, hybrid, "itemknn", strict=False)
    add(f"{label} (ε={eps}) ≥ ItemKNN on every platform (NDCG@10)", met, detail)
    ours, knn = stat(summary, hybrid, None), stat(summary, "itemknn", None)
    add(
        f"{label} (ε={eps}) ≥ {HYBRID_OVER_ITEMKNN}× ItemKNN (platform mean NDCG@10)",
        None if ours is None or not knn else ours >= HYBRID_OVER_ITEMKNN * knn,
        "not computable"
        if ours is None or not knn
        else f"{ours:.4f} vs {knn:.4f} = {ours / knn:.3f}×",
    )
    zero = stat(summary, "zero_shot" + HYBRID_SUFFIX, None)
    add(
        f"{label} beats the zero-shot encoder + local signals (platform mean NDCG@10: the "
        "federation's own contribution to the final ranking)",
        None if ours is None or zero is None else ours > zero,
        "not computable" if ours is None or zero is None else f"{ours:.4f} vs {zero:.4f}",
    )
    cold, alone = (
        stat(summary, hybrid, None, "cold_items"),
        stat(summary, product, None, "cold_items"),
    )
    knn_cold = stat(summary, "itemknn", None, "cold_items")
    add(
        f"cold items: {label} ≥ the model alone, and > 0 where ItemKNN scores "
        f"{'0' if not knn_cold else f'{knn_cold:.4f}'} (platform mean NDCG@10)",
        None if cold is None or alone is None else cold >= alone and cold > 0,
        "no cold item" if cold is None or alone is None else f"{cold:.4f} vs {alone:.4f}",
    )
    cold_users = stat(summary, hybrid, None, "cold_users")
    knn_users = stat(summary, "itemknn", None, "cold_users")
    add(
        f"cold users: {label} ≥ ItemKNN (platform mean NDCG@10)",
        None if cold_users is None or knn_users is None else cold_users >= knn_users,
        "no cold user"
        if cold_users is None or knn_users is None
        else f"{cold_users:.4f} vs {knn_users:.4f}",
    )
    knn_mean = stat(summary, "itemknn", None)
    # "the model alone": the product's model (federated, then personalised under the same ε),
    # and the global federated model before personalisation, both reported
    models = [(product, f"{METHODS[product].label} alone")]
    if product != "federated_dp":
        models.append(("federated_dp", "the global federated DP model alone"))
    for method, name in models:
        mean = stat(summary, method, None)
        met, detail = _compare_per_platform(summary, names, method, "popularity", strict=False)
        add(f"{name} (ε={eps}) ≥ Popularity on every platform", met, detail)
        add(
            f"{name} (ε={eps}) ≥ {MODEL_OVER_ITEMKNN}× ItemKNN (platform mean)",
            None if mean is None or not knn_mean else mean >= MODEL_OVER_ITEMKNN * knn_mean,
            "not computable"
            if mean is None or not knn_mean
            else f"{mean:.4f} vs {knn_mean:.4f} = {mean / knn_mean:.3f}×",
        )
    return out
