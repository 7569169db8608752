"""Helpers for the scorer tests: the tiny random BERT saved as an encoder folder, and adapters."""

from __future__ import annotations

from pathlib import Path

import torch

from clients.scorer.fusion import FusionWeights, hybrid_split_ranks, training_index
from shared.adapter import get_adapter_arrays, save_adapter
from shared.config import ModelConfig
from shared.data import PlatformData
from shared.text import Item
from tests.conftest import make_tiny_recommender

# Model settings travel in the adapter's fedxrec.json, as the coordinator records them.
MODEL_SETTINGS = {"max_item_tokens": 16, "history_items": 5, "dim": 16}


def make_platform(
    sequences: list[list[int]], items: int, times: list[list[float]] | None = None
) -> PlatformData:
    """A hand-made platform: item k is "i{k}", user u is "u{u}" with ``sequences[u]`` (rows)."""
    return PlatformData(
        name="hand",
        items=[Item(f"i{k}", f"title {k}") for k in range(items)],
        users=[f"u{k}" for k in range(len(sequences))],
        sequences=sequences,
        times=times,
    )


def tiny_config(**overrides: object) -> ModelConfig:
    return ModelConfig(encoder="tiny-random-bert", **MODEL_SETTINGS, **overrides)  # type: ignore[arg-type]


def save_tiny_encoder(vocab: Path, folder: Path) -> Path:
    """The conftest's tiny random BERT as a local Hugging Face folder (what --encoder takes)."""
    rec = make_tiny_recommender(vocab, tiny_config())
    base = rec.model.encoder.unload()  # the plain BertModel, LoRA layers removed
    base.save_pretrained(str(folder))
    rec.tokenizer.save_pretrained(str(folder))
    return folder


def save_tiny_adapter(
    vocab: Path, folder: Path, *, seed: int, scale: float = 0.3, round_: int = 1, **lora: object
) -> Path:
    """A random (non-zero) adapter (LoRA + head) for the tiny encoder, saved the way the
    coordinator saves it."""
    cfg = tiny_config(**lora)
    rec = make_tiny_recommender(vocab, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in [*rec.model.named_parameters(), *rec.head.named_parameters()]:
            if "lora_" in name or p in set(rec.head.parameters()):
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return save_adapter(get_adapter_arrays(rec), cfg, folder, metadata={"round": round_})


def fitted_fusion(data: PlatformData, vocab: Path, config: ModelConfig) -> FusionWeights:
    """The site's final-ranking fit (weights, κ, new-item fallback) with a fresh tiny model."""
    rec = make_tiny_recommender(vocab, config)
    _, fit = hybrid_split_ranks(rec, data, training_index(data))
    return fit
