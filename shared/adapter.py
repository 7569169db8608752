"""Adapter exchange and storage: the LoRA in peft's own format, the head beside it.

An adapter is an ordered mapping of names to float32 numpy arrays: the LoRA's peft state-dict names,
then the head's tensors as ``head.<name>`` (its trained parameters, then its fixed whitening). The
coordinator's messages carry all of it; a site's trained reply carries only what training changes
(``trained_arrays``: the whitening is set once by the coordinator and never trained), and the
coordinator puts the whitening back (``with_fixed``). On disk an adapter is a folder that
``peft.PeftModel.from_pretrained`` loads (``adapter_config.json`` + ``adapter_model.safetensors``:
the LoRA part only) with ``head.safetensors`` (the head) and our ``fedxrec.json`` (provenance and
the ``model.*`` settings the head was trained with) beside it. Never pickle.
"""

from __future__ import annotations

import dataclasses
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
from shared.head import HEAD_FORMAT, WHITENING
from shared.model import Recommender, build_recommender, lora_config

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
HEAD_FILE = "head.safetensors"
META_FILE = "fedxrec.json"
HEAD_PREFIX = "head."


class AdapterError(ValueError):
    """An adapter is missing, corrupt, or does not fit the model."""


FIXED = tuple(HEAD_PREFIX + name for name in WHITENING)  # set by the coordinator, never trained


def get_adapter_arrays(rec: Recommender) -> OrderedDict[str, np.ndarray]:
    """The LoRA (peft names) then the head (``head.<name>``: parameters, then the whitening)."""
    state = get_peft_model_state_dict(rec.model.peft_model)
    arrays = OrderedDict((k, v.detach().cpu().float().numpy().copy()) for k, v in state.items())
    for name, tensor in rec.head.state_dict().items():
        arrays[HEAD_PREFIX + name] = tensor.detach().cpu().float().numpy().copy()
    return arrays


