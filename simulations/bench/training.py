"""Training benchmark, measured side by side in one run:

- bytes of one adapter upload (LoRA + the head's trained tensors) ÷ bytes of the full encoder
  (target ≤ 1 %);
- DP-SGD examples/s ÷ non-private examples/s of the training step, same model, same batches, for
  both kinds of step: head steps over the round's cached text vectors, and LoRA steps that also
  encode each user's most recent items with gradient (per-user gradients: ``torch.func`` for the
  head, the catalogue path included; Opacus' hooks per encoder row for the LoRA).

Run: ``python -m simulations.bench.training [--steps N] [--batch-size B] [--device auto|cpu|cuda]``.
DP and non-private steps alternate, so machine noise hits both alike. What it prints is also
written as JSON (``--json``, default docs/results/bench/training.json): ``head_dp_ratio`` and
``lora_dp_ratio`` with the users/s behind them, the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from clients.federation.examples import UserBatch, build_batch, trainable_users
from clients.federation.training import DPStep, encoder_row_gradients, set_gradients
from shared.adapter import adapter_nbytes, get_adapter_arrays, save_adapter, trained_arrays
from shared.config import FedxrecConfig, ModelConfig
from shared.data import PlatformData, build_platform
from shared.model import Recommender, build_recommender, pick_device
from simulations.data.movielens import load_movielens
from simulations.data.partition import split_by_category


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_steps(
    rec: Recommender,
    data: PlatformData,
    batches: list[UserBatch],
    items: torch.Tensor,
    dp: DPStep | None,
    lora: bool,
) -> float:
    trained = [*rec.head.parameters()]
    if lora:
        trained += [p for p in rec.model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trained, lr=1e-3)
    rec.model.train()
    rec.head.train()
    start = time.perf_counter()
    with encoder_row_gradients(rec) if dp is not None and lora else nullcontext() as hooked:
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            set_gradients(rec, data, batch, items, trained, dp=dp, hooked=hooked)
            optimizer.step()
    _sync(items.device)
    return time.perf_counter() - start


def measure_throughput(
    steps: int,
    batch_size: int,
    device: torch.device,
    *,
    lora: bool,
    repeats: int = 3,
    encoder: str = "",
) -> tuple[float, float]:
    """(DP examples/s, non-private examples/s) on MovieLens-100K 'action' users."""
    items, inter = load_movielens("ml-100k")
    data = build_platform("action", *split_by_category(items, inter, ["action"])["action"])
    users = trainable_users(data)
    train = FedxrecConfig().train
    rng = random.Random(0)
    batches = [
        build_batch(
            data,
            rng.sample(users, min(batch_size, len(users))),
            window=ModelConfig().history_items,
            lora_items=train.lora_items if lora else 0,
        ).to(device)
        for _ in range(steps)
    ]
    cfg = ModelConfig(encoder=encoder)
    plain, private = build_recommender(cfg, device=device), build_recommender(cfg, device=device)
    vectors = plain.catalogue_text_vectors(data.item_texts)
    dp = DPStep(1.0, 1.0, float(batch_size), torch.Generator(device=device).manual_seed(0))
    _time_steps(plain, data, batches[:1], vectors, None, lora)  # warm-up both
    _time_steps(private, data, batches[:1], vectors, dp, lora)
    dp_time = plain_time = 0.0
    for _ in range(repeats):
        dp_time += _time_steps(private, data, batches, vectors, dp, lora)
        plain_time += _time_steps(plain, data, batches, vectors, None, lora)
    examples = repeats * sum(len(b) for b in batches)
    return examples / dp_time, examples / plain_time


def measure_sizes(encoder: str = "") -> tuple[int, int, int]:
    """(adapter upload bytes, adapter files' bytes, full encoder bytes, in float32)."""
    cfg = ModelConfig(encoder=encoder)
    rec = build_recommender(cfg)
    arrays = get_adapter_arrays(rec)
    upload = trained_arrays(arrays)
    base = rec.model.encoder.get_base_model()
    lora_bytes = sum(a.nbytes for k, a in arrays.items() if not k.startswith("head."))
    encoder_bytes = 4 * sum(p.numel() for p in base.parameters()) - lora_bytes
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_adapter(arrays, cfg, Path(tmp) / "a")
        file_bytes = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    return adapter_nbytes(upload), file_bytes, encoder_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="steps per timed run (default 6)")
    parser.add_argument(
        "--batch-size", type=int, default=512, help="users per step (default 512, the default)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="alternating timed runs (default 2)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--encoder", default="", help="encoder folder (default: the installed MiniLM)"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("docs/results/bench/training.json"),
        help="where to write the figures as JSON (default docs/results/bench/training.json)",
    )
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    upload, file_bytes, encoder = measure_sizes(args.encoder)
    print(f"device: {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'})")
    print(
        f"adapter upload (LoRA + head): {upload:,} bytes (safetensors files {file_bytes:,}); "
        f"encoder {encoder:,} bytes"
    )
    print(f"adapter upload / full encoder = {upload / encoder:.4%}  (target <= 1%)")
    out: dict[str, object] = {
        "date": datetime.date.today().isoformat(),
        "device": str(device),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        "batch_size": args.batch_size,
        "upload_bytes": upload,
        "encoder_bytes": encoder,
        "upload_ratio": upload / encoder,
    }
    for lora, label, steps in ((False, "head step", args.steps), (True, "LoRA step", 2)):
        dp, plain = measure_throughput(
            steps, args.batch_size, device, lora=lora, repeats=args.repeats, encoder=args.encoder
        )
        print(
            f"{label}: DP {dp:.1f} users/s, non-private {plain:.1f} users/s "
            f"(batch {args.batch_size}); DP / non-private = {dp / plain:.3f}"
        )
        kind = "lora" if lora else "head"
        out |= {f"{kind}_dp_users_s": dp, f"{kind}_plain_users_s": plain}
        out[f"{kind}_dp_ratio"] = dp / plain
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
