import numpy as np
import pytest
import torch
from peft import PeftModel

from shared.adapter import (
    AdapterError,
    adapter_nbytes,
    get_adapter_arrays,
    load_adapter,
    read_adapter,
    save_adapter,
    set_adapter_arrays,
)
from tests.conftest import make_tiny_recommender


def _perturb(rec):
    with torch.no_grad():
        lora = [p for name, p in rec.model.named_parameters() if "lora_" in name]
        for p in [*lora, *rec.head.parameters()]:
            p.add_(torch.randn_like(p) * 0.1)


def test_saved_adapter_reloads_to_identical_scores(
    tmp_path, tiny_vocab, tiny_model_config, tiny_platform
):
    rec = make_tiny_recommender(tiny_vocab, tiny_model_config)
    _perturb(rec)
    arrays = get_adapter_arrays(rec)
    save_adapter(arrays, tiny_model_config, tmp_path / "adapter", metadata={"round": 3})
    fresh = make_tiny_recommender(tiny_vocab, tiny_model_config, seed=99)
    meta = load_adapter(fresh, tmp_path / "adapter")
    assert meta["round"] == 3
    texts = tiny_platform.item_texts
    items = rec.encode_items(texts)
    torch.testing.assert_close(fresh.encode_items(texts), items, rtol=0, atol=0)
    histories = [seq[:-1] for seq in tiny_platform.sequences]
    torch.testing.assert_close(
        fresh.scores(histories, items), rec.scores(histories, items), rtol=0, atol=0
    )
    assert not torch.equal(
        rec.scores(histories, items),
        make_tiny_recommender(tiny_vocab, tiny_model_config).scores(histories, items),
    )  # the head is part of what was saved
    # the LoRA part of the folder is peft's own format
    base = make_tiny_recommender(tiny_vocab, tiny_model_config).model.encoder.get_base_model()
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    lora = [k for k in arrays if not k.startswith("head.")]
    assert sum("lora_A" in n for n, _ in peft_model.named_parameters()) == len(lora) // 2


def test_old_lora_only_adapter_gets_a_clear_error(tmp_path, tiny_rec, tiny_model_config):
    folder = save_adapter(get_adapter_arrays(tiny_rec), tiny_model_config, tmp_path / "a")
    (folder / "head.safetensors").unlink()
    with pytest.raises(AdapterError, match="no head.safetensors: it is a LoRA-only adapter"):
        read_adapter(folder)
    lora_only = {k: v for k, v in get_adapter_arrays(tiny_rec).items() if not k.startswith("head.")}
    with pytest.raises(AdapterError, match="no head"):
        set_adapter_arrays(tiny_rec, lora_only)  # an old site's message
    pooling = dict(lora_only, **{"head.recency": np.zeros(5, np.float32)})
    with pytest.raises(AdapterError, match="pooling head of an older fedxrec"):
        set_adapter_arrays(tiny_rec, pooling)  # the head before the transformer


def test_sites_send_what_they_train_and_the_whitening_goes_back(tiny_rec):
    from shared.adapter import FIXED, trained_arrays, with_fixed

    arrays = get_adapter_arrays(tiny_rec)
    assert set(FIXED) <= set(arrays)
    sent = trained_arrays(arrays)
    assert not set(FIXED) & set(sent)
    assert set(sent) == {k for k in arrays if k not in FIXED}
    whole = with_fixed(sent, arrays)
    assert list(whole) == list(arrays)
    assert all(np.array_equal(whole[k], arrays[k]) for k in arrays)
    with pytest.raises(AdapterError, match="lacks"):
        with_fixed({k: v for k, v in sent.items() if k != "head.start"}, arrays)


def test_corrupt_or_misshapen_head_is_refused(tmp_path, tiny_rec, tiny_model_config):
    from dataclasses import replace

    folder = save_adapter(get_adapter_arrays(tiny_rec), tiny_model_config, tmp_path / "a")
    longer = make_tiny_recommender_like(tiny_rec, replace(tiny_model_config, history_items=9))
    with pytest.raises(AdapterError, match="head.slots.*model.history_items"):
        load_adapter(longer, folder)
    (folder / "head.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AdapterError, match="head.safetensors is corrupt"):
        read_adapter(folder)


def make_tiny_recommender_like(rec, cfg):
    from shared.model import build_recommender

    base = rec.model.encoder.get_base_model()
    return build_recommender(cfg, base=base, tokenizer=rec.tokenizer)


def test_shape_mismatch_and_missing_tensor_are_refused(tiny_rec):
    arrays = get_adapter_arrays(tiny_rec)
    name = next(iter(arrays))
    wrong = dict(arrays, **{name: np.zeros((3, 3), np.float32)})
    with pytest.raises(AdapterError, match="shape"):
        set_adapter_arrays(tiny_rec, wrong)
    with pytest.raises(AdapterError, match="missing"):
        set_adapter_arrays(tiny_rec, {k: v for k, v in arrays.items() if k != name})
    with pytest.raises(AdapterError, match="NaN"):
        set_adapter_arrays(tiny_rec, dict(arrays, **{name: arrays[name] * np.nan}))


def test_corrupt_or_incomplete_folder_is_refused(tmp_path, tiny_rec, tiny_model_config):
    folder = save_adapter(get_adapter_arrays(tiny_rec), tiny_model_config, tmp_path / "a")
    (folder / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(AdapterError, match="corrupt"):
        read_adapter(folder)
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="adapter_model.safetensors is missing"):
        read_adapter(folder)
    with pytest.raises(AdapterError, match="does not exist"):
        read_adapter(tmp_path / "none")


def test_rank_mismatch_is_named(tmp_path, tiny_rec, tiny_model_config):
    from dataclasses import replace

    folder = save_adapter(get_adapter_arrays(tiny_rec), tiny_model_config, tmp_path / "a")
    with pytest.raises(AdapterError, match="set model.lora_r=8"):
        read_adapter(folder, replace(tiny_model_config, lora_r=4))


def test_adapter_is_small(tiny_rec):
    arrays = get_adapter_arrays(tiny_rec)
    assert 0 < adapter_nbytes(arrays) == sum(a.size * 4 for a in arrays.values())


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("[1, 2]", "not a JSON object"),
        ('{"r": "eight", "peft_type": "LORA"}', "r = 'eight'"),
        ('{"r": 8, "target_modules": 3}', "target_modules = 3"),
        ('{"r": 8, "lora_alpha": -1}', "lora_alpha = -1"),
    ],
)
def test_a_malformed_adapter_config_is_a_clear_error(
    tmp_path, tiny_rec, tiny_model_config, config, message
):
    from clients.scorer.model import model_config_for_adapter

    folder = save_adapter(get_adapter_arrays(tiny_rec), tiny_model_config, tmp_path / "a")
    (folder / "adapter_config.json").write_text(config)
    with pytest.raises(AdapterError, match=message):
        read_adapter(folder, tiny_model_config)
    with pytest.raises(AdapterError, match=message):
        model_config_for_adapter(folder)
