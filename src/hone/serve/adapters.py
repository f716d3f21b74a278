"""LoRA adapters served on one base: where each comes from, whether it fits the base, and which are in memory.

Adapters are registered by name (config, CLI or `POST /v1/load_lora_adapter`), loaded into the shared
PEFT model the first time a request needs them, and evicted least-recently-used when more than
`max_adapters` would be in memory. Only the engine thread touches the model.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hone.errors import HoneError
from hone.models import available_memory
from hone.models.finetuned import ADAPTER_FILES, attach_adapter
from hone.serve.lora_rows import RowAdapters, RowLoraLayer, SharedInput, unsupported
from hone.settings import read_yaml_mapping

# The one answer to every request path refused: it says nothing of the server's files (not whether the path
# exists, where it leads, or what a file it read holds).
PATH_REFUSED = ("lora_path is not an adapter this server may load: give a run directory or adapter folder under "
                "the server's adapter_roots")
NO_ROOTS = "this server loads no adapters from a request's lora_path: add `adapter_roots` to serve.yaml"
# Forwards in a row in which one adapter has every row before it is merged: a lone short reply is not worth a
# merge, and batches that change adapters every few steps do not merge and unmerge back and forth.
MERGE_AFTER_STEPS = 8
log = logging.getLogger("hone.serve")


class OtherBase(HoneError):
    """The adapter was trained on another base model than the one served."""


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
        config = read_yaml_mapping(run_dir / "config.yaml", "run config")
        if isinstance(config.get("base_model"), str):
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


def _trained_on_fingerprint(run_dir: Path | None) -> str | None:
    """The base-weights fingerprint a `hone train` run recorded in its summary (None for a bare adapter)."""
    summary = run_dir / "summary.json" if run_dir is not None else None
    if summary is None or not summary.is_file():
        return None
    try:
        return json.loads(summary.read_text()).get("base_model_fingerprint")
    except (json.JSONDecodeError, AttributeError):
        return None


def resolve_adapter(name: str, path: str | Path, served: str, served_dir: Path,
                    served_fingerprint: Callable[[], str] | None = None) -> AdapterSource:
    """Check that `path` holds an adapter trained on the served base; every refusal says why.

    A run that recorded its base's weights fingerprint is matched by it (`served_fingerprint()`), so a renamed
    or moved copy of the same base is accepted and a different model under the same name is not; a bare
    adapter folder is matched by the base name PEFT recorded.
    """
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise HoneError(f"lora_path {path} does not exist", hint="pass a `hone train` run directory or adapter")
    adapter_dir, run_dir = _adapter_folder(path)
    missing = [file for file in ADAPTER_FILES if not (adapter_dir / file).is_file()]
    if missing:
        raise HoneError(f"{adapter_dir} lacks {', '.join(missing)}",
                        hint="the adapter is written when training finishes; finish the run first")
    trained_on = _trained_on(adapter_dir, run_dir)
    recorded = _trained_on_fingerprint(run_dir)
    if recorded and served_fingerprint is not None:
        if recorded != served_fingerprint():
            raise OtherBase(f"adapter '{name}' was trained on base model '{trained_on}' (weights fingerprint "
                            f"{recorded[:12]}), which is not the base this server serves ('{served}')",
                            hint=f"serve it from a server started with --base {trained_on}")
    elif trained_on and not same_base(trained_on, served, served_dir):
        raise OtherBase(f"adapter '{name}' was trained on base model '{trained_on}', but this server serves "
                        f"'{served}'", hint=f"serve it from a server started with --base {trained_on}")
    return AdapterSource(name=name, adapter_dir=adapter_dir, run_dir=run_dir, trained_on=trained_on)


def _inside(path: Path, roots: list[Path]) -> bool:
    """Whether `path`, symlinks followed, lies in one of `roots`."""
    resolved = path.resolve(strict=False)
    return any(resolved.is_relative_to(root.resolve(strict=False)) for root in roots)


def confined_path(path: str, roots: list[Path]) -> Path | None:
    """The folder a request's `path` names, symlinks followed, when it lies in one of `roots`; else None.

    A relative path is taken relative to each root in turn.
    """
    given = Path(path)
    candidates = [given] if given.is_absolute() else [root / given for root in roots]
    try:
        return next((candidate.resolve(strict=False) for candidate in candidates
                     if _inside(candidate, roots) and candidate.is_dir()), None)
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop
        return None


def resolve_request_adapter(name: str, path: str, roots: list[Path], served: str, served_dir: Path,
                            served_fingerprint: Callable[[], str] | None = None) -> AdapterSource:
    """`resolve_adapter` for a path a client sent: it must lie under `roots`, and so must every file read.

    Refusals are `PATH_REFUSED`, or `OtherBase` for an adapter under the roots trained on another base; the
    detailed reason is for the server's log (`HoneError.__cause__`).
    """
    if not roots:
        raise HoneError(NO_ROOTS)
    folder = confined_path(path, roots)
    if folder is None:
        raise HoneError(PATH_REFUSED)
    try:
        adapter_dir, run_dir = _adapter_folder(folder)
        read = [adapter_dir, *(adapter_dir / file for file in ADAPTER_FILES)]
        if run_dir is not None:
            read += [run_dir / "config.yaml", run_dir / "summary.json"]
        if not all(_inside(file, roots) for file in read):
            raise HoneError(f"{folder} reads files outside adapter_roots")
        return resolve_adapter(name, folder, served, served_dir, served_fingerprint)
    except OtherBase:
        raise
    except (HoneError, OSError, ValueError, RuntimeError) as error:  # UnicodeDecodeError is a ValueError
        raise HoneError(PATH_REFUSED) from error


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
    """The adapters inside the shared PEFT model, least recently used first; engine thread only.

    PEFT loads and removes the adapters' weights; `hone.serve.lora_rows` computes them, each batch row
    with its own adapter. With `merge_single_adapter`, an adapter that has had every row for MERGE_AFTER_STEPS
    forwards is merged into a copy of the weights it changes (one adapter at a time, and only while the copy
    takes at most half the device's free memory), and its rows then cost what base rows cost.
    """

    def __init__(self, model, base: str, capacity: int, merge_single_adapter: bool = True):
        self.model = model  # the plain base until the first adapter arrives, then a PeftModel
        self.base = base
        self.capacity = capacity
        self.merge_single_adapter = merge_single_adapter
        self._order: OrderedDict[str, Path] = OrderedDict()
        self.rows = RowAdapters()
        self._layers: dict[int, RowLoraLayer] = {}  # by id of the PEFT LoRA layer
        self._streak: tuple[str | None, int] = (None, 0)  # the adapter that had every row, for how many forwards

    @property
    def names(self) -> list[str]:
        return list(self._order)

    def touch(self, name: str) -> None:
        self._order.move_to_end(name)

    def route(self, adapters: list[str | None]) -> None:
        """Make the next forward apply `adapters[i]` (None: the base) to batch row i."""
        for name in set(adapters) - {None}:
            self.touch(name)
        self.rows.set(adapters)
        if self.merge_single_adapter:
            self._merge_when_settled()

    @property
    def merged(self) -> str | None:
        """The adapter merged into copies of the base weights, if any."""
        return self.rows.merged

    def _merge_when_settled(self) -> None:
        single = self.rows.single
        last, steps = self._streak
        self._streak = (single, steps + 1 if single == last else 1)
        # Exactly at the threshold: a merge refused for want of memory is tried again only after a new streak.
        if single is not None and single != self.rows.merged and self._streak[1] == MERGE_AFTER_STEPS:
            self.merge(single)

    def merge(self, name: str) -> bool:
        """Merge adapter `name` into copies of the base weights it changes, replacing any merged before;
        False when the copies would take more than half the device's free memory, or when no layer it changes
        has a plain weight to merge into (a quantized base)."""
        layers = [layer for layer in self._layers.values() if layer.mergeable(name)]
        if not layers:
            return False
        size = sum(layer.layer.base_layer.weight.nbytes for layer in layers)
        self.unmerge()
        free = available_memory(str(next(self.model.parameters()).device))
        if 2 * size > free:
            log.info("adapter %s stays unmerged: a merged copy of the %d MiB of weights it changes needs twice "
                     "that free (%d MiB free)", name, size >> 20, free >> 20)
            return False
        for layer in layers:
            layer.merge(name)
        self.rows.set_merged(name)
        return True

    def unmerge(self) -> None:
        """Free the merged weight copies; every adapter is computed row by row again."""
        for layer in self._layers.values():
            layer.merged = None
        self.rows.set_merged(None)

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
        self.model = attach_adapter(self.model, source.adapter_dir, self.base, name=source.name).eval()
        self._order[source.name] = source.adapter_dir
        problem = self._unsupported(source.name)
        if problem:
            self.unload(source.name)
            raise HoneError(f"adapter '{source.name}' ({source.adapter_dir}) uses {problem}, which hone serve "
                            "cannot batch with other adapters",
                            hint="merge it into a standalone model with `hone export RUN_DIR --merge --out DIR` "
                            "and serve that folder with --base DIR")
        self._restack()
        return True

    def unload(self, name: str) -> None:
        """Remove adapter `name`'s weights from the model (no-op when it is not loaded)."""
        if self._order.pop(name, None) is None:
            return
        if name == self.rows.merged:
            self.unmerge()
        if not self._order:
            self.model = self.model.unload()  # the last one: back to the plain base, no LoRA layers left
            self._layers.clear()
            return
        self.model.delete_adapter(name)
        self._restack()

    def _unsupported(self, name: str) -> str | None:
        """What adapter `name` uses that the row-wise forward does not compute, or None."""
        from peft.tuners.lora import LoraLayer

        config = self.model.peft_config[name]
        for field in ("modules_to_save", "trainable_token_indices"):
            if getattr(config, field, None):
                return f"{field} ({getattr(config, field)})"
        return next((problem for module in self.model.modules() if isinstance(module, LoraLayer)
                     and name in module.r and (problem := unsupported(module, name))), None)

    def _restack(self) -> None:
        """After a load or unload: take over new LoRA layers' forward, restack every layer's adapters, and
        group the sibling layers whose inputs have one width (see `SharedInput`)."""
        from peft.tuners.lora import LoraLayer

        siblings: dict[tuple[str, int], list[RowLoraLayer]] = {}
        for name, module in self.model.named_modules():
            if isinstance(module, LoraLayer):
                if id(module) not in self._layers:
                    self._layers[id(module)] = RowLoraLayer(module, self.rows)
                layer = self._layers[id(module)]
                layer.rebuild(list(self._order))
                siblings.setdefault((name.rpartition(".")[0], module.in_features), []).append(layer)
        for members in siblings.values():
            group = SharedInput(members)
            group.rebuild()
            for layer in members:
                layer.shared = group
