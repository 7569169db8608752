"""fedxrec's configuration: one dataclass per concern, validated on load.

The same configuration reaches every component as a flat mapping of ``"section.key"`` to scalars,
because that is what Flower's run config carries (``[tool.flwr.app.config]`` / ``--run-config``).
``FedxrecConfig.from_flat`` is the one place where such a mapping is checked and turned into objects.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


class _Section:
    """A configuration section: its values are type-checked and validated when it is built, so
    no section exists with a wrong value, however it was made (``from_flat``, a constructor,
    ``dataclasses.replace``)."""

    SECTION: ClassVar[str]

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            key = f"{self.SECTION}.{f.name}"
            value = getattr(self, f.name)
            object.__setattr__(self, f.name, _coerce(key, value, type(f.default), strict=True))
        self.validate()

    def validate(self) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class ModelConfig(_Section):
    SECTION: ClassVar[str] = "model"

    encoder: str = ""  # HF name or local path; "" = the installed all-MiniLM-L6-v2 package
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: str = "query,value"
    max_item_tokens: int = 32
    history_items: int = 50  # the transformer reads the user's N most recent items
    dim: int = 64  # item and user vectors (the adaptor's output, the transformer's width)
    blocks: int = 2  # causal self-attention blocks
    heads: int = 1  # attention heads per block (dim must divide by it)
    dropout: float = 0.0  # in the transformer, while training (off under DP: noise enough)

    def validate(self) -> None:
        _check(self.lora_r >= 1, "model.lora_r", "must be >= 1")
        _check(self.lora_alpha >= 1, "model.lora_alpha", "must be >= 1")
        _check(0.0 <= self.lora_dropout < 1.0, "model.lora_dropout", "must be in [0, 1)")
        _check(bool(self.target_module_list), "model.target_modules", "names no module")
        _check(4 <= self.max_item_tokens <= 512, "model.max_item_tokens", "must be in [4, 512]")
        _check(1 <= self.history_items <= 1024, "model.history_items", "must be in [1, 1024]")
        _check(1 <= self.dim <= 4096, "model.dim", "must be in [1, 4096]")
        _check(1 <= self.blocks <= 64, "model.blocks", "must be in [1, 64]")
        _check(
            1 <= self.heads <= self.dim and self.dim % self.heads == 0,
            "model.heads",
            "must be >= 1 and divide model.dim",
        )
        _check(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)")

    @property
    def target_module_list(self) -> list[str]:
        return [m.strip() for m in self.target_modules.split(",") if m.strip()]


@dataclass(frozen=True)
class TrainConfig(_Section):
    SECTION: ClassVar[str] = "train"

    """One DP-SGD step = one Poisson sample of the site's users; one user = one example."""

    steps: int = 20  # steps per round at each site
    batch_size: int = 512  # expected (Poisson) batch size, in users
    learning_rate: float = 0.001  # Adam, the head (item adaptor + transformer)
    lora_steps: int = 0  # steps per round that also train the encoder's LoRA (0 = head only)
    lora_items: int = 1  # a user's most recent items encoded with gradient in a LoRA step
    lora_learning_rate: float = 1e-3  # Adam, LoRA
    personalize_steps: int = 100  # after the federation, DP steps on the site's own users
    # The fine-tune (or a mix of it and the global model) replaces the global model only when its
    # validation NDCG@10 gain is at least this many standard errors (0: the better one, always).
    personalize_min_z: float = 1.645
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads; 0 = leave torch's default

    def validate(self) -> None:
        _check(1 <= self.steps <= 100000, "train.steps", "must be in [1, 100000]")
        _check(1 <= self.batch_size <= 1 << 20, "train.batch_size", "must be in [1, 1048576]")
        _check(0.0 < self.learning_rate < 1.0, "train.learning_rate", "must be in (0, 1)")
        _check(
            0 <= self.lora_steps <= self.steps,
            "train.lora_steps",
            "must be in [0, train.steps]",
        )
        _check(1 <= self.lora_items <= 64, "train.lora_items", "must be in [1, 64]")
        _check(0.0 < self.lora_learning_rate < 1.0, "train.lora_learning_rate", "must be in (0, 1)")
        _check(
            0 <= self.personalize_steps <= 100000,
            "train.personalize_steps",
            "must be in [0, 100000]",
        )
        _check(
            0.0 <= self.personalize_min_z <= 10.0,
            "train.personalize_min_z",
            "must be in [0, 10] (standard errors; 0 = keep the better model whatever the margin)",
        )
        _check(self.device in ("auto", "cpu", "cuda"), "train.device", "must be auto, cpu or cuda")
        _check(self.threads >= 0, "train.threads", "must be >= 0")


