"""Shared fixtures: a tiny random BERT (fast tests) and a hand-made platform."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer

from shared.config import ModelConfig
from shared.data import PlatformData, load_platform
from shared.model import Recommender, build_recommender
from shared.process import keep_freed_memory, set_process_defaults

set_process_defaults()  # as every fedxrec entry point does
keep_freed_memory()  # as the training processes do
FIXTURES = Path(__file__).parent / "fixtures"
WORDS = "star wars the matrix toy story fargo heat alien babe casablanca categories action sci fi"


@pytest.fixture(autouse=True)
def count_ledger(tmp_path, monkeypatch) -> Path:
    """Each test's own record of DP count releases (never the machine's)."""
    path = tmp_path / "count_releases.json"
    monkeypatch.setenv("FEDXREC_COUNT_LEDGER", str(path))
    return path


@pytest.fixture(scope="session")
def tiny_vocab(tmp_path_factory) -> Path:
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"();.,:-|"]
    tokens += list(chars) + [f"##{c}" for c in chars] + WORDS.split()
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(dict.fromkeys(tokens)))
    return path


@pytest.fixture
def tiny_model_config() -> ModelConfig:
    return ModelConfig(encoder="tiny-random-bert", max_item_tokens=16, history_items=5, dim=16)


def tiny_bert(vocab: Path) -> tuple[BertTokenizer, BertModel]:
    """A tiny random BERT and its tokenizer: the same "pretrained" base every time."""
    torch.manual_seed(1234)
    tokenizer = BertTokenizer(vocab=str(vocab))  # transformers 5: `vocab`, not `vocab_file`
    base = BertModel(
        BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )
    return tokenizer, base


def make_tiny_recommender(vocab: Path, cfg: ModelConfig, seed: int = 0) -> Recommender:
    tokenizer, base = tiny_bert(vocab)
    return build_recommender(cfg, base=base, tokenizer=tokenizer, seed=seed)


@pytest.fixture
def tiny_rec(tiny_vocab, tiny_model_config) -> Recommender:
    return make_tiny_recommender(tiny_vocab, tiny_model_config)


@pytest.fixture
def platform_dir(tmp_path) -> Path:
    target = tmp_path / "tiny"
    shutil.copytree(FIXTURES / "tiny_platform", target)
    return target


@pytest.fixture
def tiny_platform(platform_dir) -> PlatformData:
    return load_platform(platform_dir, "tiny")


def platform_as_jsonl(csv_folder: Path, folder: Path) -> Path:
    """The CSV platform folder written as JSON Lines (categories as lists), as a user would."""
    import csv
    import json

    folder.mkdir(parents=True)
    for stem in ("items", "interactions"):
        with (
            (csv_folder / f"{stem}.csv").open() as fh,
            (folder / f"{stem}.jsonl").open("w") as out,
        ):
            for row in csv.DictReader(fh):
                if stem == "items":
                    row["categories"] = row["categories"].split("|")
                out.write(json.dumps(row) + "\n")
    return folder


def write_synthetic_site(folder: Path, *, users: int, seed: int, prefix: str = "u") -> Path:
    """A platform folder over the tiny catalogue whose users have 4-8 interactions each."""
    import random

    from shared.data import Interaction, read_items, write_platform

    items = read_items(FIXTURES / "tiny_platform" / "items.csv")
    rng = random.Random(seed)
    interactions = [
        Interaction(f"{prefix}{u}", item.item_id, float(t))
        for u in range(users)
        for t, item in enumerate(rng.sample(items, rng.randint(4, 8)))
    ]
    return write_platform(folder, items, interactions)


def tiny_federation_config(encoder: Path, **overrides: object):
    """A federation of the tiny encoder small enough to run in a unit test."""
    from shared.config import FedxrecConfig

    flat = {
        "model.encoder": str(encoder),
        "model.max_item_tokens": 16,
        "model.history_items": 5,
        "model.dim": 16,
        "train.batch_size": 4,
        "train.steps": 2,
        "train.lora_steps": 1,
        "train.personalize_steps": 2,
        "federation.rounds": 1,
        "federation.platforms": 1,
        **overrides,
    }
    return FedxrecConfig.from_flat(flat)
