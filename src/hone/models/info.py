"""Describe a model for `hone models info`."""

from __future__ import annotations

import json

from safetensors import safe_open

from hone.models.catalog import resolve
from hone.models.loading import local_model_dir, weight_files


def describe(name: str) -> dict:
    """Architecture, parameter count, context length, special tokens and where the files are."""
    source = resolve(name)
    folder = local_model_dir(name)
    config = json.loads((folder / "config.json").read_text())

    params = 0
    for path in weight_files(folder):
        if path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as handle:
                for key in handle.keys():
                    params += _numel(handle.get_slice(key).get_shape())
    return {
        "name": name,
        "source": source.kind,
        "source_path": str(source.path),
        "local_dir": str(folder),
        "architecture": (config.get("architectures") or [config.get("model_type")])[0],
        "parameters": params,
        "hidden_size": config.get("hidden_size"),
        "layers": config.get("num_hidden_layers"),
        "context_length": config.get("max_position_embeddings"),
        "vocab_size": config.get("vocab_size"),
        "weights_bytes": sum(p.stat().st_size for p in weight_files(folder)),
    }


def _numel(shape) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count
