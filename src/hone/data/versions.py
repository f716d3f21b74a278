"""Dataset versions written by `hone data prepare`: a folder with train/val/test JSONL and manifest.json."""

from __future__ import annotations

import json
from pathlib import Path

from hone.errors import HoneError


def is_dataset_dir(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "manifest.json").is_file()


def read_manifest(folder: Path) -> dict:
    """The manifest of a dataset folder written by `hone data prepare`."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise HoneError(f"{folder} is not a hone dataset folder: manifest.json is missing",
                        hint="create one with `hone data prepare CONFIG.yaml`")
    return json.loads(path.read_text())
