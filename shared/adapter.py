"""Adapter exchange and storage, in peft's own format only (never pickle).

An adapter is an ordered mapping of peft state-dict names to float32 numpy arrays. On disk it is a
folder that ``peft.PeftModel.from_pretrained`` loads: ``adapter_config.json`` +
``adapter_model.safetensors`` (+ our ``fedxrec.json`` with provenance: round, hashes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from shared.config import ModelConfig
from shared.model import Recommender, lora_config

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
META_FILE = "fedxrec.json"


class AdapterError(ValueError):
    """An adapter is missing, corrupt, or does not fit the model."""


def get_adapter_arrays(rec: Recommender) -> OrderedDict[str, np.ndarray]:
    state = get_peft_model_state_dict(rec.model.peft_model)
    return OrderedDict((k, v.detach().cpu().float().numpy().copy()) for k, v in state.items())


def set_adapter_arrays(rec: Recommender, arrays: dict[str, np.ndarray]) -> None:
    """Load ``arrays`` into the model's adapter, refusing anything that does not fit exactly."""
    expected = get_peft_model_state_dict(rec.model.peft_model)
    check_arrays_fit(arrays, {k: tuple(v.shape) for k, v in expected.items()})
    state = {
        k: torch.as_tensor(np.asarray(v, dtype=np.float32)).to(rec.device)
        for k, v in arrays.items()
    }
    result = set_peft_model_state_dict(rec.model.peft_model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise AdapterError(f"adapter has tensors the model does not: {unexpected[:3]}")


def check_arrays_fit(arrays: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> None:
    missing = sorted(set(shapes) - set(arrays))
    extra = sorted(set(arrays) - set(shapes))
    if missing or extra:
        raise AdapterError(
            f"adapter tensors do not match the model (missing {missing[:3]}, unexpected {extra[:3]}): "
            "was it trained with another encoder or LoRA rank/target modules? "
            "Use the same model.* settings as the federation that produced it"
        )
    for name, shape in shapes.items():
        got = tuple(np.shape(arrays[name]))
        if got != shape:
            raise AdapterError(
                f"adapter tensor '{name}' has shape {got}, the model expects {shape}: "
                "check model.lora_r and model.encoder match the federation's"
            )
        if not np.all(np.isfinite(arrays[name])):
            raise AdapterError(f"adapter tensor '{name}' holds NaN or infinite values")


def adapter_nbytes(arrays: dict[str, np.ndarray]) -> int:
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))


def adapter_hash(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name], dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def save_adapter(
    arrays: dict[str, np.ndarray],
    cfg: ModelConfig,
    directory: str | Path,
    *,
    base_model: str = "",
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write an adapter folder atomically (a reader never sees a half-written adapter)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        lora = lora_config(cfg)
        lora.base_model_name_or_path = base_model or None
        lora.save_pretrained(str(tmp))
        tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        meta = {"adapter_hash": adapter_hash(arrays), **(metadata or {})}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_adapter(
    directory: str | Path, cfg: ModelConfig | None = None
) -> OrderedDict[str, np.ndarray]:
    """Read an adapter folder's tensors, checking it is complete and fits ``cfg`` when given."""
    directory = Path(directory)
    if not directory.is_dir():
        raise AdapterError(f"adapter folder {directory} does not exist")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise AdapterError(
                f"{directory} is not a peft adapter folder: {name} is missing "
                "(expected adapter_config.json + adapter_model.safetensors)"
            )
    try:
        saved = json.loads((directory / CONFIG_FILE).read_text())
    except json.JSONDecodeError as err:
        raise AdapterError(f"{directory / CONFIG_FILE} is not valid JSON: {err}") from None
    if cfg is not None:
        _check_lora_matches(saved, cfg, directory)
    try:
        tensors = load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterError(
            f"{directory / WEIGHTS_FILE} is corrupt or not a safetensors file ({err}); "
            "copy the adapter again from the coordinator's output"
        ) from None
    return OrderedDict((k, tensors[k].astype(np.float32)) for k in sorted(tensors))


def read_adapter_metadata(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def _check_lora_matches(saved: dict[str, Any], cfg: ModelConfig, directory: Path) -> None:
    if saved.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{directory} holds a {saved.get('peft_type')} adapter, not LoRA")
    if int(saved.get("r", cfg.lora_r)) != cfg.lora_r:
        raise AdapterError(
            f"{directory} was trained with LoRA r={saved.get('r')}, the model is set to "
            f"r={cfg.lora_r}: set model.lora_r={saved.get('r')}"
        )
    targets = saved.get("target_modules")
    if targets is not None and sorted(targets) != sorted(cfg.target_module_list):
        raise AdapterError(
            f"{directory} adapts {sorted(targets)}, the model is set to "
            f"{cfg.target_module_list}: set model.target_modules={','.join(sorted(targets))}"
        )


def load_adapter(rec: Recommender, directory: str | Path) -> dict[str, Any]:
    """Load an adapter folder into ``rec``; returns its fedxrec metadata."""
    set_adapter_arrays(rec, read_adapter(directory, rec.config))
    return read_adapter_metadata(directory)
