"""Adapters in Flower messages: named float32 arrays in an ArrayRecord (numpy format, no pickle)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.common import Parameters, ndarrays_to_parameters, parameters_to_ndarrays


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
