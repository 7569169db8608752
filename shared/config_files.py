"""Where settings come from besides code: a TOML file of tables and ``--set KEY=VALUE`` overrides,
both read into flat ``{"section.key": value}`` mappings that ``FedxrecConfig.with_overrides``
checks."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

from shared.config import ConfigError


def read_toml_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    flat: dict[str, Any] = {}
    for sec, table in data.items():
        if not isinstance(table, dict):
            flat[sec] = table  # a dotted top-level key; checked by with_overrides
            continue
        for key, value in table.items():
            flat[f"{sec}.{key}"] = value
    return flat


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``["train.batch_size=64", ...]``; values are TOML scalars, bare words are strings."""
    flat: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        flat[key.strip()] = value
    return flat


def add_config_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """``--config FILE`` and repeatable ``--set KEY=VALUE``, read by ``FedxrecConfig.load``."""
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML file with [model], [train], [privacy], [federation], [data] tables",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override any setting, e.g. --set {example} (repeatable)",
    )
