"""Where hone keeps its state: `$HONE_HOME` (default `~/.cache/hone`)."""

import os
from pathlib import Path


def hone_home() -> Path:
    """The root folder for cached models and other local state; created on first use."""
    home = Path(os.environ.get("HONE_HOME") or Path.home() / ".cache" / "hone").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def models_dir() -> Path:
    """Cache of de-quantized base models, one safetensors folder per catalog name."""
    path = hone_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
