"""What crosses the wire, one spelling each.

Adapters travel as named float32 arrays in an ArrayRecord (numpy format, no pickle). Everything
else is a typed record whose field names are the keys in the Flower message, in metrics.json and
in every report:

- coordinator → site: ``TrainInstruction`` (a round), ``PersonalizeInstruction`` (the site's
  fine-tune after the last round, its own message type ``PERSONALIZE``), ``EvaluateInstruction``;
- site → coordinator: ``SiteInfo`` (which platform a node is), ``TrainingRecord`` (a round's or
  the personalisation's report), ranking metrics per split, or an error whose code is a
  ``SiteRefusal``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, MessageType
from flwr.common import Parameters, ndarrays_to_parameters, parameters_to_ndarrays

PERSONALIZE = f"{MessageType.TRAIN}.personalize"  # ClientApp: @app.train("personalize")
SPLITS = ("validation", "test")
R = TypeVar("R", bound="_FlatRecord")


class ProtocolError(ValueError):
    """A message lacks a field or carries one of the wrong type: mismatched fedxrec versions."""


class _FlatRecord:
    """A frozen dataclass of scalars that travels as a flat Flower record (Config/MetricRecord).

    A field whose default is None is optional: left out of the record when None.
    """

    KIND: ClassVar[str] = "record"

    def to_record(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}  # type: ignore[call-overload]

    @classmethod
    def from_record(cls: type[R], record: Mapping[str, Any]) -> R:
        values: dict[str, Any] = {}
        missing = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name not in record:
                if f.default is dataclasses.MISSING:
                    missing.append(f.name)
                continue
            values[f.name] = _typed(cls.KIND, f.name, str(f.type), record[f.name])
        if missing:
            raise ProtocolError(
                f"a {cls.KIND} lacks {missing}: the site and the coordinator run different "
                "fedxrec versions"
            )
        return cls(**values)


def _typed(kind: str, name: str, annotation: str, value: Any) -> Any:
    base = annotation.replace(" | None", "")
    try:
        if base == "int":
            if isinstance(value, bool) or float(value) != int(value):
                raise ValueError
            return int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
        if base == "tuple[str, ...]":
            return tuple(p for p in str(value).split(",") if p) if isinstance(value, str) else ()
    except (TypeError, ValueError):
        pass
    raise ProtocolError(f"a {kind}'s {name} is {value!r}, not a {base}")


@dataclass(frozen=True)
class TrainingRecord(_FlatRecord):
    """A site's report of one training round (or of its personalisation).

    Aggregates, not covered by DP (README "Privacy guarantee" says so): nothing here is a vector.
    ``users`` is also the site's FedAvg weight.
    """

    KIND: ClassVar[str] = "site's training report"

    loss: float  # mean per-user loss over the users sampled
    epsilon: float  # spent so far, this round included (inf without DP)
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    lora_steps: int
    users: int  # users on the platform that can be trained on
    examples: int  # users sampled, summed over steps
    seconds: float
    ledger_releases: int  # releases in the site's privacy ledger after this one (0 without DP)


@dataclass(frozen=True)
class PersonalChoice(_FlatRecord):
    """What a site keeps after personalising: ``mix`` α of its fine-tune and the global model
    (α·personal + (1 − α)·global; 0 = the global model), chosen on its validation split. A mix
    replaces the global model only when its mean per-user NDCG@10 gain is at least
    ``train.personalize_min_z`` standard errors: on a small site the fine-tune is mostly noise.
    Aggregates, not covered by DP (like every metric in a reply)."""

    KIND: ClassVar[str] = "site's personalisation choice"

    mix: float
    validation_gain: float  # mean per-user validation NDCG@10 gain of the best mix
    standard_error: float  # of that gain (paired over the site's validation users)
    users: int  # validation users it was measured on


@dataclass(frozen=True)
class TrainInstruction(_FlatRecord):
    """What a train message tells a site besides the global adapter.

    ``ledger_releases``/``ledger_epsilon``: what the site's privacy ledger showed when it last
    reported in this federation (None before its first report). A site whose ledger shows less
    (deleted, rolled back) refuses rather than spend its budget again.
    """

    KIND: ClassVar[str] = "train instruction"

    server_round: int
    ledger_releases: int | None = None
    ledger_epsilon: float | None = None

    @property
    def expected_ledger(self) -> tuple[int, float] | None:
        if self.ledger_releases is None or self.ledger_epsilon is None:
            return None
        return self.ledger_releases, self.ledger_epsilon


@dataclass(frozen=True)
class PersonalizeInstruction(TrainInstruction):
    """After the last round: fine-tune the global model on the site's users and keep it there;
    evaluate it on ``validation_users`` validation users (0 = all) and every test user."""

    KIND: ClassVar[str] = "personalisation instruction"

    validation_users: int = 0


@dataclass(frozen=True)
class EvaluateInstruction(_FlatRecord):
    """Rank ``splits`` with the message's adapter: ``validation_users`` validation users (the first
    N by ID, 0 = all); the test split always ranks every user."""

    KIND: ClassVar[str] = "evaluate instruction"

    splits: tuple[str, ...]
    validation_users: int = 0

    def to_record(self) -> dict[str, Any]:
        return {"splits": ",".join(self.splits), "validation_users": self.validation_users}

    def users(self) -> dict[str, int]:
        """Split → users to rank (0 = all)."""
        unknown = [s for s in self.splits if s not in SPLITS]
        if unknown or not self.splits:
            raise ProtocolError(f"an evaluate instruction names splits {list(self.splits)}")
        return {s: self.validation_users if s == "validation" else 0 for s in self.splits}


@dataclass(frozen=True)
class SiteInfo(_FlatRecord):
    """A site's answer to the coordinator's query: which platform this node is."""

    KIND: ClassVar[str] = "site's query reply"

    platform: str
    users: int
    items: int


class SiteRefusal(enum.IntEnum):
    """Error codes of a site's refusal; the coordinator reports them by name."""

    BUDGET_EXHAUSTED = 4001  # the site's privacy budget cannot pay for the step asked
    SITE_FAILED = 4002  # bad data, config, adapter or ledger: the reason says the fix


