"""Process-wide settings every fedxrec entry point applies before it loads a model or Flower.

The entry points call ``set_process_defaults()``: the `fedxrec` CLI, the ClientApp and the
ServerApp. A library module never changes the environment on import.
"""

from __future__ import annotations

import os

DEFAULTS = {
    "HF_HUB_OFFLINE": "1",  # nothing is downloaded at run time
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",  # Flower and Ray fork; the tokenizer's threads must not
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
}


def set_process_defaults() -> None:
    """Set each default unless the user set it already."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
