import pytest
import torch
from safetensors.torch import load_file

from clients.scorer.item_index import catalogue_hash, default_cache_dir, encode_texts
from clients.scorer.model import load_scorer_model, load_site_scorer, model_config_for_adapter
from shared.adapter import AdapterError
from shared.text import item_text
from tests.clients.scorer.support import save_tiny_adapter


@pytest.fixture
def adapter_dir(tiny_vocab, tmp_path):
    return save_tiny_adapter(tiny_vocab, tmp_path / "adapter", seed=1, round_=4)


def _load(adapter, items_file, encoder_dir, cache):
    return load_site_scorer(
        adapter, items_file, encoder=str(encoder_dir), cache_dir=cache, progress=False, device="cpu"
    )


def test_index_holds_the_adapted_vectors_of_each_item(adapter_dir, platform_dir, encoder_dir):
    scorer = _load(adapter_dir, platform_dir / "items.csv", encoder_dir, "")
    index, rec = scorer.index, scorer.model.rec
    assert rec.config.max_item_tokens == 16 and scorer.model.adapter_round == 4
    assert [i.item_id for i in index.items][:2] == ["m1", "m2"] and index.encoded == len(index)
    one_by_one = torch.cat([rec.encode_items([item_text(i)]) for i in index.items])
    torch.testing.assert_close(index.vectors, one_by_one, atol=1e-5, rtol=0)
    assert index.vectors.shape == (len(index), rec.config.dim)  # the adaptor's, not the encoder's
    rec.model.peft_model.unmerge_adapter()  # the scorer folds LoRA into the weights: same vectors
    torch.testing.assert_close(rec.encode_items([item_text(index.items[0])])[0], index.vectors[0])


def test_length_grouped_batches_keep_catalogue_order(adapter_dir, encoder_dir):
    rec = load_scorer_model(adapter_dir, encoder=str(encoder_dir), device="cpu").rec
    texts = ["a", "star wars the matrix toy story", "heat", "fargo (1996). categories: crime", "b"]
    grouped = encode_texts(rec, texts, max_tokens=16, batch_size=2, progress=False)
    alone = rec.item_vectors(torch.cat([rec.encode([t], 16) for t in texts]))
    torch.testing.assert_close(grouped, alone, atol=1e-5, rtol=0)


def test_second_load_reads_every_vector_from_the_cache(adapter_dir, platform_dir, encoder_dir):
    cache = platform_dir / "cache"
    first = _load(adapter_dir, platform_dir / "items.csv", encoder_dir, cache)
    second = _load(adapter_dir, platform_dir / "items.csv", encoder_dir, cache)
    assert first.index.encoded == 8 and second.index.encoded == 0
    assert torch.equal(first.index.vectors, second.index.vectors)
    (cache_file,) = cache.glob("*.safetensors")
    assert cache_file.stem == first.model.fingerprint
    assert set(load_file(str(cache_file))) == {"vectors", "text_digests"}  # safetensors, no pickle


def test_changed_catalogue_encodes_only_new_and_edited_items(
    adapter_dir, platform_dir, encoder_dir
):
    cache, items_file = platform_dir / "cache", platform_dir / "items.csv"
    before = _load(adapter_dir, items_file, encoder_dir, cache)
    lines = items_file.read_text().splitlines()
    lines[1] = lines[1].replace("space opera", "a space opera in a galaxy far away")  # m1 edited
    lines.append("m9,Heat 2,2026,Crime,")  # m9 new
    items_file.write_text("\n".join(lines) + "\n")
    after = _load(adapter_dir, items_file, encoder_dir, cache)
    assert after.index.encoded == 2
    assert after.index.catalogue_hash != before.index.catalogue_hash
    unchanged = [after.index.row_of[f"m{i}"] for i in range(2, 9)]
    assert torch.equal(after.index.vectors[unchanged], before.index.vectors[unchanged])
    fresh = _load(adapter_dir, items_file, encoder_dir, "")
    torch.testing.assert_close(after.index.vectors, fresh.index.vectors, atol=1e-5, rtol=0)


def test_new_adapter_makes_every_cached_vector_stale(
    tiny_vocab, adapter_dir, platform_dir, encoder_dir
):
    cache, items_file = platform_dir / "cache", platform_dir / "items.csv"
    old = _load(adapter_dir, items_file, encoder_dir, cache)
    save_tiny_adapter(tiny_vocab, adapter_dir, seed=2, round_=5)
    new = _load(adapter_dir, items_file, encoder_dir, cache)
    assert new.model.adapter_hash != old.model.adapter_hash
    assert new.model.fingerprint != old.model.fingerprint
    assert new.index.encoded == len(new.index)
    assert not torch.allclose(new.index.vectors, old.index.vectors, atol=1e-3)


def test_unreadable_cache_is_rebuilt(adapter_dir, platform_dir, encoder_dir):
    cache, items_file = platform_dir / "cache", platform_dir / "items.csv"
    good = _load(adapter_dir, items_file, encoder_dir, cache)
    (cache / f"{good.model.fingerprint}.safetensors").write_bytes(b"not a safetensors file")
    again = _load(adapter_dir, items_file, encoder_dir, cache)
    assert again.index.encoded == len(again.index)
    torch.testing.assert_close(again.index.vectors, good.index.vectors, atol=1e-6, rtol=0)


def test_adapter_settings_come_from_the_adapter_folder(tiny_vocab, tmp_path, encoder_dir):
    folder = save_tiny_adapter(
        tiny_vocab, tmp_path / "r4", seed=3, lora_r=4, target_modules="query"
    )
    cfg = model_config_for_adapter(folder, str(encoder_dir))
    assert (cfg.lora_r, cfg.target_module_list, cfg.history_items) == (4, ["query"], 5)
    rec = load_scorer_model(folder, encoder=str(encoder_dir), device="cpu").rec
    assert rec.has_adapter and rec.config.lora_r == 4
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="adapter_model.safetensors is missing"):
        load_scorer_model(folder, encoder=str(encoder_dir), device="cpu")
    with pytest.raises(AdapterError, match="adapter_config.json is missing"):
        model_config_for_adapter(tmp_path / "nowhere")


def test_catalogue_hash_follows_ids_and_texts(tiny_platform):
    items = tiny_platform.items
    assert catalogue_hash(items) == catalogue_hash(list(items))
    assert catalogue_hash(items) != catalogue_hash(items[::-1])


def test_default_cache_folder_and_no_cache(
    adapter_dir, platform_dir, encoder_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("FEDXREC_CACHE_DIR", str(tmp_path / "cache-root"))
    items_file = platform_dir / "items.csv"
    _load(adapter_dir, items_file, encoder_dir, "")  # "" = no cache
    assert not (tmp_path / "cache-root").exists()
    scorer = load_site_scorer(
        adapter_dir, items_file, encoder=str(encoder_dir), progress=False, device="cpu"
    )
    assert (default_cache_dir(items_file) / f"{scorer.model.fingerprint}.safetensors").is_file()
    assert default_cache_dir(items_file).parent == tmp_path / "cache-root"