def default_delta(num_users: int) -> float:
    """δ ≪ 1/users, as publishing DP results asks: 1/(10·users), and at most 1e-5."""
    return min(1e-5, 0.1 / num_users)


# Below this σ the accountant's ε is useless at any budget a site would set (σ = 0.5, q = 0.1,
# 1,000 steps: ε ≈ 126) and Opacus' PRV accountant's memory grows without bound (σ = 0.5: 0.9 GB
# and 5 s; 0.3: 2.4 GB and 17 s; 0.1: not done in 2 min), so neither a config nor a ledger may
# carry a smaller one.
MIN_NOISE_MULTIPLIER = 0.5


@dataclass(frozen=True)
class PrivacyConfig(_Section):
    SECTION: ClassVar[str] = "privacy"

    enabled: bool = True
    epsilon: float = 8.0  # per-site budget for the whole federation (user-level)
    delta: float = 0.0  # 0 = min(1e-5, 1 / (10 · users on the platform))
    max_grad_norm: float = 1.0
    noise_multiplier: float = 0.0  # 0 = the smallest that fits epsilon over the planned rounds
    # A site refuses to train when the σ that fits its remaining budget is above this: its
    # updates would be noise (an exhausted budget), and it says how much budget is left.
    max_noise_multiplier: float = 20.0
    accountant: str = "prv"  # prv | rdp
    # Optional, the site's own: user-level DP for the counts its final ranking fuses in (ItemKNN,
    # popularity, EASE), a budget separate from the federation's; 0 = exact counts.
    local_epsilon: float = 0.0
    local_max_items: int = 20  # distinct items counted per user (their most recent)

    def validate(self) -> None:
        _check(self.epsilon > 0 or not self.enabled, "privacy.epsilon", "must be > 0")
        _check(
            math.isfinite(self.epsilon) or not self.enabled,
            "privacy.epsilon",
            "is infinite: for training without DP set privacy.enabled=false (--no-dp)",
        )
        _check(self.max_noise_multiplier > 0, "privacy.max_noise_multiplier", "must be > 0")
        _check(0.0 <= self.delta < 1.0, "privacy.delta", "must be in [0, 1)")
        _check(self.max_grad_norm > 0, "privacy.max_grad_norm", "must be > 0")
        _check(
            self.noise_multiplier == 0 or self.noise_multiplier >= MIN_NOISE_MULTIPLIER,
            "privacy.noise_multiplier",
            f"must be 0 (the site chooses σ for its budget) or >= {MIN_NOISE_MULTIPLIER}: a "
            "smaller σ buys a useless ε and accounting for it exhausts the memory",
        )
        _check(self.accountant in ("prv", "rdp"), "privacy.accountant", "must be prv or rdp")
        _check(
            self.local_epsilon >= 0 and math.isfinite(self.local_epsilon),
            "privacy.local_epsilon",
            "must be >= 0 and finite (0 = exact counts)",
        )
        _check(self.local_max_items >= 1, "privacy.local_max_items", "must be >= 1")


