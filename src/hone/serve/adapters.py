"""LoRA adapters served on one base: where each comes from, whether it fits the base, and which are in memory.

Adapters are registered by name (config, CLI or `POST /v1/load_lora_adapter`), loaded into the shared
PEFT model the first time a request needs them, and evicted least-recently-used when more than
`max_adapters` would be in memory. Only the engine thread touches the model.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import yaml

from hone.errors import HoneError
from hone.models.finetuned import ADAPTER_FILES, attach_adapter

BASE_ROW = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


@dataclass(frozen=True)
class AdapterSource:
    """A registered adapter: its PEFT folder, the run directory it came from, the base it was trained on."""

    name: str
    adapter_dir: Path
    run_dir: Path | None
    trained_on: str | None


def _adapter_folder(path: Path) -> tuple[Path, Path | None]:
    """`(adapter folder, run dir or None)` for a run directory, its adapter/ folder, or a bare adapter."""
    if (path / "config.yaml").is_file() and (path / "adapter").is_dir():
        return path / "adapter", path
    if (path / "adapter_config.json").is_file():
        return path, path.parent if (path.parent / "config.yaml").is_file() else None
    raise HoneError(f"{path} is neither a `hone train` run directory nor a PEFT adapter folder",
                    hint="pass RUN_DIR (with config.yaml and adapter/) or a folder holding adapter_config.json")


def _trained_on(adapter_dir: Path, run_dir: Path | None) -> str | None:
    """The base model the adapter says it was trained on: the run's base_model, else PEFT's record."""
    if run_dir is not None:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        if isinstance(config, dict) and isinstance(config.get("base_model"), str):
            return config["base_model"]
    try:
        recorded = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (json.JSONDecodeError, AttributeError) as error:
        raise HoneError(f"{adapter_dir / 'adapter_config.json'} is not a valid adapter config: {error}") from None
    return recorded or None


def same_base(claimed: str, served: str, served_dir: Path) -> bool:
    """Whether `claimed` (a catalog name, folder or hub id) names the model served as `served` from `served_dir`."""
    if claimed == served:
        return True
    path = Path(claimed).expanduser()
    if path.exists():
        return path.resolve() == served_dir.resolve()
    leaf = Path(claimed).name.lower()  # hub ids and cache folders end in the model's name
    return leaf in {Path(served).name.lower(), served_dir.name.lower()}


def resolve_adapter(name: str, path: str | Path, served: str, served_dir: Path) -> AdapterSource:
    """Check that `path` holds an adapter trained on the served base; every refusal says why."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise HoneError(f"lora_path {path} does not exist", hint="pass a `hone train` run directory or adapter")
    adapter_dir, run_dir = _adapter_folder(path)
    missing = [file for file in ADAPTER_FILES if not (adapter_dir / file).is_file()]
    if missing:
        raise HoneError(f"{adapter_dir} lacks {', '.join(missing)}",
                        hint="the adapter is written when training finishes; finish the run first")
    trained_on = _trained_on(adapter_dir, run_dir)
    if trained_on and not same_base(trained_on, served, served_dir):
        raise HoneError(f"adapter '{name}' was trained on base model '{trained_on}', but this server serves "
                        f"'{served}'", hint=f"serve it from a server started with --base {trained_on}")
    return AdapterSource(name=name, adapter_dir=adapter_dir, run_dir=run_dir, trained_on=trained_on)


class AdapterRegistry:
    """Names clients may ask for, safe to read and change from any thread."""

    def __init__(self):
        self._sources: dict[str, AdapterSource] = {}
        self._lock = threading.Lock()

    def add(self, source: AdapterSource) -> None:
        with self._lock:
            self._sources[source.name] = source

    def remove(self, name: str) -> AdapterSource | None:
        with self._lock:
            return self._sources.pop(name, None)

    def get(self, name: str) -> AdapterSource | None:
        with self._lock:
            return self._sources.get(name)

    def all(self) -> list[AdapterSource]:
        with self._lock:
            return list(self._sources.values())


class LoadedAdapters:
    """The adapters inside the shared PEFT model, least recently used first; engine thread only."""

    def __init__(self, model, base: str, capacity: int):
        self.model = model  # the plain base until the first adapter arrives, then a PeftModel
        self.base = base
        self.capacity = capacity
        self._order: OrderedDict[str, Path] = OrderedDict()
        self._rows: list[str] | None = None  # PEFT adapter name per batch row for the next forward
        self._lora_layers: list = []
        self._hooked: set[int] = set()
        self._enabled = True

    @property
    def names(self) -> list[str]:
        return list(self._order)

    @property
    def has_peft(self) -> bool:
        from peft import PeftModel

        return isinstance(self.model, PeftModel)

    def touch(self, name: str) -> None:
        self._order.move_to_end(name)

    def route(self, adapters: list[str | None]) -> None:
        """Make the next forward apply `adapters[i]` (None: the base) to batch row i.

        A batch of base rows runs with the LoRA layers switched off, a batch on one adapter runs PEFT's
        plain path with that adapter active, and a mixed batch passes PEFT's `adapter_names` to every LoRA
        layer. The names are injected by hooks registered once per layer, instead of PEFT's per-call
        registration, which walks every module of the model each step.
        """
        if not self.has_peft:
            return
        used = set(adapters)
        for name in used - {None}:
            self.touch(name)
        self._enable(used != {None})
        if len(used) == 1 and None not in used:
            if self.model.active_adapter != adapters[0]:
                self.model.set_adapter(adapters[0])
            self._rows = None
        else:
            self._rows = None if used == {None} else [name or BASE_ROW for name in adapters]

    def _enable(self, enabled: bool) -> None:
        if enabled != self._enabled:
            for layer in self._lora_layers:
                layer.enable_adapters(enabled)
            self._enabled = enabled

    def _hook_lora_layers(self) -> None:
        from peft.tuners.lora import LoraLayer

        for module in self.model.modules():
            if isinstance(module, LoraLayer) and id(module) not in self._hooked:
                module.register_forward_pre_hook(self._inject_rows, with_kwargs=True)
                self._hooked.add(id(module))
                self._lora_layers.append(module)

    def _inject_rows(self, _module, args, kwargs):
        if self._rows is not None:
            kwargs["adapter_names"] = self._rows
        return args, kwargs

    def ensure(self, source: AdapterSource, in_use: set[str]) -> bool:
        """Load `source` if it is not in memory, evicting the least recently used idle adapter to make room;
        False when every slot holds an adapter a running sequence still needs."""
        loaded = self._order.get(source.name)
        if loaded == source.adapter_dir:
            self.touch(source.name)
            return True
        if loaded is not None:
            self.unload(source.name)  # re-registered under the same name from another folder
        while len(self._order) >= self.capacity:
            idle = next((name for name in self._order if name not in in_use), None)
            if idle is None:
                return False
            self.unload(idle)
        self.model = attach_adapter(self.model, source.adapter_dir, self.base, name=source.name)
        self._enable(True)
        self.model.set_adapter(source.name)  # PEFT needs a valid active adapter even for mixed batches
        self.model.eval()
        self._hook_lora_layers()
        self._order[source.name] = source.adapter_dir
        return True

    def unload(self, name: str) -> None:
        """Remove adapter `name`'s weights from the model (no-op when it is not loaded)."""
        if self._order.pop(name, None) is None:
            return
        if not self._order:
            self._enable(True)
            self.model = self.model.unload()  # the last one: back to the plain base, no LoRA layers left
            self._hooked.clear()
            self._lora_layers.clear()
            return
        self.model.delete_adapter(name)
        self.model.set_adapter(next(iter(self._order)))
