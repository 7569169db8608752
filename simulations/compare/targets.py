"""The targets a comparison checks: each met or missed, with the numbers that decide it."""

from __future__ import annotations

from functools import partial

from simulations.compare.plan import METHODS, eps_text
from simulations.compare.records import Method, Summary, Target
from simulations.compare.records import mean_ndcg as stat

M = Method

PRODUCT_MEAN_TARGET = 0.09
HYBRID_OVER_ITEMKNN = 1.05
MODEL_OVER_ITEMKNN = 0.9
NEW_OVER_MODEL = 0.9  # the new-item slice: the final ranking against the model alone
NEW_OVER_POPULARITY = 2.0  # and against Popularity (whose counts know no new item)


def target_line(target: Target) -> str:
    """A target as a markdown list item: met, missed or not computable, and its numbers."""
    state = {True: "**met**", False: "**missed**", None: "not computable"}[target.met]
    return f"- {state}: {target.target} — {target.detail}"


def add_target(targets: list[Target], target: str, met: bool | None, detail: str) -> None:
    targets.append(Target(target, met, detail))


def product_method(summary: Summary) -> Method:
    """The product's final ranking: the personalised model when the sites personalise."""
    return M.FEDERATED_DP_PERSONALIZED if M.FEDERATED_DP_PERSONALIZED in summary else M.FEDERATED_DP


def compare_per_platform(
    summary: Summary, names: list[str], ours: Method, other: Method, *, strict: bool
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


def check_targets(summary: Summary, names: list[str], product_eps: float) -> list[Target]:
    """The targets for the product at its ε, each met or missed with its numbers.

    ``met`` is None where a method it needs did not run (e.g. a single platform).
    """
    eps = eps_text(product_eps)
    product = product_method(summary)
    label = METHODS[product].label
    targets: list[Target] = []
    add = partial(add_target, targets)

    met, detail = compare_per_platform(summary, names, product, M.POPULARITY, strict=False)
    add(f"{label} (ε={eps}) ≥ Popularity on every platform (NDCG@10)", met, detail)
    mean = stat(summary, product, None)
    add(
        f"{label} (ε={eps}) platform-mean NDCG@10 ≥ {PRODUCT_MEAN_TARGET}",
        None if mean is None else mean >= PRODUCT_MEAN_TARGET,
        "not computable" if mean is None else f"{mean:.4f}",
    )
    met, detail = compare_per_platform(summary, names, product, M.LOCAL_ONLY, strict=True)
    add(f"{label} (ε={eps}) beats local-only DP on every platform (NDCG@10)", met, detail)
    met, detail = compare_per_platform(summary, names, product, M.ZERO_SHOT, strict=True)
    add(f"{label} (ε={eps}) beats the zero-shot encoder on every platform (NDCG@10)", met, detail)
    central, fed = stat(summary, M.CENTRALIZED, None), stat(summary, M.FEDERATED_DP, None)
    add(
        "the non-private centralized reference ≥ federated DP (platform mean NDCG@10)",
        None if central is None or fed is None else central >= fed,
        "not computable" if central is None or fed is None else f"{central:.4f} vs {fed:.4f}",
    )
    targets += hybrid_targets(summary, names, product, eps)
    unseen = [
        n
        for n in names
        if stat(summary, M.FEDERATED_UNSEEN, n) is not None
        and stat(summary, M.ZERO_SHOT, n) is not None
    ]
    a = stat(summary, M.FEDERATED_UNSEEN, unseen[0]) if unseen else None
    b = stat(summary, M.ZERO_SHOT, unseen[0]) if unseen else None
    add(
        "a platform left out of the federation, ranked with its model, beats zero-shot",
        None if a is None or b is None else a > b,
        "not computable" if a is None or b is None else f"{unseen[0]}: {a:.4f} vs {b:.4f}",
    )
    return targets


def hybrid_targets(summary: Summary, names: list[str], product: Method, eps: str) -> list[Target]:
    """The site's final ranking (the product's model + the site's own signals) against counting."""
    hybrid = product.with_local
    if hybrid not in summary:
        return []
    label = METHODS[hybrid].label
    out: list[Target] = []
    add = partial(add_target, out)

    met, detail = compare_per_platform(summary, names, hybrid, M.ITEMKNN, strict=False)
    add(f"{label} (ε={eps}) ≥ ItemKNN on every platform (NDCG@10)", met, detail)
    ours, knn = stat(summary, hybrid, None), stat(summary, M.ITEMKNN, None)
    add(
        f"{label} (ε={eps}) ≥ {HYBRID_OVER_ITEMKNN}× ItemKNN (platform mean NDCG@10)",
        None if ours is None or not knn else ours >= HYBRID_OVER_ITEMKNN * knn,
        "not computable"
        if ours is None or not knn
        else f"{ours:.4f} vs {knn:.4f} = {ours / knn:.3f}×",
    )
    zero = stat(summary, M.ZERO_SHOT_LOCAL, None)
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
    knn_cold = stat(summary, M.ITEMKNN, None, "cold_items")
    add(
        f"cold items: {label} ≥ the model alone, and > 0 where ItemKNN scores "
        f"{'0' if not knn_cold else f'{knn_cold:.4f}'} (platform mean NDCG@10)",
        None if cold is None or alone is None else cold >= alone and cold > 0,
        "no cold item" if cold is None or alone is None else f"{cold:.4f} vs {alone:.4f}",
    )
    new, model_new, pop_new = (
        stat(summary, m, None, "new_items") for m in (hybrid, product, M.POPULARITY)
    )
    add(
        f"new items: {label} ≥ {NEW_OVER_MODEL}× the model alone and ≥ {NEW_OVER_POPULARITY}× "
        "Popularity (platform mean NDCG@10, counts from before the cut-off)",
        None
        if new is None or model_new is None or pop_new is None
        else new >= NEW_OVER_MODEL * model_new and new >= NEW_OVER_POPULARITY * pop_new,
        "no new item"
        if new is None or model_new is None or pop_new is None
        else f"{new:.4f} vs the model's {model_new:.4f} and Popularity's {pop_new:.4f}",
    )
    cold_users = stat(summary, hybrid, None, "cold_users")
    knn_users = stat(summary, M.ITEMKNN, None, "cold_users")
    add(
        f"cold users: {label} ≥ ItemKNN (platform mean NDCG@10)",
        None if cold_users is None or knn_users is None else cold_users >= knn_users,
        "no cold user"
        if cold_users is None or knn_users is None
        else f"{cold_users:.4f} vs {knn_users:.4f}",
    )
    knn_mean = stat(summary, M.ITEMKNN, None)
    # "the model alone": the product's model (federated, then personalised under the same ε),
    # and the global federated model before personalisation, both reported
    models = [(product, f"{METHODS[product].label} alone")]
    if product != M.FEDERATED_DP:
        models.append((M.FEDERATED_DP, "the global federated DP model alone"))
    for method, name in models:
        mean = stat(summary, method, None)
        met, detail = compare_per_platform(summary, names, method, M.POPULARITY, strict=False)
        add(f"{name} (ε={eps}) ≥ Popularity on every platform", met, detail)
        add(
            f"{name} (ε={eps}) ≥ {MODEL_OVER_ITEMKNN}× ItemKNN (platform mean)",
            None if mean is None or not knn_mean else mean >= MODEL_OVER_ITEMKNN * knn_mean,
            "not computable"
            if mean is None or not knn_mean
            else f"{mean:.4f} vs {knn_mean:.4f} = {mean / knn_mean:.3f}×",
        )
    return out
