"""`fedxrec simulate`: a federation of several platforms on one machine, in Flower's simulation
engine, through its supported path (a SuperLink in simulation mode + `flwr run`).

Writes to --out: ``metrics.json`` (per round, per platform), ``adapter/`` (final global adapter,
peft format), ``rounds/round-NNN/`` (every round's adapter), ``report.md``, ``flower.log`` and the
simulated sites' folders (``platforms/``: their data; ``state/``: their privacy ledgers).

The parser imports nothing heavy (``--help`` is instant); torch, Flower's records and the
baselines are imported by the functions that use them.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

from server.checkpoint import CHECKPOINT_FILE
from shared.config import ConfigError, FedxrecConfig
from shared.config_files import add_config_arguments, parse_overrides, read_toml_config
from shared.data import load_platform
from simulations.data.partition import add_data_arguments, data_overrides, prepare_platforms
from simulations.launch.superlink import FlowerRunError, local_superlink

APP_DIR = Path(__file__).resolve().parents[1]
RAY_PREFIX = re.compile(r"(\x1b\[\d+m)?\((ClientAppActor|raylet)[^)]*\)(\x1b\[0m)?\s*")
# "metrics.json" is server.run_log.METRICS_FILE (that module imports Flower and torch; a test
# checks they agree)
OUTPUTS = (
    "platforms",
    "state",
    "rounds",
    "adapter",
    "metrics.json",
    "report.md",
    "flower.log",
    "alone",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="run a federation of several platforms on this machine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue the stopped federation in --out after its last complete round, with its "
        "settings (flags given here, e.g. --rounds, still apply) and its sites' ledgers",
    )
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out: its adapters, metrics and the simulated sites' data and "
        "privacy ledgers are deleted (without it, a finished run is never touched)",
    )
    p.add_argument("--rounds", type=int, help="federated rounds (federation.rounds, default 3)")
    p.add_argument(
        "--epsilon",
        type=float,
        help="per-platform ε budget for the whole federation (privacy.epsilon, default 8); "
        "inf = no DP, as --no-dp",
    )
    p.add_argument(
        "--no-dp",
        action="store_true",
        help="train without differential privacy (privacy.enabled=false)",
    )
    p.add_argument(
        "--max-users", type=int, help="keep at most N users per platform (data.max_users; 0 = all)"
    )
    p.add_argument(
        "--platforms",
        help="comma-separated platforms: MovieLens genre groups (action, comedy, drama) or "
        "sub-folders of your --data (data.platforms, default all)",
    )
    add_data_arguments(p)
    add_config_arguments(p, "train.batch_size=64")
    p.add_argument(
        "--alone",
        action="store_true",
        help="then train each site alone (its own users only, the same settings and ε, in this "
        "process) and print per site what joining gave it: Popularity, EASE, alone, joined, and "
        "the site's final ranking (with its own counts) alone and joined",
    )
    p.add_argument(
        "--verbose", action="store_true", help="show Flower's whole log, not only fedxrec's lines"
    )
    p.set_defaults(run=run)


def simulation_config(args: argparse.Namespace, base: FedxrecConfig | None = None) -> FedxrecConfig:
    """``base`` (a resumed run's settings) or the defaults, then --config, --set and the flags."""
    cfg = base or FedxrecConfig()
    if args.config:
        cfg = cfg.with_overrides(read_toml_config(args.config))
    if args.set:
        cfg = cfg.with_overrides(parse_overrides(args.set))
    no_dp = args.no_dp or (args.epsilon is not None and math.isinf(args.epsilon))
    flags = {
        "federation.rounds": args.rounds,
        "privacy.epsilon": None if no_dp else args.epsilon,
        "data.max_users": args.max_users,
        "data.platforms": args.platforms,
        **data_overrides(args),
        "privacy.enabled": False if no_dp else None,
    }
    return cfg.with_overrides({k: v for k, v in flags.items() if v is not None})


def write_run_config(cfg: FedxrecConfig, path: Path) -> Path:
    lines = ["# fedxrec run config: every setting of this run (Flower --run-config file)"]
    for key, value in cfg.to_flat().items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        else:
            text = repr(value)
        lines.append(f'"{key}" = {text}')
    path.write_text("\n".join(lines) + "\n")
    return path


def refusals(out: Path) -> str:
    """The sites' refusals the run recorded, for an error message ("" if none)."""
    from server.run_log import FederationLog

    try:
        said = FederationLog.read(out).refusals()
    except (OSError, ValueError, TypeError):
        return ""
    return f"; the sites said: {said}" if said else ""


def fresh_platforms(cfg: FedxrecConfig, out: Path, *, overwrite: bool) -> list[str]:
    """Prepare the simulated sites' data (validated before anything is deleted); a previous run
    in ``out`` is replaced only with --overwrite, and the user is told what goes."""
    previous = [name for name in OUTPUTS if (out / name).exists()]
    if previous and not overwrite:
        raise ValueError(
            f"{out} holds a previous run ({', '.join(previous)}): add --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    print(f"fedxrec simulate: preparing platforms from {cfg.data.dataset} in {out}/platforms")
    staging = out / ".platforms.new"
    names = prepare_platforms(cfg.data, staging)  # raises on bad data; nothing deleted yet
    if previous:
        print(
            f"fedxrec simulate: --overwrite: deleting the previous run in {out} ({', '.join(previous)}"
            "), including the simulated sites' privacy ledgers"
        )
    for name in OUTPUTS:
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    staging.rename(out / "platforms")
    return names


def resumed_run(args: argparse.Namespace, out: Path) -> tuple[FedxrecConfig, list[str]]:
    """The stopped run's own settings (flags given now still apply), platforms and ledgers."""
    if args.data or args.partition or args.platforms or args.max_users is not None:
        raise ValueError(
            "--resume continues with the stopped run's own platforms: drop --data, --partition, "
            "--platforms and --max-users (or start a new run in another --out)"
        )
    saved = out / "run_config.toml"
    if not saved.is_file() or not (out / CHECKPOINT_FILE).is_file():
        raise ValueError(
            f"--resume: {out} holds no stopped federation (no run_config.toml and "
            f"{CHECKPOINT_FILE}); start one without --resume"
        )
    base = FedxrecConfig.from_flat(read_toml_config(saved), ignore_unknown=True)
    cfg = simulation_config(args, base)
    names = [n for n in cfg.simulation.platform_names.split(",") if n]
    missing = [n for n in names if not (out / "platforms" / n).is_dir()]
    if missing:
        raise ValueError(f"--resume: {out}/platforms lacks {', '.join(missing)}; cannot resume")
    print(f"fedxrec simulate: resuming the federation in {out}")
    return cfg, names


def baseline_metrics(
    cfg: FedxrecConfig, root: Path, names: list[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """Popularity and ItemKNN on every simulated platform's test split (the same protocol)."""
    from shared.metrics import ranking_metrics
    from simulations.baselines import BASELINES, baseline_ranks

    out: dict[str, dict[str, dict[str, float]]] = {name: {} for name in BASELINES}
    for platform in names:
        data = load_platform(
            root / platform, platform, min_user_interactions=cfg.data.min_user_interactions
        )
        for name, scorer in BASELINES.items():
            out[name][platform] = ranking_metrics(baseline_ranks(scorer, data, "test"))
    return out


def what_joining_gives(table: str) -> str:
    return "\n".join(
        [
            "## What joining gave each site (test NDCG@10)",
            "",
            "Each site trained again alone: its own users only, the same settings and ε. The "
            "final ranking is the model fused with the site's own counts (weights fitted on its "
            "validation split); 'joining gives' is the final ranking joined over alone.",
            "",
            table,
            "",
        ]
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from server.run_log import FederationLog
    from simulations.report import format_table, render_report, results_table

    started = time.perf_counter()
    out = args.out.resolve()
    if args.resume:
        cfg, names = resumed_run(args, out)
    else:
        cfg = simulation_config(args)  # every setting checked before anything is deleted
        names = fresh_platforms(cfg, out, overwrite=args.overwrite)
    cfg = cfg.with_overrides(
        {
            "simulation.platform_root": str(out / "platforms"),
            "simulation.state_root": str(out / "state"),
            "simulation.platform_names": ",".join(names),
            "federation.out_dir": str(out),
            "federation.platforms": len(names),
            "federation.resume": bool(args.resume),
        }
    )
    if cfg.federation.min_nodes > len(names):
        raise ConfigError(
            f"federation.min_nodes={cfg.federation.min_nodes} > {len(names)} platforms"
        )
    run_config = write_run_config(cfg, out / "run_config.toml")
    use_gpu = cfg.train.device != "cpu" and torch.cuda.is_available()
    cpus = os.cpu_count() or 1
    # On a CPU each simulated site gets one core (Ray gives its process one thread), so as many
    # sites train at once as there are cores: a site's small matrix products use a second
    # thread poorly. On a GPU one site at a time takes every core and a share of the device.
    site_cpus = cpus if use_gpu else 1
    federation_config = (
        f"num-supernodes={len(names)} client-resources-num-cpus={site_cpus} "
        f"client-resources-num-gpus={1.0 / len(names) if use_gpu else 0.0} "
        f"init-args-num-cpus={cpus} init-args-num-gpus={1 if use_gpu else 0}"
    )
    print(
        f"fedxrec simulate: {len(names)} platforms ({', '.join(names)}), "
        f"{cfg.federation.rounds} rounds, "
        + (f"ε ≤ {cfg.privacy.epsilon:g} per platform" if cfg.privacy.enabled else "no DP")
        + f", {'GPU' if use_gpu else f'{cpus} CPU cores'}; Flower's log: {out / 'flower.log'}"
    )

    def show(line: str) -> None:
        if args.verbose or "[fedxrec]" in line or "ERROR" in line or "refuses" in line:
            print(RAY_PREFIX.sub("", line), end="", flush=True)

    try:
        with local_superlink(out / ".flwr", simulation=True, use_gpu=use_gpu) as link:
            link.run_app(
                APP_DIR,
                run_config=run_config,
                federation_config=federation_config,
                on_line=show,
                log_path=out / "flower.log",
            )
    except FlowerRunError as err:
        raise FlowerRunError(
            f"{err}{refusals(out)}; the details are in {out / 'flower.log'}"
        ) from None
    log = FederationLog.read(out)
    baselines = baseline_metrics(cfg, out / "platforms", names)
    seconds = time.perf_counter() - started
    report = render_report(log, seconds, baselines)
    print()
    print(format_table(results_table(log, baselines)))
    if args.alone:
        from simulations.joining import gains_rows, joined_adapter, site_gains

        print()
        sites = {n: out / "platforms" / n for n in names}
        joined = {n: joined_adapter(out, n) for n in names}
        rows = gains_rows(site_gains(cfg, sites, joined, out / "alone", baselines))
        seconds = time.perf_counter() - started
        report += "\n" + what_joining_gives(format_table(rows, markdown=True))
        print("What joining gave each site (test NDCG@10):")
        print(format_table(rows))
    (out / "report.md").write_text(report)
    print(
        f"\nfedxrec simulate: done in {seconds / 60:.1f} min. Report: {out / 'report.md'}; "
        f"global adapter: {out / 'adapter'}"
    )
    idle = log.idle_rounds()
    if idle:
        print(
            f"fedxrec simulate: error: no site trained in round(s) {', '.join(map(str, idle))} "
            f"of {cfg.federation.rounds} (the global adapter stayed unchanged there){refusals(out)}; "
            "see the rounds above and flower.log",
            file=sys.stderr,
        )
        return 1
    return 0
