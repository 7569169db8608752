"""Process-wide settings every fedxrec entry point applies before it loads a model or Flower.

The entry points call ``set_process_defaults()``: the `fedxrec` CLI, the ClientApp and the
ServerApp. A library module never changes the environment on import.

Library noise a user cannot act on is silenced here, and only that: Hugging Face's "Loading
weights" progress bar (every model load), and transformers' FutureWarning about
``is_gradient_checkpointing``, which peft itself triggers when it wraps the encoder. fedxrec's own
progress bars (tqdm, e.g. "encoding items") and every other warning stay.

A training process (the ClientApp, the ServerApp, and with them every in-process federation of
`simulate` and `compare`) also calls ``keep_freed_memory()``: glibc's malloc gives every large
block back to the operating system when it is freed, and a DP step allocates and frees hundreds
of MB of per-user tensors, so every step paid page faults to get them back. Training the demo's
largest site alone took 88 s, 52 s of it system time; keeping the memory, 46 s (3 s), at a peak
of 2.5 GB instead of 1.6 GB. A long-running service does not call it: it would keep its peak
for good.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings

DEFAULTS = {
    "HF_HUB_OFFLINE": "1",  # nothing is downloaded at run time
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",  # Flower and Ray fork; the tokenizer's threads must not
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    # Hugging Face's progress bars (transformers reads it when it is imported; children inherit it)
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}
# (message regex, category) of library warnings that say nothing to a fedxrec user
SILENCED_WARNINGS = (
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
    # Opacus' per-row hooks on the encoder in a LoRA step, whose input ids need no gradient
    (
        r"Full backward hook is firing when gradients are computed with respect to module",
        UserWarning,
    ),
)


def set_process_defaults() -> None:
    """Set each default unless the user set it already, and silence the libraries' noise."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    for message, category in SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        # A library imported before this call read the variable too early: tell it directly.
        hub_utils = sys.modules.get("huggingface_hub.utils")
        if hub_utils is not None:
            hub_utils.disable_progress_bars()
        hf_logging = sys.modules.get("transformers.utils.logging")
        if hf_logging is not None:
            hf_logging.disable_progress_bar()


# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
KEPT_MEMORY_SETTINGS = (
    (M_MMAP_MAX, 0),  # no block of its own mapping, returned to the OS on free: from the heap
    (M_TRIM_THRESHOLD, 2**31 - 1),  # the heap's free top is not handed back below 2 GiB
    (M_TOP_PAD, 1 << 30),  # the heap grows 1 GiB (of address space) at a time
)


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse what the process frees instead of returning it to the OS
    (training processes only: the process keeps its peak). False where the C library is not
    glibc (nothing changed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in KEPT_MEMORY_SETTINGS)
