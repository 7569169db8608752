"""Training benchmark, measured side by side in one run:

- DP-SGD examples/s ÷ non-private examples/s, same model, same batches (target ≥ 0.8);
- bytes of one adapter upload ÷ bytes of the full encoder (target ≤ 0.5%).

Run: ``python -m simulations.benchmark [--steps N] [--batch-size B] [--device auto|cpu|cuda]``.
DP and non-private steps alternate, so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from clients.dataset import build_platform
from clients.training import (
    example_losses,
    make_batch,
    privatize,
    release_dp_state,
    trainable_users,
)
from shared.adapter import adapter_nbytes, get_adapter_arrays, save_adapter
from shared.config import ModelConfig
from shared.model import build_recommender, pick_device
from simulations.movielens import load_movielens
from simulations.partition import split_by_category


def _time_steps(model, rec, data, optimizer, batches, items, device) -> float:
    start = time.perf_counter()
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        example_losses(model, rec, data, batch, items).mean().backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure_throughput(
    steps: int, batch_size: int, device: torch.device, repeats: int = 3, encoder: str = ""
) -> tuple[float, float]:
    """(DP examples/s, non-private examples/s) on MovieLens-100K 'action' histories."""
    items, inter = load_movielens("ml-100k")
    data = build_platform("action", *split_by_category(items, inter, ["action"])["action"])
    users = trainable_users(data)
    rng = random.Random(0)
    batches = [make_batch(data, rng.sample(users, batch_size), rng) for _ in range(steps)]
    cfg = ModelConfig(encoder=encoder)
    plain = build_recommender(cfg, device=device)
    private = build_recommender(cfg, device=device)
    item_vectors = plain.encode_items(data.item_texts)

    def optimizer_of(rec):
        return torch.optim.Adam([p for p in rec.model.parameters() if p.requires_grad], lr=1e-3)

    plain_opt = optimizer_of(plain)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.as_tensor(users)), batch_size=batch_size
    )
    dp_model, dp_opt, _ = privatize(private.model, optimizer_of(private), loader, 1.0, 1.0)
    plain.model.train()
    # warm-up both, then alternate timed runs
    _time_steps(plain.model, plain, data, plain_opt, batches[:1], item_vectors, device)
    _time_steps(dp_model, private, data, dp_opt, batches[:1], item_vectors, device)
    dp_time = plain_time = 0.0
    for _ in range(repeats):
        dp_time += _time_steps(dp_model, private, data, dp_opt, batches, item_vectors, device)
        plain_time += _time_steps(
            plain.model, plain, data, plain_opt, batches, item_vectors, device
        )
    release_dp_state(dp_model, [p for p in private.model.parameters() if p.requires_grad])
    examples = repeats * steps * batch_size
    return examples / dp_time, examples / plain_time


def measure_sizes(encoder: str = "") -> tuple[int, int, int]:
    """(adapter upload bytes, adapter file bytes, full encoder bytes, in float32)."""
    cfg = ModelConfig(encoder=encoder)
    rec = build_recommender(cfg)
    arrays = get_adapter_arrays(rec)
    base = rec.model.encoder.get_base_model()
    encoder_bytes = 4 * sum(p.numel() for p in base.parameters()) - adapter_nbytes(arrays)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_adapter(arrays, cfg, Path(tmp) / "a")
        file_bytes = (folder / "adapter_model.safetensors").stat().st_size
    return adapter_nbytes(arrays), file_bytes, encoder_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="steps per timed run (default 8)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per step (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed runs (default 3)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--encoder", default="", help="encoder folder (default: the installed MiniLM)"
    )
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    upload, file_bytes, encoder = measure_sizes(args.encoder)
    print(f"device: {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'})")
    print(
        f"adapter upload: {upload:,} bytes (safetensors file {file_bytes:,}); encoder {encoder:,} bytes"
    )
    print(f"adapter upload / full encoder = {upload / encoder:.4%}  (target <= 0.5%)")
    dp, plain = measure_throughput(args.steps, args.batch_size, device, args.repeats, args.encoder)
    print(
        f"DP-SGD: {dp:.1f} examples/s; non-private: {plain:.1f} examples/s (batch {args.batch_size})"
    )
    print(f"DP / non-private throughput = {dp / plain:.3f}  (target >= 0.8)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
