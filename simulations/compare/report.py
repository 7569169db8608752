"""A comparison's report.md: tables, targets, what the numbers show, and how to read them."""

from __future__ import annotations

from shared.metrics import METRIC_NAMES
from simulations.compare.plan import METHODS, TRAINED_METHODS, eps_text
from simulations.compare.records import ComparisonResults, Method, SliceSummary, Stat
from simulations.compare.records import mean_ndcg as stat
from simulations.compare.targets import product_method, target_line
from simulations.report import format_table

M = Method


def _cell(stat: Stat | None) -> str:
    if not stat:
        return "—"
    if stat.n > 1:
        return f"{stat.mean:.4f} ± {stat.std:.4f}"
    return f"{stat.mean:.4f}"


def _privacy_text(method: Method, results: ComparisonResults) -> str:
    return METHODS[method].privacy.format(eps=eps_text(results.product_epsilon))


def method_rows(results: ComparisonResults, platform: str | None, slice_name: str = "all"):
    rows = [["method", "trained on", "privacy", *METRIC_NAMES]]
    for method, spec in METHODS.items():
        entry = results.summary.get(method)
        if method == M.FEDERATED_EPS or entry is None:
            continue
        if platform is None and method == M.FEDERATED_UNSEEN:  # one platform: its own section
            continue
        if platform is not None and platform not in entry.platforms:
            continue
        rows.append(
            [spec.label, spec.trained_on, _privacy_text(method, results)]
            + [_cell(entry.stat(platform, slice_name, k)) for k in METRIC_NAMES]
        )
    return rows


def _interval(cell: SliceSummary) -> str:
    return "—" if cell.interval is None else f"[{cell.interval[0]:.4f}, {cell.interval[1]:.4f}]"


def _interval_cell(cell: SliceSummary | None) -> str:
    if cell is None or not cell.users:
        return "—"
    text = _cell(cell.metrics.get("ndcg@10"))
    return text if cell.interval is None else f"{text} {_interval(cell)}"


def _slice_rows(results: ComparisonResults, slice_name: str) -> list[list[str]]:
    """NDCG@10, a platform a column (with its users); on "all", each cell's 95 % interval."""
    names = results.names
    if slice_name == "all":
        counts = {n: results.platforms[n].users for n in names}
    else:
        counts = {n: len(results.platforms[n].slices.get(slice_name, [])) for n in names}
    rows = [["method", *[f"{n} ({counts[n]} users)" for n in names], "platform mean"]]
    for method, spec in METHODS.items():
        entry = results.summary.get(method)
        if method in (M.FEDERATED_EPS, M.FEDERATED_UNSEEN) or entry is None:
            continue
        if slice_name == "all":
            cells = [_interval_cell(entry.platforms.get(n, {}).get("all")) for n in names]
        else:
            cells = [_cell(entry.stat(n, slice_name)) for n in names]
        rows.append([spec.label, *cells, _cell(entry.stat(None, slice_name))])
    return rows


