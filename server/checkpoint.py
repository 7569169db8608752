"""The coordinator's checkpoint: what a stopped federation needs to continue where it stopped.

After every completed round the coordinator has written the round's global adapter
(``rounds/round-NNN``, peft format) and ``metrics.json``; then it writes ``checkpoint.json``
atomically, last. So the checkpoint only ever names a round whose adapter and metrics are on disk,
and ``federation.resume=true`` continues at the round after it: no round lost, none repeated.

It holds the round number, the adapter's path and hash, the strategy's state (FedAvg keeps none
beyond the global adapter: the checkpoint records how it aggregates), the model settings the
adapter fits, the zero-shot test figures the final report compares against, and how many releases
and how much ε each site's ledger showed when it last reported.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CHECKPOINT_FILE = "checkpoint.json"


class CheckpointError(ValueError):
    """There is no usable checkpoint to resume from."""


@dataclass
class Checkpoint:
    round: int  # the last completed round (0 = only the initial adapter)
    adapter: str  # the round's global adapter, relative to out_dir
    adapter_hash: str
    metrics: str  # the metrics file, relative to out_dir
    strategy: dict[str, Any]
    model: dict[str, Any]  # model.* settings the adapter fits
    zero_shot_test: dict[str, dict[str, float]]
    run_ids: list[str] = field(default_factory=list)  # every Flower run that worked on it
    # platform -> [releases, ε] its privacy ledger showed when it last reported: a site whose
    # ledger shows less after a restart (lost, rolled back) is refused
    ledgers: dict[str, list[float]] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def write(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".checkpoint.")
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(self), fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out / CHECKPOINT_FILE)
        return out / CHECKPOINT_FILE

    @classmethod
    def read(cls, out_dir: str | Path) -> Checkpoint:
        path = Path(out_dir) / CHECKPOINT_FILE
        if not path.is_file():
            raise CheckpointError(
                f"nothing to resume: {path} does not exist. Start the federation without "
                "federation.resume, or point federation.out_dir at the stopped federation's folder"
            )
        try:
            return cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as err:
            raise CheckpointError(f"checkpoint {path} is unreadable ({err})") from None
