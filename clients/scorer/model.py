"""The global model as a site loads it to rank its catalogue: base encoder + the federation's
adapter (LoRA + sequence head).

The LoRA settings come from the adapter folder itself (``adapter_config.json``: r, alpha, target
modules; ``fedxrec.json`` may add ``model.*`` settings such as token limits), the encoder from the
site (``--encoder``, "" = the installed all-MiniLM-L6-v2), so an adapter is never squeezed into a
model of another shape. On CUDA the scorer runs in fp16 (inference only: no gradient, no DP); on
CPU in fp32.

A ``SiteScorer`` is one immutable snapshot (model + item index + the site's own signals); the HTTP
service swaps whole snapshots, never parts of one. When the site has its interactions file, the
final ranking fuses the model with the site's own collaborative signals (clients/scorer/local_signals.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from clients.scorer.candidates import CandidateIndex, build_candidate_index
from clients.scorer.catalogue_changes import replay_catalogue
from clients.scorer.count_releases import CountReleases
from clients.scorer.defaults import DEFAULT_MAX_ITEMS, PRECISIONS
from clients.scorer.item_index import ItemIndex, build_item_index, default_cache_dir
from clients.scorer.local_signals import (
    COLLABORATIVE_INDEX,
    FUSION_WEIGHTS,
    LocalSignals,
    default_interactions_file,
    load_local_signals,
)
from shared.adapter import (
    CONFIG_FILE,
    AdapterError,
    adapter_hash,
    check_lora_config,
    read_adapter,
    read_adapter_metadata,
    set_adapter_arrays,
)
from shared.config import ConfigError, FedxrecConfig, ModelConfig
from shared.model import (
    DEFAULT_ENCODER,
    Recommender,
    build_recommender,
    check_outputs,
    load_base_encoder,
    load_tokenizer,
    pick_device,
)


@dataclass(frozen=True)
class ScorerModel:
    """The adapted encoder a site scores with, and what identifies it."""

    rec: Recommender
    adapter_dir: Path
    adapter_hash: str
    metadata: dict[str, Any]
    encoder: str  # as the site named it; "" = the installed default
    encoder_hash: str  # of the base weights and the tokenizer, wherever they were loaded from
    precision: str  # "fp16" | "fp32"

    @property
    def adapter_round(self) -> int | None:
        value = self.metadata.get("round")
        return int(value) if isinstance(value, int | float) else None

    @property
    def fingerprint(self) -> str:
        """Everything an item vector depends on besides the item's text (the item cache key)."""
        cfg = self.rec.config
        parts = [self.encoder_hash, self.adapter_hash, str(cfg.max_item_tokens), self.precision]
        return hashlib.blake2b("|".join(parts).encode(), digest_size=10).hexdigest()


def model_config_for_adapter(adapter_dir: str | Path, encoder: str = "") -> ModelConfig:
    """``model.*`` settings that fit the adapter folder: LoRA shape from its adapter_config.json,
    token limits from its fedxrec.json when recorded there, the encoder from the caller."""
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / CONFIG_FILE
    if not config_path.is_file():
        raise AdapterError(
            f"{adapter_dir} is not a peft adapter folder: {CONFIG_FILE} is missing; pass the "
            "folder the coordinator wrote (adapter_config.json + adapter_model.safetensors)"
        )
    try:
        saved = check_lora_config(json.loads(config_path.read_text()), adapter_dir)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterError(f"{config_path} is not valid JSON: {err}") from None
    if saved.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{adapter_dir} holds a {saved.get('peft_type')} adapter, not LoRA")
    overrides = _metadata_model_settings(read_adapter_metadata(adapter_dir))
    targets = saved.get("target_modules")
    if isinstance(targets, list | tuple):
        overrides["model.target_modules"] = ",".join(sorted(str(t) for t in targets))
    elif isinstance(targets, str) and targets:
        overrides["model.target_modules"] = targets
    for key in ("r", "lora_alpha", "lora_dropout"):
        if saved.get(key) is not None:
            overrides["model." + ("lora_r" if key == "r" else key)] = saved[key]
    overrides["model.encoder"] = encoder
    try:
        return FedxrecConfig.from_flat(overrides).model
    except ConfigError as err:
        raise AdapterError(
            f"{adapter_dir}: its settings do not make a valid model: {err}"
        ) from None