def render_report(results: ComparisonResults, plots: dict[str, str]) -> str:
    names = results.names
    eps = eps_text(results.product_epsilon)
    machine = results.machine
    platforms_text = ", ".join(
        f"{n} ({p.users} users, {p.items} items, {p.interactions} interactions)"
        for n, p in results.platforms.items()
    )
    deltas = ", ".join(f"{n} {d:.1e}" for n, d in results.delta.items()) or "—"
    cfg = results.config
    privacy = results.privacy
    lines = [
        "# fedxrec comparison report" + ("" if results.complete else " (INCOMPLETE)"),
        "",
        f"- Data set: **{results.dataset}**; platforms: {platforms_text}.",
        f"- Split: {results.split}; {results.protocol}.",
        f"- Seeds: {results.seeds} (training and adapter initialisation; the platforms are the "
        f"same for every seed: data seed {cfg['data.seed']}). ± is the standard deviation over "
        "seeds; methods without one (popularity, ItemKNN, zero-shot) are deterministic.",
        f"- Privacy: user-level (ε, δ)-DP per platform over the whole federation; product ε = "
        f"{eps}, sweep ε ∈ {{{', '.join(eps_text(e) for e in results.epsilons)}}}, δ = "
        f"{deltas}, accountant {privacy['accountant']}, clip "
        f'{privacy["max_grad_norm"]}. The "+ local signals" rankings fuse '
        + (
            f"counts made user-level DP with the site's own ε = "
            f"{privacy['local_epsilon']:g} (at most "
            f"{privacy['local_max_items']} items per user)."
            if privacy.get("local_epsilon")
            else "the site's exact counts (its own data, never sent)."
        ),
        f"- Training: {cfg['federation.rounds']} rounds of {cfg['train.steps']} steps "
        f"({cfg['train.lora_steps']} with LoRA), expected batch {cfg['train.batch_size']} users, "
        f"lr {cfg['train.learning_rate']} (LoRA {cfg['train.lora_learning_rate']}), "
        f"then {cfg['train.personalize_steps']} personalisation steps; a causal transformer "
        f"({cfg['model.blocks']} blocks, width {cfg['model.dim']}, {cfg['model.heads']} head(s), "
        f"dropout {cfg['model.dropout']}) over the last {cfg['model.history_items']} items, "
        f"LoRA r={cfg['model.lora_r']} on "
        f"{cfg['model.target_modules']}, encoder {cfg['model.encoder'] or 'all-MiniLM-L6-v2'}, "
        f"max users/platform {cfg['data.max_users'] or 'all'}"
        + (" (**--quick subset**)" if results.quick else "")
        + ".",
        f"- Run: commit {results.commit}, {results.created}, {results.seconds / 60:.1f} "
        f"min on {machine['processor']} ({machine['cpu_count']} CPUs, device {machine['device']}, "
        f"load average {machine['load_average']}).",
        f"- Command: `{results.command}`",
        "",
        "## Methods side by side (test, mean over platforms)",
        "",
        format_table(method_rows(results, None), markdown=True),
        "",
    ]
    lines += [
        "## Per site (test NDCG@10, [95 % bootstrap interval over the site's users])",
        "",
        format_table(_slice_rows(results, "all"), markdown=True),
        "",
    ]
    if "methods" in plots:
        lines += [f"![test NDCG@10 per method and platform]({plots['methods']})", ""]
    lines += ["## Targets", ""]
    lines += [target_line(t) for t in results.targets]
    lines += ["", *observations(results), ""]
    for n in names:
        lines += [
            f"## Platform {n} (test)",
            "",
            format_table(method_rows(results, n), markdown=True),
            "",
        ]
    lines += [
        "## Slices (test NDCG@10)",
        "",
        f"Cold users: {results.slices['cold_users']}.",
        "",
        format_table(_slice_rows(results, "cold_users"), markdown=True),
        "",
        f"Cold items: {results.slices['cold_items']}.",
        "",
        format_table(_slice_rows(results, "cold_items"), markdown=True),
        "",
    ]
    if "new_items" in results.slices:
        lines += [
            f"New items: {results.slices['new_items']}.",
            "",
            format_table(_slice_rows(results, "new_items"), markdown=True),
            "",
        ]
    unseen = results.unseen_platform
    if unseen:
        lines += [
            f"## Unseen platform: {unseen.platform} "
            f"({results.platforms[unseen.platform].users} users)",
            "",
            f"The federation of {', '.join(unseen.trained_on)} (DP, ε={eps}) never saw "
            f"{unseen.platform}; its adapter ranks {unseen.platform}'s catalogue from text "
            f"alone, against the untuned encoder and against {unseen.platform}'s own "
            "local-only model (test).",
            "",
        ]
        rows = [["method", *METRIC_NAMES, "NDCG@10 95 % interval"]]
        order = (
            M.FEDERATED_UNSEEN,
            M.ZERO_SHOT,
            M.LOCAL_ONLY,
            M.FEDERATED_DP,
            M.POPULARITY,
            M.ITEMKNN,
        )
        for m in order:
            cell = unseen.methods.get(m)
            if cell and cell.users:
                label = METHODS[m].label + (" (trained with it)" if m == M.FEDERATED_DP else "")
                rows.append(
                    [label, *[_cell(cell.metrics.get(k)) for k in METRIC_NAMES], _interval(cell)]
                )
        lines += [format_table(rows, markdown=True), ""]
    lines += ["## Privacy–utility (federated, test NDCG@10)", ""]
    rows = [["ε", *[f"σ {n}" for n in names], *[f"NDCG@10 {n}" for n in names], "mean"]]
    for point in results.privacy_utility:
        rows.append(
            [eps_text(point.epsilon)]
            + [f"{point.noise_multiplier[n]:.3f}" for n in names]
            + [_cell(point.ndcg[n]) for n in names]
            + [_cell(point.mean_ndcg)]
        )
    lines += [
        "σ is the noise multiplier each platform needed to stay within ε over all rounds "
        "(0 without DP).",
        "",
        format_table(rows, markdown=True),
        "",
    ]
    if "privacy_utility" in plots:
        lines += [f"![privacy–utility]({plots['privacy_utility']})", ""]
    lines += [
        "## Per round",
        "",
        "Validation NDCG@10 per round on the first "
        f"{results.curve_users or 'all'} users of each platform (federation.eval_users, as "
        "`fedxrec simulate` does; round 0 = the untuned encoder), and ε spent per round, mean "
        "over seeds.",
        "",
    ]
    for key, alt in (
        ("ndcg_rounds", "validation NDCG@10 per round"),
        ("epsilon_rounds", "ε per round"),
    ):
        if key in plots:
            lines += [f"![{alt}]({plots[key]})", ""]
    lines += [
        "## Reading this report",
        "",
        "- Every number is in `results.json` (per run, per seed, per platform, with each user's "
        "test rank), with the configuration and the platform data in `platforms/`.",
        "- Popularity and ItemKNN learn only from training sequences (all but the last two items "
        "of every user); a user is scored from the history of the split ranked, as the encoder "
        "does. Centralized pools every platform's data in one training set and is evaluated per "
        "platform on that platform's catalogue only.",
        "- Not covered by DP: the counts and metrics in this report.",
        "",
    ]
    return "\n".join(lines)