@dataclass(frozen=True)
class FederationConfig(_Section):
    SECTION: ClassVar[str] = "federation"

    rounds: int = 5
    platforms: int = 0  # sites to wait for before round 1; 0 = the simulation's platform count
    min_nodes: int = 0  # successful replies a round needs to count; 0 = every platform
    round_timeout: float = 3600.0  # seconds to wait for the sites' replies in a round
    eval_users: int = 200  # users per platform in each round's validation (0 = all); test uses all
    seed: int = 0  # initial adapter
    out_dir: str = ""  # where the coordinator writes adapters, metrics and its checkpoint
    resume: bool = False  # continue the federation checkpointed in out_dir after its last round
    # Secure aggregation (Flower's SecAgg+): the coordinator only ever sees the sum of adapters.
    secure_aggregation: bool = False
    secagg_shares: int = 3  # pieces each site's masking secrets are split into (> 2)
    secagg_threshold: int = 2  # pieces needed to unmask a site that dropped out (< shares)
    secagg_clipping_range: float = 2.0  # adapter weights must lie in ±this before quantisation
    secagg_quantization_bits: int = 24  # levels per weight: 2**bits over the clipping range
    secagg_max_weight: float = 0.0  # largest per-site weight (users); 0 = the largest platform

    def validate(self) -> None:
        _check(1 <= self.rounds <= 10000, "federation.rounds", "must be in [1, 10000]")
        _check(self.platforms >= 0, "federation.platforms", "must be >= 0")
        _check(self.min_nodes >= 0, "federation.min_nodes", "must be >= 0")
        _check(self.round_timeout > 0, "federation.round_timeout", "must be > 0")
        _check(self.eval_users >= 0, "federation.eval_users", "must be >= 0")
        _check(self.secagg_shares >= 3, "federation.secagg_shares", "must be >= 3")
        _check(
            2 <= self.secagg_threshold < self.secagg_shares,
            "federation.secagg_threshold",
            "must be >= 2 and below federation.secagg_shares",
        )
        _check(self.secagg_clipping_range > 0, "federation.secagg_clipping_range", "must be > 0")
        # The masked sums live modulo 2**32: leave room for adding up to 2**(32 - bits) sites.
        _check(
            8 <= self.secagg_quantization_bits <= 28,
            "federation.secagg_quantization_bits",
            "must be in [8, 28]",
        )
        _check(self.secagg_max_weight >= 0, "federation.secagg_max_weight", "must be >= 0")
        _check(
            not self.resume or bool(self.out_dir),
            "federation.resume",
            "needs federation.out_dir, the folder holding the checkpoint to continue from",
        )


PARTITIONS = ("genres", "sites", "domains")


@dataclass(frozen=True)
class DataConfig(_Section):
    SECTION: ClassVar[str] = "data"

    dataset: str = "ml-100k"  # ml-100k | ml-1m | a folder with interactions + items files
    # the platforms to use: genre groups of MovieLens, sub-folders of your own data ("" = all)
    platforms: str = ""
    max_users: int = 0  # keep at most this many users per platform (0 = all)
    min_user_interactions: int = (
        3  # users with fewer on a platform are dropped (need train+val+test)
    )
    seed: int = 0
    # How a MovieLens data set becomes platforms: "genres" (genre slices of the same users),
    # "sites" (disjoint users, each site its own share of the catalogue under its own IDs) or
    # "domains" (disjoint users and genre catalogues); see simulations/data/sites.py.
    partition: str = "genres"
    site_users: str = "2000,1000,500,250,125"  # "sites": users per site, largest first
    catalogue_share: float = 0.6  # "sites": the share of the catalogue each site carries

    def validate(self) -> None:
        _check(self.max_users >= 0, "data.max_users", "must be >= 0")
        _check(self.min_user_interactions >= 3, "data.min_user_interactions", "must be >= 3")
        _check(
            self.partition in PARTITIONS,
            "data.partition",
            f"must be one of {', '.join(PARTITIONS)}",
        )
        try:
            sizes = self.site_user_counts
        except ValueError:
            sizes = []
        _check(
            bool(sizes) and all(n >= 1 for n in sizes),
            "data.site_users",
            "must be comma-separated positive user counts, e.g. 2000,1000,500,250,125",
        )
        _check(0.0 < self.catalogue_share <= 1.0, "data.catalogue_share", "must be in (0, 1]")

    @property
    def site_user_counts(self) -> list[int]:
        return [int(n) for n in self.site_users.split(",") if n.strip()]

    @property
    def platform_list(self) -> list[str]:
        return [p.strip() for p in self.platforms.split(",") if p.strip()]


