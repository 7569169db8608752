"""What every deployment scenario shares: keys, platforms and a small local encoder.

The scenarios test the Deployment Engine's plumbing (TLS, node authentication, SecAgg+,
checkpoints, dropouts), not ranking quality, so the sites load a tiny random BERT saved as a
local Hugging Face folder (``model.encoder`` = its path): every ClientApp process still imports
torch, transformers, peft and Opacus and runs DP-SGD, but computes next to nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from server.certs import init_certs
from shared.config import FedxrecConfig
from simulations.data.partition import prepare_platforms
from simulations.simulate import write_run_config
from tests.conftest import tiny_bert

PLATFORMS = ("action", "comedy", "drama")


@dataclass(frozen=True)
class DeployKit:
    root: Path
    certs: Path
    platforms: Path
    encoder: Path

    def site_key(self, site: str) -> Path:
        return self.certs / "sites" / site / "node.key"

    def site_pub(self, site: str) -> Path:
        return self.certs / "sites" / site / "node.pub"

    def run_config(self, name: str, overrides: dict[str, object]) -> tuple[FedxrecConfig, Path]:
        """A small federation's config, written as a Flower run-config file."""
        flat = {
            "model.encoder": str(self.encoder),
            "model.history_items": 10,
            "model.max_item_tokens": 16,
            "data.max_users": 8,
            "federation.rounds": 2,
            "federation.platforms": 2,
            "federation.eval_users": 4,
            "federation.round_timeout": 600.0,
            "federation.out_dir": str(self.root / name / "out"),
            # A fixed σ: scenarios sharing a site's ledger must not plan to spend the whole
            # budget in the first federation (noise is otherwise fitted to ε over the run).
            "privacy.noise_multiplier": 1.0,
            "privacy.epsilon": 1000.0,
            "train.batch_size": 4,
            "train.steps": 4,
            "train.lora_steps": 1,
            # Personalising is one more ClientApp process per site (torch, transformers, peft
            # and Opacus imported: ~8 CPU s); only the scenario that checks it turns it on.
            "train.personalize_steps": 0,
            "train.threads": 1,  # several ClientApps share two cores
            **overrides,
        }
        cfg = FedxrecConfig.from_flat(flat)
        (self.root / name).mkdir(parents=True, exist_ok=True)
        return cfg, write_run_config(cfg, self.root / name / "run_config.toml")


@pytest.fixture(scope="session")
def deploy_kit(tmp_path_factory, tiny_vocab) -> DeployKit:
    root = tmp_path_factory.mktemp("deploy")
    certs = root / "certs"
    init_certs(certs, ["127.0.0.1"], [*PLATFORMS, "rogue"])
    cfg = FedxrecConfig.from_flat({"data.max_users": 8, "data.platforms": ",".join(PLATFORMS)})
    prepare_platforms(cfg.data, root / "platforms")
    encoder = root / "encoder"
    tokenizer, base = tiny_bert(tiny_vocab)
    base.save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    return DeployKit(root, certs, root / "platforms", encoder)