def trained_arrays(arrays: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
    """What a site sends after training: every array but the fixed whitening."""
    return OrderedDict((k, v) for k, v in arrays.items() if k not in FIXED)


def with_fixed(
    trained: dict[str, np.ndarray], reference: dict[str, np.ndarray]
) -> OrderedDict[str, np.ndarray]:
    """A whole adapter: ``trained`` with the fixed whitening of ``reference`` (the global model
    the sites trained from), in ``reference``'s order."""
    missing = [k for k in reference if k not in FIXED and k not in trained]
    if missing:
        raise AdapterError(f"a trained adapter lacks {missing[:3]}: it does not fit the model")
    return OrderedDict((k, trained[k] if k not in FIXED else reference[k]) for k in reference)


_INITIAL: dict[tuple[ModelConfig, int], OrderedDict[str, np.ndarray]] = {}


def initial_adapter(
    cfg: ModelConfig, seed: int, whitening: dict[str, np.ndarray] | None = None
) -> OrderedDict[str, np.ndarray]:
    """A federation's round-0 adapter for ``seed``: a fresh LoRA (B = 0: the base encoder) and
    a fresh head, the same for every federation of this process with this seed, with the
    adaptor's ``whitening`` (``shared.whitening.whitening_arrays``; identity when None)."""
    key = (cfg, seed)
    if key not in _INITIAL:
        _INITIAL[key] = get_adapter_arrays(build_recommender(cfg, seed=seed))
    arrays = OrderedDict((k, v.copy()) for k, v in _INITIAL[key].items())
    for name, value in (whitening or {}).items():
        key_name = HEAD_PREFIX + name
        if key_name not in FIXED or arrays[key_name].shape != np.shape(value):
            raise AdapterError(
                f"whitening tensor '{name}' of shape {np.shape(value)} does not fit the model "
                f"(expects {arrays[key_name].shape if key_name in arrays else 'no such tensor'})"
            )
        arrays[key_name] = np.asarray(value, dtype=np.float32).copy()
    return arrays


def split_arrays(arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(LoRA arrays, head arrays without their prefix)."""
    lora = {k: v for k, v in arrays.items() if not k.startswith(HEAD_PREFIX)}
    head = {k[len(HEAD_PREFIX) :]: v for k, v in arrays.items() if k.startswith(HEAD_PREFIX)}
    return lora, head


def set_adapter_arrays(rec: Recommender, arrays: dict[str, np.ndarray]) -> None:
    """Load ``arrays`` into the model's LoRA and head, refusing anything that does not fit."""
    lora_state = get_peft_model_state_dict(rec.model.peft_model)
    shapes = {k: tuple(v.shape) for k, v in lora_state.items()}
    head_state = rec.head.state_dict()
    shapes.update({HEAD_PREFIX + k: tuple(t.shape) for k, t in head_state.items()})
    if not any(k.startswith(HEAD_PREFIX) for k in arrays) and arrays:
        raise AdapterError(
            "this adapter has no head (it holds LoRA weights only: a model made by an "
            "older fedxrec, whose users were one history text). It cannot rank with this "
            "version; train a new one with `fedxrec simulate` or a federation"
        )
    if any(k.startswith(HEAD_PREFIX) for k in arrays) and not any(k in arrays for k in FIXED):
        raise AdapterError(
            "this adapter's head is the pooling head of an older fedxrec (no item adaptor, no "
            "transformer); this version ranks with a transformer head and cannot use it. Train "
            "a new one with `fedxrec simulate` or a federation"
        )
    check_arrays_fit(arrays, shapes)
    lora, head = split_arrays(arrays)
    state = {
        k: torch.as_tensor(np.asarray(v, dtype=np.float32)).to(rec.device) for k, v in lora.items()
    }
    result = set_peft_model_state_dict(rec.model.peft_model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise AdapterError(f"adapter has tensors the model does not: {unexpected[:3]}")
    with torch.no_grad():
        for name, tensor in head_state.items():
            tensor.copy_(torch.as_tensor(np.asarray(head[name], dtype=np.float32)))


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
                f"adapter tensor '{name}' has shape {got}, the model expects {shape}: check "
                "model.lora_r, model.dim, model.history_items, model.blocks and model.encoder "
                "match the federation's"
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
        lora_arrays, head_arrays = split_arrays(arrays)
        if not head_arrays:
            raise AdapterError("an adapter needs its head (head.* arrays)")
        for name, part in ((WEIGHTS_FILE, lora_arrays), (HEAD_FILE, head_arrays)):
            tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in part.items()}
            save_file(tensors, str(tmp / name), metadata={"format": "pt"})
        settings = {f"model.{k}": v for k, v in dataclasses.asdict(cfg).items() if k != "encoder"}
        meta = {
            "adapter_hash": adapter_hash(arrays),
            "head_format": HEAD_FORMAT,
            **settings,
            **(metadata or {}),
        }
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
    check_lora_config(saved, directory)
    if cfg is not None:
        _check_lora_matches(saved, cfg, directory)
    if not (directory / HEAD_FILE).is_file():
        raise AdapterError(
            f"{directory} has no {HEAD_FILE}: it is a LoRA-only adapter from an older fedxrec "
            "(users were one history text), which this version cannot rank with. Train a new "
            "one with `fedxrec simulate` or a federation, or copy the whole adapter folder"
        )
    lora = _read_tensors(directory / WEIGHTS_FILE)
    head = _read_tensors(directory / HEAD_FILE)
    arrays = OrderedDict((k, lora[k].astype(np.float32)) for k in sorted(lora))
    for k in sorted(head):
        arrays[HEAD_PREFIX + k] = head[k].astype(np.float32)
    return arrays


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterError(
            f"{path} is corrupt or not a safetensors file ({err}); "
            "copy the adapter again from the coordinator's output"
        ) from None


def read_adapter_metadata(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterError(
            f"{path} is not valid JSON ({err}); copy the adapter folder again from where it was "
            "written (the coordinator's output or the site's state-dir/personal)"
        ) from None
    if not isinstance(meta, dict):
        raise AdapterError(
            f"{path} holds a JSON {type(meta).__name__}, not an object of the adapter's settings; "
            "copy the adapter folder again from where it was written"
        )
    return meta


def check_lora_config(saved: Any, directory: Path) -> dict[str, Any]:
    """The fields of ``adapter_config.json`` fedxrec reads, with their types checked."""
    path = directory / CONFIG_FILE
    if not isinstance(saved, dict):
        raise AdapterError(f"{path} is not a JSON object: not a peft adapter config")
    problems = []
    r = saved.get("r", 1)
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        problems.append(f"r = {r!r} (a positive integer)")
    alpha = saved.get("lora_alpha", 1)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha <= 0:
        problems.append(f"lora_alpha = {alpha!r} (a positive number)")
    targets = saved.get("target_modules", [])
    if not (
        isinstance(targets, str)
        or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))
    ):
        problems.append(f"target_modules = {targets!r} (module names)")
    if not isinstance(saved.get("peft_type", "LORA"), str):
        problems.append(f"peft_type = {saved.get('peft_type')!r}")
    if problems:
        raise AdapterError(
            f"{path} has fields of the wrong type: {'; '.join(problems)}. Copy the adapter "
            "folder again from the coordinator's output"
        )
    return saved


def _check_lora_matches(saved: dict[str, Any], cfg: ModelConfig, directory: Path) -> None:
    if saved.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{directory} holds a {saved.get('peft_type')} adapter, not LoRA")
    if int(saved.get("r", cfg.lora_r)) != cfg.lora_r:
        raise AdapterError(
            f"{directory} was trained with LoRA r={saved.get('r')}, the model is set to "
            f"r={cfg.lora_r}: set model.lora_r={saved.get('r')}"
        )
    targets = saved.get("target_modules")
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    if targets is not None and sorted(targets) != sorted(cfg.target_module_list):
        raise AdapterError(
            f"{directory} adapts {sorted(targets)}, the model is set to "
            f"{cfg.target_module_list}: set model.target_modules={','.join(sorted(targets))}"
        )


def load_adapter(rec: Recommender, directory: str | Path) -> dict[str, Any]:
    """Load an adapter folder into ``rec``; returns its fedxrec metadata."""
    set_adapter_arrays(rec, read_adapter(directory, rec.config))
    return read_adapter_metadata(directory)
