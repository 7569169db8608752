"""Process-wide settings every fedxrec entry point applies before it loads a model or Flower.

The entry points call ``set_process_defaults()``: the `fedxrec` CLI, the ClientApp and the
ServerApp. A library module never changes the environment on import.

Library noise a user cannot act on is silenced here, and only that: Hugging Face's "Loading
weights" progress bar (every model load), and transformers' FutureWarning about
``is_gradient_checkpointing``, which peft itself triggers when it wraps the encoder. fedxrec's own
progress bars (tqdm, e.g. "encoding items") and every other warning stay.
"""

from __future__ import annotations

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
