"""The scorer tests' encoder folder and adapter: the tiny random BERT, saved as a site has them."""

import pytest

from tests.clients.scorer.support import save_tiny_adapter, save_tiny_encoder


@pytest.fixture(scope="module")
def encoder_dir(tiny_vocab, tmp_path_factory):
    return save_tiny_encoder(tiny_vocab, tmp_path_factory.mktemp("encoder"))


@pytest.fixture(scope="module")
def adapter_dir(tiny_vocab, tmp_path_factory):
    return save_tiny_adapter(tiny_vocab, tmp_path_factory.mktemp("a") / "adapter", seed=7)