@dataclass(frozen=True)
class SimulationConfig(_Section):
    SECTION: ClassVar[str] = "simulation"

    """Where a single-machine simulation keeps each platform's files (set by `fedxrec simulate`)."""

    platform_root: str = ""  # one sub-folder per platform: interactions.jsonl, items.jsonl
    state_root: str = ""  # one sub-folder per platform: the site's privacy ledger
    platform_names: str = ""  # comma-separated, indexed by the simulated node's partition-id

    def validate(self) -> None:
        pass


@dataclass(frozen=True)
class FedxrecConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)

    def validate(self) -> FedxrecConfig:
        for f in fields(self):
            getattr(self, f.name).validate()
        return self

    # -- flat "section.key" mappings (Flower's run config) ---------------------------------
    def to_flat(self) -> dict[str, Any]:
        return {
            f"{sec.name}.{key}": value
            for sec in fields(self)
            for key, value in dataclasses.asdict(getattr(self, sec.name)).items()
        }

    @classmethod
    def from_flat(cls, flat: dict[str, Any], *, ignore_unknown: bool = False) -> FedxrecConfig:
        """Build a validated config from ``{"section.key": value}``; unset keys keep defaults."""
        return cls().with_overrides(flat, ignore_unknown=ignore_unknown)

    def with_overrides(
        self, flat: dict[str, Any], *, ignore_unknown: bool = False
    ) -> FedxrecConfig:
        sections = {f.name: dataclasses.asdict(getattr(self, f.name)) for f in fields(self)}
        known = list(self.to_flat())
        for dotted, value in flat.items():
            sec, _, key = str(dotted).partition(".")
            if sec not in sections or key not in sections[sec]:
                if ignore_unknown:
                    continue
                hint = difflib.get_close_matches(str(dotted), known, n=1)
                fix = f" Did you mean '{hint[0]}'?" if hint else ""
                raise ConfigError(
                    f"unknown configuration key '{dotted}'.{fix} Valid keys: {', '.join(known)}"
                )
            default = sections[sec][key]
            sections[sec][key] = _coerce(dotted, value, type(default))
        built = {f.name: type(getattr(self, f.name))(**sections[f.name]) for f in fields(self)}
        return type(self)(**built).validate()

    @classmethod
    def load(
        cls, path: str | Path | None = None, overrides: list[str] | None = None
    ) -> FedxrecConfig:
        """Defaults, then a TOML file (sections as tables), then ``key=value`` overrides."""
        from shared.config_files import parse_overrides, read_toml_config  # they raise ConfigError

        config = cls()
        if path:
            config = config.with_overrides(read_toml_config(path))
        if overrides:
            config = config.with_overrides(parse_overrides(overrides))
        return config.validate()


def _coerce(key: str, value: Any, kind: type, *, strict: bool = False) -> Any:
    """``value`` as a ``kind``; ``strict`` (a section built in code) takes only the type itself
    (an int for a float), a run config or a command line also takes its spellings ("true", 3.0
    for an int, a number for a string)."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if not strict and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if not strict and isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isnan(float(value)):
                raise ConfigError(f"configuration key '{key}' is NaN")
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
        if not strict and isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(
        f"configuration key '{key}' expects {'an' if kind is int else 'a'} {kind.__name__}, got "
        f"{value!r} ({type(value).__name__})"
    )


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"configuration key '{key}' {message}")