def _metadata_model_settings(meta: dict[str, Any]) -> dict[str, Any]:
    """``model.*`` keys recorded by the coordinator, flat ("model.x": v) or nested ({"model": {}})."""
    found: dict[str, Any] = {}
    nested = meta.get("model")
    if isinstance(nested, dict):
        found.update({f"model.{k}": v for k, v in nested.items()})
    found.update({k: v for k, v in meta.items() if k.startswith("model.")})
    known = {f"model.{f}" for f in ModelConfig.__dataclass_fields__}
    # The site decides which encoder files it loads; the adapter only says how they were adapted.
    return {k: v for k, v in found.items() if k in known and k != "model.encoder"}


def encoder_fingerprint(encoder: nn.Module, tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash of the base weights and the tokenizer: the same encoder gives the same hash wherever it
    was installed, and a retrained or re-tokenised one never reuses another's cached vectors."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    return digest.hexdigest()


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision '{precision}' is unknown; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            "precision fp16 needs a CUDA device; use --precision fp32 (or auto) on CPU"
        )
    return precision


def load_scorer_model(
    adapter_dir: str | Path,
    *,
    encoder: str = "",
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> ScorerModel:
    """Base encoder + the adapter in ``adapter_dir``, ready for inference on ``device``."""
    adapter_dir = Path(adapter_dir)
    cfg = model_config_for_adapter(adapter_dir, encoder)
    arrays = read_adapter(adapter_dir, cfg)  # checks the folder is complete before any loading
    target = device if isinstance(device, torch.device) else pick_device(device)
    precision = resolve_precision(precision, target)
    tokenizer = load_tokenizer(cfg)
    base = load_base_encoder(cfg)
    fingerprint = encoder_fingerprint(base, tokenizer)
    rec = build_recommender(cfg, device=target, base=base, tokenizer=tokenizer)
    set_adapter_arrays(rec, arrays)
    # Inference only: fold B·A into the base weights, so a forward pass costs what the base
    # encoder's does (peft keeps the LoRA tensors, so the adapter stays readable).
    rec.model.peft_model.merge_adapter()
    rec.model.eval()
    if precision == "fp16":
        rec.model.half()
    return ScorerModel(
        rec=rec,
        adapter_dir=adapter_dir,
        adapter_hash=adapter_hash(arrays),
        metadata=read_adapter_metadata(adapter_dir),
        encoder=encoder,
        encoder_hash=fingerprint,
        precision=precision,
    )


@dataclass(frozen=True)
class SiteScorer:
    """One consistent snapshot: a model and the catalogue index built with exactly that model."""

    model: ScorerModel
    index: ItemIndex
    items_file: Path
    local: LocalSignals | None = None  # None: text-only ranking (the model alone)
    candidates: CandidateIndex | None = None  # None: every request ranks the whole catalogue
    cache_dir: Path | None = None  # where its item vectors and local signals are cached
    model_check: dict[str, float] = field(default_factory=dict)  # the probe it passed on load
    loaded_at: float = field(default_factory=time.time)

    def cache_summary(self) -> str:
        """What this snapshot read back from its cache and what it had to build, in words."""
        if self.cache_dir is None:
            return "no cache (--no-cache): every item encoded, the site's signals built"
        total, encoded = len(self.index), self.index.encoded
        loaded, built = [], []
        if encoded == 0:
            loaded.append("item vectors")
        elif encoded < total:
            loaded.append(f"item vectors ({total - encoded} of {total})")
        if encoded:
            built.append(f"{encoded} item vectors encoded")
        if self.local is not None:
            loaded += self.local.from_cache
            built += [
                f"{part} built"
                for part in (COLLABORATIVE_INDEX, FUSION_WEIGHTS)
                if part not in self.local.from_cache
            ]
        parts = [f"{_and(loaded)} loaded from cache {self.cache_dir}"] if loaded else []
        parts += [f"{_and(built)} (now cached in {self.cache_dir})"] if built else []
        return "; ".join(parts)

    def describe(self) -> dict[str, Any]:
        rec = self.model.rec
        return {
            "adapter_hash": self.model.adapter_hash,
            "round": self.model.adapter_round,
            "adapter_dir": str(self.model.adapter_dir),
            "encoder": self.model.encoder or DEFAULT_ENCODER,
            "encoder_hash": self.model.encoder_hash,
            "lora_r": rec.config.lora_r,
            "target_modules": rec.config.target_module_list,
            "history_items": rec.config.history_items,
            "dim": rec.dim,
            "device": str(rec.device),
            "precision": self.model.precision,
            "items_file": str(self.items_file),
            "items": len(self.index),
            "catalogue_hash": self.index.catalogue_hash,
            "ranking": "hybrid" if self.local else "text-only",
            "model_check": self.model_check,
            "fusion": self.local.describe() if self.local else None,
            "candidates": self.candidates.describe() if self.candidates else "full ranking",
            "loaded_at": self.loaded_at,
        }


def _and(parts: list[str]) -> str:
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else "".join(parts)


def load_site_scorer(
    adapter_dir: str | Path,
    items_file: str | Path,
    *,
    encoder: str = "",
    device: str | torch.device = "auto",
    precision: str = "auto",
    cache_dir: str | Path | None = None,
    progress: bool = True,
    interactions: str | Path | None = None,
    text_only: bool = False,
    local_epsilon: float = 0.0,
    local_max_items: int = DEFAULT_MAX_ITEMS,
    count_releases: CountReleases | None = None,
    candidates: str = "auto",
) -> SiteScorer:
    """Read the catalogue, load the model and index the catalogue (from the cache when it can);
    with the site's interactions (``interactions``, or the file beside ``items_file``), fit the
    hybrid ranking unless ``text_only``; ``local_epsilon`` > 0 makes the site's counts user-level
    DP (clients/scorer/private_counts.py). ``candidates`` picks full ranking or the two-stage
    ranking's index (clients/scorer/candidates.py: ``auto`` by catalogue size).

    ``cache_dir=None`` uses the default cache folder of ``items_file``; pass ``""`` for no cache.
    """
    items_file = Path(items_file)
    # a bad catalogue fails before the (slower) model load; the journal's changes replayed
    items, removed = replay_catalogue(items_file)
    interactions_file = None
    if not text_only:
        interactions_file = (
            Path(interactions) if interactions else default_interactions_file(items_file)
        )
        if interactions and not interactions_file.is_file():
            raise ValueError(
                f"--interactions {interactions}: file not found; give the site's interactions "
                "file, or --text-only to rank with the model alone"
            )
    model = load_scorer_model(adapter_dir, encoder=encoder, device=device, precision=precision)
    if cache_dir is None:
        cache: Path | None = default_cache_dir(items_file)
    else:
        cache = Path(cache_dir) if str(cache_dir) else None
    index = build_item_index(
        model.rec, items, model_fingerprint=model.fingerprint, cache_dir=cache, progress=progress
    )
    # A broken adapter (finite but absurd weights) is refused here, before it ranks anything.
    model_check = check_outputs(model.rec, index.vectors)
    local = None
    if interactions_file is not None:
        local = load_local_signals(
            model.rec,
            index,
            interactions_file,
            model_fingerprint=model.fingerprint,
            cache_dir=cache,
            local_epsilon=local_epsilon,
            local_max_items=local_max_items,
            count_releases=count_releases,
            removed_items=removed,
        )
    candidate_index = build_candidate_index(
        index, local.index if local else None, requested=candidates, cache_dir=cache
    )
    return SiteScorer(
        model=model,
        index=index,
        items_file=items_file,
        local=local,
        candidates=candidate_index,
        cache_dir=cache,
        model_check=model_check,
    )
