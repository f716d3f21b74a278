"""Was fine-tuning worth it? The default evaluation of a finished `hone train` run.

`evaluate_run` runs `hone eval` with a config built here: on the held-out test file it compares the base model
zero-shot, the base with 3 fixed examples of the run's own training data, the base with RAG over that data (the
3 most similar training examples before each prompt) and the fine-tuned run, checks the fine-tune for
forgetting on hone's general probes, measures how many replies copy 13+ words of the run's training data verbatim
(memorization), and gives the verdict (SHIP, NOT WORTH IT, REGRESSION or INCOMPLETE), with
a note when 3-shot or RAG comes within the threshold without training. Its cost is bounded by `max_examples`
test examples per candidate and `probe_limit` probes for the base and the fine-tune.

A DPO run is evaluated like the others, with the preferred replies as the references: a test (or training) file
of preference pairs becomes conversations ending in the preferred reply.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from hone.data.formats import load_preference_examples, read_dataset
from hone.data.versions import is_dataset_dir, read_manifest
from hone.errors import HoneError
from hone.eval.config import BASE_NAME, FINETUNED_NAME, CandidateConfig, EvalConfig, RagSettings
from hone.eval.run import evaluate

SHOTS = 3
RAG_K = 3
SHOTS_NAME, RAG_NAME = f"{SHOTS}-shot", "rag"


@dataclass(frozen=True)
class Figure:
    """One candidate's primary metric, and its change against the base with the paired bootstrap 95% CI."""

    value: float | None
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None


@dataclass
class DefaultEvaluation:
    """The answer to "was fine-tuning worth it?" for one run, with where the full reports are."""

    verdict: str  # SHIP, NOT WORTH IT, REGRESSION or INCOMPLETE
    reasons: list[str]
    primary_metric: str
    primary_metric_reason: str
    figures: dict[str, Figure]  # per candidate; the base has no delta
    report_json: Path
    report_html: Path
    candidates: list[str]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """Plain JSON types, paths as strings."""
        return asdict(self) | {"report_json": str(self.report_json), "report_html": str(self.report_html)}


def _run_settings(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise HoneError(f"{run_dir} is not a hone run directory: {path} is missing",
                        hint="pass the folder `hone train` printed when it finished")
    config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict):
        raise HoneError(f"{path}: not a training config")
    return config


def _training_file(config: dict) -> tuple[Path | None, str | None]:
    """The run's own training data (data.train, or the train split of a `hone data prepare` folder), and where
    the folder's replay examples came from ('self' or their file) when it mixed replay in."""
    train = (config.get("data") or {}).get("train")
    if not train:
        return None, None
    path = Path(train)
    if not is_dataset_dir(path):
        return path, None
    steps = read_manifest(path).get("steps", [])
    replay = next((step.get("params", {}).get("source") for step in steps if step.get("name") == "replay"), None)
    return path / "train.jsonl", replay


def _as_conversations(path: Path, folder: Path, name: str) -> Path:
    """`path` itself when it holds conversations; a file of preference pairs becomes `folder/name` with each
    prompt followed by its preferred reply."""
    if read_dataset(path).format != "dpo":
        return path
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    lines = [json.dumps({"messages": [*pair.prompt, pair.chosen]}, ensure_ascii=False)
             for pair in load_preference_examples(path)]
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def _without_replay(path: Path, replay_source: str, folder: Path) -> Path:
    """A prepared training split without the general replay examples `hone data prepare` mixed in from
    `replay_source` (they would be poor demonstrations of the task); each line names its source."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def is_replay(line: str) -> bool:
        source = str((json.loads(line).get("metadata") or {}).get("source", ""))
        return source.startswith("replay:") or source == replay_source

    kept = [line for line in lines if not is_replay(line)]
    if len(kept) == len(lines) or not kept:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "train_without_replay.jsonl"
    target.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return target


def default_eval_config(run_dir: Path, test_file: Path, out_dir: Path, *, max_examples: int = 100,
                        probe_limit: int = 30) -> tuple[EvalConfig, list[str]]:
    """The eval config of `evaluate_run` (base, 3-shot and RAG over the run's training data, the fine-tune;
    probes; memorization against the training data; verdict on the default primary metric), and warnings about
    candidates that had to be left out."""
    run_dir, test_file, out_dir = Path(run_dir), Path(test_file), Path(out_dir)
    config = _run_settings(run_dir)
    inputs = out_dir / "inputs"
    data = _as_conversations(test_file, inputs, "test_preferred.jsonl")
    train, replay_source = _training_file(config)
    warnings = []
    if train is None or not train.is_file():
        warnings.append(f"the run's training data ({train}) is not there: {SHOTS_NAME} and {RAG_NAME} were not "
                        "evaluated")
        train = None
    elif replay_source:
        train = _without_replay(train, replay_source, inputs)
    else:
        train = _as_conversations(train, inputs, "train_preferred.jsonl")
    candidates = [CandidateConfig(name=BASE_NAME)]
    if train is not None:
        candidates += [CandidateConfig(name=SHOTS_NAME, shots=SHOTS),
                       CandidateConfig(name=RAG_NAME, rag=RagSettings(k=RAG_K, source="train"))]
    candidates.append(CandidateConfig(name=FINETUNED_NAME, finetuned=True))
    forgetting = {"enabled": probe_limit > 0, "limit": probe_limit if probe_limit > 0 else None}
    settings = EvalConfig(adapter=run_dir, data=data, train=train, out=out_dir, limit=max_examples,
                          candidates=candidates, forgetting=forgetting, memorization={"enabled": True})
    return settings, warnings


def _figures(report: dict, metric: str) -> dict[str, Figure]:
    figures = {}
    for name, aggregates in report["aggregates"].items():
        change = (report["comparisons"].get(name) or {}).get(metric) or {}
        figures[name] = Figure(value=aggregates.get(metric), delta=change.get("delta"), ci_low=change.get("ci_low"),
                               ci_high=change.get("ci_high"))
    return figures


def evaluate_run(run_dir: Path, test_file: Path, *, out_dir: Path | None = None, max_examples: int = 100,
                 probe_limit: int = 30, show_progress: bool = False) -> DefaultEvaluation:
    """Evaluate a finished run (method lora, qlora, dora, full or dpo) on `test_file`: the base zero-shot, 3-shot
    and RAG over the run's training data, and the fine-tune, on the first `max_examples` test examples, plus
    `probe_limit` forgetting probes (0: none) spread over the probe categories; then the verdict. Writes
    report.json and report.html to `out_dir` (default RUN_DIR/eval)."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "eval"
    settings, warnings = default_eval_config(run_dir, test_file, out_dir, max_examples=max_examples,
                                             probe_limit=probe_limit)
    report = evaluate(settings, show_progress=show_progress)
    verdict = report["verdict"]
    return DefaultEvaluation(
        verdict=verdict["decision"], reasons=verdict["reasons"], notes=verdict["notes"],
        primary_metric=verdict["primary_metric"], primary_metric_reason=verdict["primary_metric_reason"],
        figures=_figures(report, verdict["primary_metric"]), report_json=Path(report["paths"]["json"]),
        report_html=Path(report["paths"]["html"]), candidates=[c["name"] for c in report["candidates"]],
        warnings=warnings + report["warnings"], seconds=round(time.perf_counter() - started, 1))
