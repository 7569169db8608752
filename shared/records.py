"""What crosses the wire, one spelling each: adapters as named float32 arrays in an ArrayRecord
(numpy format, no pickle), and a site's training report as a ``TrainingRecord`` (the same field
names in the Flower message, in metrics.json and in every report)."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.common import Parameters, ndarrays_to_parameters, parameters_to_ndarrays


@dataclass(frozen=True)
class TrainingRecord:
    """A site's report of one training round (or of its personalisation).

    Aggregates, not covered by DP (README "Privacy guarantee" says so): nothing here is a vector.
    ``users`` is also the site's FedAvg weight.
    """

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

    def to_record(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> TrainingRecord:
        """From a MetricRecord or metrics.json entry; a missing field is a protocol error."""
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in record]
        if missing:
            raise ValueError(
                f"a site's training report lacks {missing}: the site and the coordinator run "
                "different fedxrec versions"
            )
        values = {
            f.name: (int if f.type == "int" else float)(record[f.name])  # type: ignore[call-overload]
            for f in dataclasses.fields(cls)
        }
        return cls(**values)


def to_array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(
        {k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()}
    )


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
