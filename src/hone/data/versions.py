"""Dataset versions written by `hone data prepare`: a folder with train/val/test JSONL and manifest.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hone.data.formats import Example, load_chat_examples
from hone.errors import HoneError
from hone.home import hone_home


def is_dataset_dir(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "manifest.json").is_file()


def read_manifest(folder: Path) -> dict:
    """The manifest of a dataset folder written by `hone data prepare`."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise HoneError(f"{folder} is not a hone dataset folder: manifest.json is missing",
                        hint="create one with `hone data prepare CONFIG.yaml`")
    return json.loads(path.read_text())


# ---- dataset versions kept under $HONE_HOME, as the server shows them ----

SPLIT_NAMES = ("train", "val", "test")
DUPLICATE_STEPS = {"exact_dedup": "exact", "near_dedup": "near"}
PII_NOT_FOUND = ("examples_with_pii", "kept")  # the pii step's counts that are not an entity type


def record_prepared(db, manifest: dict, out: Path, project: str, actor: str | None) -> None:
    """Append "dataset.prepared" to the audit log inside `db`'s transaction: the folder's name (not where it lies
    on this machine), the counts of each curation step in order and the PII found. The server lists a version under
    $HONE_HOME/datasets for the project this entry names."""
    from hone import audit

    steps = [{"name": step["name"], "counts": step["counts"], "removed": step["removed"]} for step in manifest["steps"]]
    pii = next((step["counts"] for step in manifest["steps"] if step["name"] == "pii"), {})
    details = {"out": Path(out).name, "counts": manifest["counts"], "steps": steps, "pii": pii}
    audit.record(db, project=project, actor=actor, action="dataset.prepared", object_type="dataset",
                 object_id=manifest["dataset_id"], details=details)


def datasets_dir() -> Path:
    """Where the server looks for dataset versions: `$HONE_HOME/datasets/NAME` (`hone data prepare --out`)."""
    return hone_home() / "datasets"


def kept_version(name: str, dataset_id: str) -> Path | None:
    """The folder `$HONE_HOME/datasets/{name}` when it holds the version `dataset_id`; None otherwise.

    `name` must be a plain folder name (no separators, no `..`), so a name read from a record never reaches
    another folder; a folder since replaced by another version (`--force`) no longer answers for this id.
    """
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        return None
    folder = datasets_dir() / name
    if not is_dataset_dir(folder):
        return None
    return folder if read_manifest(folder).get("dataset_id") == dataset_id else None


@dataclass(frozen=True)
class InputSummary:
    """One input file of a version: its file name (never where it lay), format, counts and content hash."""

    name: str
    format: str
    examples: int
    broken_lines: int
    sha256: str


@dataclass(frozen=True)
class BrokenLine:
    """One input line that could not be used (or a warning about it), by file name, line and field."""

    input: str
    line: int
    field: str
    message: str
    severity: str


@dataclass(frozen=True)
class StepSummary:
    """What one curation step did: its counts and how many examples it removed."""

    name: str
    counts: dict[str, int]
    removed: int


@dataclass(frozen=True)
class RemovedExample:
    """One example a step removed, by input file name and line, and why."""

    step: str
    input: str
    line: int
    reason: str
    detail: str


@dataclass(frozen=True)
class CurationReport:
    """A prepared version's report with every server path reduced to a file name (safe to show to a client)."""

    dataset_id: str
    counts: dict[str, int]
    inputs: list[InputSummary]
    steps: list[StepSummary]
    pii_mode: str | None  # mask, hash or drop; None when the PII step was off
    pii_found: dict[str, int]  # entity type -> findings
    examples_with_pii: int
    duplicates: dict[str, int]  # exact / near -> examples removed
    broken_lines: list[BrokenLine]
    removed: list[RemovedExample]
    readiness: dict


class _Names:
    """Replaces each input's path, wherever a report quotes it, by its file name."""

    def __init__(self, paths: list[str]):
        self.names = {path: Path(path).name for path in sorted(paths, key=len, reverse=True) if path}

    def __call__(self, text: str) -> str:
        for path, name in self.names.items():
            text = text.replace(path, name)
        return text


def _broken_line(problem: dict, names: _Names) -> BrokenLine:
    """A report problem, whose field is `PATH:FIELD` (or `PATH` for the whole line), split into file and field."""
    where = problem["field"]
    for path, name in names.names.items():
        if where == path or where.startswith(path + ":"):
            return BrokenLine(name, problem["line"], where[len(path) + 1:], names(problem["message"]),
                              problem["severity"])
    return BrokenLine("", problem["line"], names(where), names(problem["message"]), problem["severity"])


def curation_report(folder: Path) -> CurationReport:
    """The curation report of the version in `folder` (manifest.json and report.json), without server paths."""
    manifest = read_manifest(folder)
    details_path = Path(folder) / "report.json"
    details = json.loads(details_path.read_text()) if details_path.is_file() else {"problems": [], "steps": []}
    names = _Names([source.get("path", "") for source in manifest.get("sources", [])])
    steps = manifest.get("steps", [])
    pii = next((step for step in steps if step["name"] == "pii"), None)
    pii_counts = pii["counts"] if pii else {}
    return CurationReport(
        dataset_id=manifest["dataset_id"],
        counts=manifest["counts"],
        inputs=[InputSummary(Path(s.get("path", "")).name, s.get("format", ""), s.get("examples", 0),
                             s.get("broken_lines", 0), s.get("sha256", "")) for s in manifest.get("sources", [])],
        steps=[StepSummary(step["name"], step["counts"], step["removed"]) for step in steps],
        pii_mode=pii["params"].get("mode") if pii else None,
        pii_found={kind: n for kind, n in pii_counts.items() if kind not in PII_NOT_FOUND},
        examples_with_pii=pii_counts.get("examples_with_pii", 0),
        duplicates={kind: sum(s["removed"] for s in steps if s["name"] == name)
                    for name, kind in DUPLICATE_STEPS.items()},
        broken_lines=[_broken_line(problem, names) for problem in details.get("problems", [])],
        removed=[RemovedExample(step["name"], Path(r["source"]).name, r["line"], r["reason"], names(r["detail"]))
                 for step in details.get("steps", []) for r in step.get("removed", [])],
        readiness=manifest.get("readiness", {}),
    )


def version_examples(folder: Path, split: str) -> list[Example]:
    """The examples of one split of a version as training reads them; `line` is the example's input line."""
    if split not in SPLIT_NAMES:
        raise HoneError(f"unknown split {split!r}", hint=f"use one of: {', '.join(SPLIT_NAMES)}")
    path = Path(folder) / f"{split}.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not records:
        return []  # an empty split (e.g. val at fraction 0) holds no examples
    examples = load_chat_examples(path)
    for example, record in zip(examples, records, strict=True):
        example.line = (record.get("metadata") or {}).get("line", example.line)
    return examples
