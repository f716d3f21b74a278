"""Base models: catalog, local sources, loading, fingerprints, and loading fine-tuned run directories."""

from hone.models.catalog import CATALOG, ModelSource, resolve
from hone.models.loading import (
    available_memory,
    bf16_is_fast,
    check_precision,
    fingerprint,
    frozen_dtype,
    is_cached,
    load_model,
    load_tokenizer,
    local_model_dir,
    resolve_device,
)

__all__ = [
    "available_memory",
    "CATALOG",
    "ModelSource",
    "resolve",
    "bf16_is_fast",
    "check_precision",
    "fingerprint",
    "frozen_dtype",
    "is_cached",
    "load_model",
    "load_tokenizer",
    "local_model_dir",
    "resolve_device",
]
