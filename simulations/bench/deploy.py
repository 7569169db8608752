"""Deployment vs simulation, measured side by side in one run, with the same configuration.

1. Wall time of a 2-round federation on Flower's Deployment Engine (a SuperLink and one SuperNode
   per platform on this machine, TLS and SuperNode authentication on, as across organisations)
   and in Flower's simulation engine (`fedxrec simulate`): start to finish (Flower's processes
   started, round 0's zero-shot evaluation, the rounds, the final test) and the training rounds
   alone (train + validation, from metrics.json). ``--secagg`` adds the deployment under SecAgg+.
2. Bytes per site per round: the adapter each site sends up (measured on the coordinator's side
   as the ArrayRecord payload of the replies) and the global adapter it receives, against the
   full encoder's size (4 bytes x its parameter count): what shipping the whole model would cost.

    python -m simulations.bench.deploy [--max-users 12] [--platforms action,comedy] [--secagg]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server.certs import init_certs
from server.run_log import FederationLog
from shared.adapter import adapter_nbytes, get_adapter_arrays
from shared.config import FedxrecConfig
from shared.model import build_recommender, count_parameters, load_base_encoder
from simulations.cli import main as fedxrec
from simulations.data.partition import prepare_platforms
from simulations.launch.deployment import LocalSuperNode
from simulations.launch.superlink import LocalSuperLink
from simulations.simulate import write_run_config

APP_DIR = Path(__file__).resolve().parents[1]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m simulations.bench.deploy", description=__doc__)
    parser.add_argument("--max-users", type=int, default=12, help="users per platform")
    parser.add_argument("--platforms", default="action,comedy")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--secagg", action="store_true", help="also deploy under SecAgg+")
    parser.add_argument("--out", type=Path, help="keep everything here (default: a temp folder)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser.parse_args(argv)


def bench_config(args: argparse.Namespace) -> list[str]:
    """The settings both engines run with (`fedxrec simulate --set` syntax)."""
    return [
        f"federation.rounds={args.rounds}",
        f"data.max_users={args.max_users}",
        f"data.platforms={args.platforms}",
        "train.batch_size=6",
        "train.steps=10",
        "train.lora_steps=1",
        "privacy.epsilon=8.0",
    ]


def run_deployment(root: Path, settings: list[str], secure: bool) -> dict[str, Any]:
    cfg = FedxrecConfig.load(overrides=settings)
    names = prepare_platforms(cfg.data, root / "platforms")
    init_certs(root / "certs", ["127.0.0.1"], names)
    cfg = cfg.with_overrides(
        {
            "federation.platforms": len(names),
            "federation.out_dir": str(root / "out"),
            "federation.secure_aggregation": secure,
        }
    )
    run_config = write_run_config(cfg, root / "run_config.toml")
    link = LocalSuperLink(
        root / "flwr", simulation=False, certs=root / "certs" / "superlink", node_auth=True
    )
    started = time.perf_counter()  # SuperLink and SuperNodes start, as the simulation's do
    try:
        link.start()
        for name in names:
            link.register_supernode(root / "certs" / "sites" / name / "node.pub")
            LocalSuperNode(
                link,
                name,
                data_path=root / "platforms" / name,
                state_dir=root / "state" / name,
                private_key=root / "certs" / "sites" / name / "node.key",
            ).start()
        link.run_app(APP_DIR, run_config=run_config, on_line=lambda line: None)
        wall = time.perf_counter() - started
    finally:
        left = link.stop()
    if left:
        raise RuntimeError(f"processes {sorted(left)} did not stop")
    return {"wall": wall, "log": FederationLog.read(root / "out")}


def run_simulation(root: Path, settings: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    code = fedxrec(["simulate", "--out", str(root), *[a for s in settings for a in ("--set", s)]])
    if code != 0:
        raise RuntimeError(f"fedxrec simulate failed ({code}); see {root / 'flower.log'}")
    return {"wall": time.perf_counter() - started, "log": FederationLog.read(root)}


def round_seconds(log: FederationLog) -> float:
    return sum(float(r.get("seconds", 0.0)) for r in log.rounds if r["round"] > 0)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = bench_config(args)
    root = args.out or Path(tempfile.mkdtemp(prefix="fedxrec-bench-deploy-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"bench_deploy: {', '.join(settings)}; working in {root}", flush=True)

    runs = {"deployment (TLS + node auth)": run_deployment(root / "deploy", settings, False)}
    if args.secagg:
        runs["deployment + SecAgg+"] = run_deployment(root / "secagg", settings, True)
    runs["simulation (Ray)"] = run_simulation(root / "simulation", settings)

    cfg = FedxrecConfig.load(overrides=settings).model
    adapter = adapter_nbytes(get_adapter_arrays(build_recommender(cfg)))
    encoder_params = count_parameters(load_base_encoder(cfg))[1]
    encoder = 4 * encoder_params

    print(f"\n{args.rounds} rounds, platforms {args.platforms}, {args.max_users} users each")
    print(f"{'engine':<30} {'start to finish s':>18} {'training rounds s':>18}")
    for name, run in runs.items():
        print(f"{name:<30} {run['wall']:>18.1f} {round_seconds(run['log']):>18.1f}")
    deploy, sim = runs["deployment (TLS + node auth)"], runs["simulation (Ray)"]
    whole = deploy["wall"] / sim["wall"]
    rounds = round_seconds(deploy["log"]) / max(round_seconds(sim["log"]), 1e-9)
    print(f"deployment / simulation: {whole:.2f}x (whole run), {rounds:.2f}x (training rounds)")

    ups = [
        m["bytes_up"]
        for entry in deploy["log"].rounds
        for m in entry["platforms"].values()
        if "bytes_up" in m
    ]
    down = max(int(e.get("bytes_down_per_site", 0)) for e in deploy["log"].rounds)
    up = max(ups) if ups else 0
    print("\nper site per round (deployment, measured on the coordinator):")
    print(f"  sent up (the site's adapter):   {up:>12,} bytes")
    print(f"  received (the global adapter):  {down:>12,} bytes")
    print(f"  adapter tensors (float32):      {adapter:>12,} bytes")
    print(f"  full encoder ({encoder_params:,} params x 4): {encoder:>12,} bytes")
    print(f"  adapter / encoder: {up / encoder:.4%}  ({encoder / max(up, 1):.0f}x smaller)")

    if args.json:
        figures = {
            "settings": settings,
            "runs": {
                k: {"wall_s": v["wall"], "rounds_s": round_seconds(v["log"])}
                for k, v in runs.items()
            },
            "bytes_up_per_site_round": up,
            "bytes_down_per_site_round": down,
            "adapter_bytes": adapter,
            "encoder_bytes": encoder,
        }
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