def observations(results: ComparisonResults) -> list[str]:
    """Plain statements of what the numbers show (the report must explain, not only list)."""
    summary = results.summary
    names = results.names
    lines = ["### What the numbers show", ""]

    def mean_of(method: Method, slice_name: str = "all") -> float | None:
        return stat(summary, method, None, slice_name)

    ranked = sorted(
        (
            (m, v)
            for m in METHODS
            if m not in (M.FEDERATED_EPS, M.FEDERATED_UNSEEN) and (v := mean_of(m)) is not None
        ),
        key=lambda x: -x[1],
    )
    if ranked:
        lines.append(
            "- Platform-mean test NDCG@10, best first: "
            + ", ".join(f"{METHODS[m].label} {v:.4f}" for m, v in ranked)
            + "."
        )
    dp, no_dp = mean_of(M.FEDERATED_DP), mean_of(M.FEDERATED_NO_DP)
    if dp is not None and no_dp:
        lines.append(
            f"- The price of privacy at ε={eps_text(results.product_epsilon)}: federated DP "
            f"keeps {dp / no_dp:.0%} of the non-private federation's NDCG@10 ({dp:.4f} vs "
            f"{no_dp:.4f})."
        )
    zero = mean_of(M.ZERO_SHOT)
    if dp is not None and zero:
        lines.append(
            f"- Fine-tuning (federated DP) vs the untuned encoder: {dp:.4f} vs {zero:.4f} "
            f"({(dp - zero) / zero:+.0%})."
        )
    if dp is not None and zero is not None and abs(dp - zero) < 1e-3:
        sigmas = [
            v
            for point in results.privacy_utility
            if point.epsilon == results.product_epsilon
            for v in point.noise_multiplier.values()
        ]
        noise = f" (noise multiplier up to {max(sigmas):.2f})" if sigmas else ""
        lines.append(
            "- Federated DP ranks within 0.001 NDCG@10 of the untuned encoder: under DP"
            f"{noise} the adapter barely moved from its start in "
            f"{results.config['federation.rounds']} rounds; more rounds, users or a larger "
            "learning rate are what would change that."
        )
    best_baseline = max(
        ((m, v) for m in (M.POPULARITY, M.ITEMKNN, M.EASE) if (v := mean_of(m)) is not None),
        key=lambda x: x[1],
        default=None,
    )
    product = product_method(summary)
    ours = mean_of(product)
    if best_baseline and ours is not None:
        m, v = best_baseline
        lines.append(
            f"- The strongest counting baseline is {METHODS[m].label} ({v:.4f}); "
            f"{METHODS[product].label} alone is {'above' if ours > v else 'below'} it ({ours:.4f})"
            + (
                f", the site's final ranking ({METHODS[product.with_local].label}) "
                f"{'above' if hybrid > v else 'below'} it ({hybrid:.4f})."
                if (hybrid := mean_of(product.with_local)) is not None
                else "."
            )
        )
    fed = summary.get(M.FEDERATED_DP)
    fed_std = [s.std for n in names if fed is not None and (s := fed.stat(n)) is not None]
    if len(results.seeds) == 1:
        lines.append(
            "- One seed only: differences smaller than a few thousandths of NDCG@10 are within "
            "training noise and should not be read as a ranking of methods."
        )
    elif fed_std:
        lines.append(
            f"- Seed-to-seed spread of federated DP NDCG@10 per platform: up to "
            f"{max(fed_std):.4f}; smaller gaps between methods are not meaningful."
        )
    skipped = [m for m in TRAINED_METHODS if m not in results.trained_methods]
    if skipped:
        lines.append(
            f"- Not run in this comparison (--methods): {', '.join(skipped)}; targets that need "
            "them read n/a."
        )
    if results.quick:
        lines.append(
            "- This is a --quick run (a user subset, few rounds): it checks that everything runs; "
            "its numbers are not the published results."
        )
    return lines
