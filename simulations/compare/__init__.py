"""`fedxrec compare`: the federated private recommender against what a platform would pick instead.

On the same platforms and the same chronological leave-last-out split (README "Results": full
ranking of each platform's catalogue, history excluded), for each seed:

  popularity        per platform, counts of training interactions
  itemknn           per platform, item–item co-occurrence cosine
  ease              per platform, EASE (closed form) on the training interactions
  zero_shot         the pretrained encoder, no fine-tuning
  local_only        each platform trains its own model alone, same DP budget as the product
  federated_dp      the product: FedAvg of DP models (LoRA + sequence head) at privacy.epsilon
  federated_dp_personalized  the same federation, each site's own fine-tune of the global model
                    (when train.personalize_steps > 0; paid from the same budget)
  federated_dp_head_only     the ablation: the same federation training the sequence head only
  federated_no_dp   the same federation without DP (with the non-private settings)
  centralized       no DP, every platform's data pooled in one place (a reference no one may run)
  federated_unseen  DP federation without one platform, ranked on that platform it never saw

plus the federation at every ε of --epsilons (privacy–utility), with the noise each needed, and
"+local" twins of zero_shot, local_only, federated_dp(_personalized) and centralized: each site's
final ranking, the model fused with the site's own collaborative signals (weights fitted on the
site's validation split).

Writes to --out: ``results.json`` (every figure, per run and summarised, with the data set, split,
seeds, ε and δ), ``report.md`` (tables, targets met or missed, plots), ``plots/*.png`` and
``platforms/`` (the exact platform data every method was run on). ``results.json`` is also written
after every run, so a stopped comparison keeps what it finished, and ``--resume`` carries on from
there (adding seeds or ε works the same way).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path
from typing import Any

from shared.config_files import add_config_arguments
from simulations.compare.plan import (
    DEFAULT_EPSILONS,
    DEFAULT_SEEDS,
    OUTPUTS,
    QUICK_EPSILONS,
    QUICK_OVERRIDES,
    TRAINED_METHODS,
    command_line,
    compare_plan,
    resolve_unseen,
)
from simulations.data.partition import add_data_arguments

WORK_DIR = ".federations"  # where the comparison's federations run (removed when it is done)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare the federated private recommender with baselines (report + results.json)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output folder (a re-used one starts fresh, unless --resume)",
    )
    add_data_arguments(p)
    p.add_argument(
        "--seeds",
        type=int,
        help=f"training seeds, mean ± std over them (default {DEFAULT_SEEDS}; --quick: 1)",
    )
    p.add_argument(
        "--epsilons",
        help=f"ε of the privacy–utility sweep, inf = no DP (default {DEFAULT_EPSILONS}; "
        f"--quick: {QUICK_EPSILONS}); the product's ε is privacy.epsilon",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a subset that checks everything runs in minutes: "
        + ", ".join(f"{k}={v}" for k, v in QUICK_OVERRIDES.items())
        + ", 1 seed, ε 8 and inf (--set still overrides)",
    )
    p.add_argument(
        "--methods",
        help="the training methods to run, comma-separated (default: all of "
        + ", ".join(TRAINED_METHODS)
        + "); the baselines and the zero-shot encoder always run",
    )
    p.add_argument(
        "--unseen",
        help="platform left out of one federation and ranked with its adapter (default: the last "
        "platform; 'none' to skip)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a stopped comparison in the same --out: runs already in its results.json "
        "(same settings) are kept, the rest are run; more --seeds or --epsilons may be added",
    )
    add_config_arguments(p, "federation.rounds=10")
    p.set_defaults(run=run)


def write_outputs(exp: Any, out: Path, *, complete: bool) -> Any:
    """results.json and report.md of the runs so far, and once ``complete`` the plots (drawing
    them after every run cost more than some runs); returns the results."""
    from simulations.compare.figures import make_plots
    from simulations.compare.report import render_report
    from simulations.compare.results import build_results, write_json

    results = build_results(exp, complete=complete)
    plots = make_plots(results, out / "plots") if exp.runs and complete else {}
    (out / "report.md").write_text(render_report(results, plots))
    write_json(out / "results.json", results)
    return results


def run(args: argparse.Namespace) -> int:
    # the comparison's machinery; building the parser (`fedxrec --help`) needs none of it
    import torch

    from simulations.compare.data import load_platforms
    from simulations.compare.report import method_rows
    from simulations.compare.results import load_previous_runs
    from simulations.compare.runner import Experiment
    from simulations.report import format_table

    plan = compare_plan(args)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in () if args.resume else OUTPUTS:  # a re-run is a new experiment
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    if plan.cfg.train.threads:
        torch.set_num_threads(plan.cfg.train.threads)
    print(
        f"fedxrec compare: preparing platforms from {plan.cfg.data.dataset} in {out}/platforms",
        flush=True,
    )
    platforms = load_platforms(plan.cfg, out / "platforms")
    plan = dataclasses.replace(
        plan, unseen=resolve_unseen(plan.unseen, [p.name for p in platforms])
    )
    previous = load_previous_runs(out / "results.json", plan, platforms) if args.resume else []
    work = out / WORK_DIR
    shutil.rmtree(work, ignore_errors=True)  # a stopped comparison's unfinished federation
    exp = Experiment(
        plan,
        platforms,
        {p.name: out / "platforms" / p.name for p in platforms},
        work,
        log=lambda line: print(line, flush=True),
        on_run=lambda e: write_outputs(e, out, complete=False),
        command=command_line(args),
        previous_runs=previous,
    )
    exp.run()
    shutil.rmtree(work, ignore_errors=True)
    results = write_outputs(exp, out, complete=True)
    print()
    print(format_table(method_rows(results, None)))
    print()
    for t in results.targets:
        state = {True: "met", False: "MISSED", None: "n/a"}[t.met]
        print(f"  [{state}] {t.target}: {t.detail}")
    print(
        f"\nfedxrec compare: done in {results.seconds / 60:.1f} min. Report: {out / 'report.md'};"
        f" every figure: {out / 'results.json'}"
    )
    return 0
