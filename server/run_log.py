"""What a federation leaves behind in ``metrics.json``: every round's per-platform figures.

Written atomically after every round, so a stopped federation keeps every completed round.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shared.config import FedxrecConfig
from shared.records import PersonalChoice, TrainingRecord

SPLIT = "chronological leave-last-out per user (test = last item, validation = second-last)"
METRICS_FILE = "metrics.json"


@dataclass
class FederationLog:
    run_id: str
    config: dict[str, Any]
    dataset: str
    split: str = SPLIT
    started: float = field(default_factory=time.time)
    platforms: dict[str, dict[str, int]] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    completed_rounds: int = 0
    resumed: list[dict[str, Any]] = field(default_factory=list)  # runs that continued it
    personalization: dict[str, dict[str, Any]] = field(default_factory=dict)  # per platform

    @classmethod
    def start(cls, cfg: FedxrecConfig, run_id: str) -> FederationLog:
        return cls(run_id=run_id, config=cfg.to_flat(), dataset=cfg.data.dataset)

    @classmethod
    def read(cls, out_dir: str | Path) -> FederationLog:
        data = json.loads((Path(out_dir) / METRICS_FILE).read_text())
        return cls(**data)

    def record_platform(self, name: str, users: int, items: int) -> None:
        self.platforms[name] = {"users": users, "items": items}

    def _round(self, server_round: int) -> dict[str, Any]:
        if not self.rounds or self.rounds[-1]["round"] != server_round:
            self.rounds.append({"round": server_round, "platforms": {}, "refused": {}})
        return self.rounds[-1]

    def record_training(
        self,
        server_round: int,
        records: dict[str, TrainingRecord],
        refused: dict[str, str],
        bytes_up: dict[str, int] | None = None,
    ) -> None:
        entry = self._round(server_round)
        for name, record in records.items():
            entry["platforms"].setdefault(name, {}).update(record.to_record())
        for name, nbytes in (bytes_up or {}).items():
            entry["platforms"].setdefault(name, {})["bytes_up"] = nbytes
        entry["refused"].update(refused)

    def resume_after(self, server_round: int, run_id: str, config: dict[str, Any]) -> None:
        """Forget anything past ``server_round`` (the checkpoint's) and note the new run."""
        self.rounds = [r for r in self.rounds if r["round"] <= server_round]
        self.completed_rounds = server_round
        self.final = {}
        self.personalization = {}
        self.config = config
        self.resumed.append({"run_id": run_id, "from_round": server_round + 1})

    def record_evaluation(self, server_round: int, metrics: dict[str, dict[str, float]]) -> None:
        entry = self._round(server_round)
        for name, m in metrics.items():
            entry["platforms"].setdefault(name, {})["validation"] = _ranking(m)
        self.completed_rounds = server_round

    def record_final(
        self, zero_shot: dict[str, dict[str, float]], federated: dict[str, dict[str, float]]
    ) -> None:
        self.final = {
            "zero_shot": {k: _ranking(v) for k, v in zero_shot.items()},
            "federated": {k: _ranking(v) for k, v in federated.items()},
        }

    def record_personalized(
        self, results: dict[str, tuple[TrainingRecord, PersonalChoice, dict[str, dict[str, float]]]]
    ) -> None:
        """Each site's personal model: its training (ε after it), which mix of the fine-tune it
        kept, and the kept model's validation/test metrics."""
        self.personalization = {
            name: {
                **record.to_record(),
                "choice": choice.to_record(),
                "validation": _ranking(splits["validation"]),
            }
            for name, (record, choice, splits) in results.items()
        }
        self.final["personalized"] = {
            name: _ranking(splits["test"]) for name, (_, _, splits) in results.items()
        }

    def trained(self) -> bool:
        """Whether any site trained in any round (a round where every site refused did not)."""
        return any("loss" in m for e in self.rounds for m in e["platforms"].values())

    def idle_rounds(self) -> list[int]:
        """The training rounds (round 0 is the untuned model's evaluation) in which no site
        trained: each refused or did not answer."""
        return [
            e["round"]
            for e in self.rounds
            if e["round"] > 0 and not any("loss" in m for m in e["platforms"].values())
        ]

    def refusals(self) -> str:
        """Every refusal recorded, one per platform and reason."""
        said = {f"{n}: {why}" for e in self.rounds for n, why in e.get("refused", {}).items()}
        return " | ".join(sorted(said))

    def epsilon_spent(self, *, personalized: bool = True) -> dict[str, float]:
        """Last ε each platform reported (0 for a platform that never trained): after its
        personalisation, or (``personalized=False``) after the federation's rounds."""
        spent = {name: 0.0 for name in self.platforms}
        for entry in self.rounds:
            for name, m in entry["platforms"].items():
                if "epsilon" in m:
                    spent[name] = m["epsilon"]
        if personalized:
            spent.update({name: m["epsilon"] for name, m in self.personalization.items()})
        return spent

    def write(self, out_dir: str | Path) -> None:
        if not out_dir:
            return
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".metrics.")
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(self), fh, indent=2)
        os.replace(tmp, out / METRICS_FILE)

    def print_round(self, server_round: int) -> None:
        entry = self.rounds[-1]
        parts = []
        for name, m in sorted(entry["platforms"].items()):
            val = m.get("validation", {})
            shown = f"val NDCG@10 {val['ndcg@10']:.4f}" if "ndcg@10" in val else "not evaluated"
            if "loss" in m:
                parts.append(f"{name}: loss {m['loss']:.3f} ε {m.get('epsilon', 0.0):.2f} {shown}")
            elif name not in entry["refused"]:
                parts.append(f"{name}: did not train (no reply), {shown}")
        for name in entry["refused"]:
            parts.append(f"{name}: refused")
        print(f"[fedxrec] round {server_round} done — " + "; ".join(parts), flush=True)


def _ranking(metrics: dict[str, float]) -> dict[str, float]:
    keep = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr", "users")
    return {k: float(metrics[k]) for k in keep if k in metrics}