def refusal_text(code: int, reason: str) -> str:
    """A site's error as the coordinator reports it: what kind of refusal, then the reason."""
    try:
        kind = {
            SiteRefusal.BUDGET_EXHAUSTED: "privacy budget exhausted",
            SiteRefusal.SITE_FAILED: "site failed",
        }[SiteRefusal(code)]
    except ValueError:
        kind = f"Flower error {code}"
    return f"{kind}: {reason}"


def to_array_record(arrays: dict[str, np.ndarray], dtype: type = np.float32) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=dtype)) for k, v in arrays.items()})


def from_array_record(record: ArrayRecord) -> OrderedDict[str, np.ndarray]:
    return OrderedDict((k, record[k].numpy()) for k in record)


# SecAgg+ runs on Flower's legacy workflow, whose messages carry an unnamed list of arrays
# ("Parameters"). Both sides order that list like the adapter's state dict, which the same
# model.* settings make identical; the names go back on with ``from_parameters``.


def to_parameters(arrays: dict[str, np.ndarray]) -> Parameters:
    return ndarrays_to_parameters([np.asarray(v, dtype=np.float32) for v in arrays.values()])


def from_parameters(parameters: Parameters, names: list[str]) -> OrderedDict[str, np.ndarray]:
    values = parameters_to_ndarrays(parameters)
    if len(values) != len(names):
        raise ValueError(
            f"received {len(values)} arrays for an adapter of {len(names)} tensors: "
            "the sites and the coordinator must use the same model.* settings"
        )
    return OrderedDict(
        (k, np.asarray(v, dtype=np.float32)) for k, v in zip(names, values, strict=True)
    )


def array_record_nbytes(record: ArrayRecord) -> int:
    """Bytes of array payload a record carries over the wire (numpy-serialised tensors)."""
    return int(sum(len(record[k].data) for k in record))
