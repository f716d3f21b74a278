"""The Hugging Face model card (README.md) of a model version: YAML metadata hub tools read (base model, relation,
library, datasets, model-index with the eval figures and their CIs, license) and a body a person reads.

The worker writes it into the run folder and the weights folder when it registers a version; `hone export` writes
one into the merged folder. Whatever hone cannot know is marked "To be completed by the provider", never guessed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

import hone

if TYPE_CHECKING:
    from huggingface_hub import ModelCard, ModelCardData

TO_BE_COMPLETED = "To be completed by the provider"
CARD_FILE = "README.md"
FINETUNED_CANDIDATE = "fine-tuned"  # the name hone's default evaluation gives the run it judges
ADAPTER_METHODS = ("lora", "dora", "qlora", "dpo")
NOT_QUALITY = ("output_tokens", "latency_s")  # operational figures, not how good the replies are
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|#!~])")
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")  # a pipe in a code span would end the table cell


@dataclass(frozen=True)
class EvalFigure:
    """One metric of the fine-tuned model on the test set, and its change against the baseline with the 95% CI."""

    metric: str
    value: float | None
    baseline: str | None = None
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    primary: bool = False


# Markdown -----------------------------------------------------------------------------------------------------------

def md_text(value: Any) -> str:
    """User-provided text as literal Markdown on one line: no markup, links or HTML of its own survive."""
    text = " ".join(str(value).split())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def md_code(value: Any) -> str:
    """An identifier or path as an inline code span, whatever backticks it holds."""
    text = " ".join(str(value).split())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    return f"{fence} {text} {fence}" if longest or text.startswith(" ") else f"{fence}{text}{fence}"


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    """A pipe table of Markdown cells (md_text/md_code); a pipe in a code span is escaped so it stays in its cell."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_UNESCAPED_PIPE.sub(r"\\|", cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def number(value: Any, digits: int = 2) -> str:
    """A figure for a table: rounded, or '-' when there is none."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return md_text(value)


# What a version knows --------------------------------------------------------------------------------------------

def run_summary(version: dict) -> dict:
    """RUN_DIR/summary.json of the version's run (trainable parameters, wall time, epochs), or {} without it."""
    path = Path(version.get("run_dir") or "") / "summary.json"
    try:
        return json.loads(path.read_text()) if version.get("run_dir") and path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def eval_report_path(version: dict) -> Path | None:
    """Where the full eval report (report.json) of the version lives, when it is still on disk."""
    evaluation = version.get("eval") or {}
    run_dir = Path(version["run_dir"]) if version.get("run_dir") else None
    candidates = []
    if evaluation.get("report_json"):
        candidates.append(Path(evaluation["report_json"]))
    if evaluation.get("report") and run_dir is not None:
        candidates.append(run_dir.parent / evaluation["report"])  # a job's report path is relative to its folder
    if run_dir is not None:
        candidates.append(run_dir / "eval" / "report.json")
    return next((path for path in candidates if path.is_file()), None)


def full_eval_report(version: dict) -> dict | None:
    """The full eval report (aggregates, comparisons, forgetting, slices, memorization), or None."""
    path = eval_report_path(version)
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def evaluated_at(version: dict) -> str | None:
    """When the evaluation ran: the report file's time, else the time the version was registered with it."""
    path = eval_report_path(version)
    if path is not None:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
    return version.get("created_at") if version.get("eval") else None


def eval_figures(version: dict, report: dict | None = None) -> list[EvalFigure]:
    """The fine-tuned model's figures: every quality metric of the full report, else the stored primary metric."""
    evaluation = version.get("eval") or {}
    report = report if report is not None else full_eval_report(version)
    primary = evaluation.get("primary_metric") or ((report or {}).get("verdict") or {}).get("primary_metric")
    if report and report.get("aggregates"):
        candidate = ((report.get("verdict") or {}).get("candidate")
                     or (FINETUNED_CANDIDATE if FINETUNED_CANDIDATE in report["aggregates"] else None))
        aggregates = report["aggregates"].get(candidate) if candidate else None
        if aggregates:
            changes = (report.get("comparisons") or {}).get(candidate) or {}
            figures = []
            for metric, value in aggregates.items():
                if value is None or metric in NOT_QUALITY:
                    continue
                change = changes.get(metric) or {}
                figures.append(EvalFigure(metric, value, report.get("baseline"), change.get("delta"),
                                          change.get("ci_low"), change.get("ci_high"), metric == primary))
            return sorted(figures, key=lambda figure: not figure.primary)
    figures = evaluation.get("figures") or {}
    name = FINETUNED_CANDIDATE if FINETUNED_CANDIDATE in figures else next(
        (key for key, figure in figures.items() if (figure or {}).get("delta") is not None), None)
    if primary and name and (figures[name] or {}).get("value") is not None:
        figure = figures[name]
        return [EvalFigure(primary, figure["value"], "base", figure.get("delta"), figure.get("ci_low"),
                           figure.get("ci_high"), True)]
    return []


def base_license(*names: str | None) -> str | None:
    """The license of the base model, when hone's catalog or the model folder's README front matter states it."""
    from hone.errors import HoneError
    from hone.models.catalog import CATALOG, resolve

    for name in names:
        if not name:
            continue
        if name in CATALOG:
            return CATALOG[name].license
        try:
            source = resolve(name)
        except HoneError:
            continue
        readme = source.path / CARD_FILE if source.kind == "hf_dir" else None
        if readme is not None and readme.is_file():
            license_ = _front_matter(readme).get("license")
            if isinstance(license_, str) and license_:
                return license_
    return None


def _front_matter(path: Path) -> dict:
    text = path.read_text(encoding="utf-8", errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def dataset_ids(version: dict) -> list[str]:
    """Stable local identifiers of the training data (no hub ids: the data never left this machine)."""
    if version.get("dataset_id"):
        return [f"hone-dataset:{version['dataset_id']}"]
    if version.get("training_file_sha256"):
        return [f"hone-file-sha256:{version['training_file_sha256']}"]
    if version.get("dataset_fingerprint"):
        return [f"hone-data-fingerprint:{version['dataset_fingerprint']}"]
    return []


def training_filename(version: dict) -> str | None:
    """The uploaded training file's name, from the version's lineage."""
    dataset = next((link for link in version.get("lineage") or [] if link.get("stage") == "dataset"), {})
    return dataset.get("filename")


def version_from_run_dir(run_dir: Path) -> dict:
    """A version-shaped record of a run that may never have been registered (`hone train`, then `hone export`):
    its config, summary, and its eval report when RUN_DIR/eval holds one. The name and training file are the
    registered ones when the worker's card is in the folder, else the name is the folder's."""
    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    summary = run_summary({"run_dir": str(run_dir)})
    existing = _front_matter(run_dir / CARD_FILE) if (run_dir / CARD_FILE).is_file() else {}
    index = existing.get("model-index")
    name = index[0].get("name") if isinstance(index, list) and index and isinstance(index[0], dict) else None
    registered = [d for d in existing.get("datasets") or [] if isinstance(d, str)]
    file_sha256 = next((d.split(":", 1)[1] for d in registered if d.startswith("hone-file-sha256:")), None)
    evaluation = None
    report_path = run_dir / "eval" / "report.json"
    if report_path.is_file():
        try:
            verdict = json.loads(report_path.read_text()).get("verdict") or {}
        except json.JSONDecodeError:
            verdict = {}
        evaluation = {"verdict": verdict.get("decision"), "reasons": verdict.get("reasons") or [],
                      "primary_metric": verdict.get("primary_metric"), "report_json": str(report_path)}
    return {"name": name or run_dir.name, "project": None, "base_model": config.get("base_model"),
            "base_fingerprint": summary.get("base_model_fingerprint"), "job_id": None,
            "training_file_sha256": file_sha256, "dataset_id": summary.get("dataset_id"),
            "dataset_fingerprint": summary.get("dataset_fingerprint"), "config": config,
            "metrics": {key: summary.get(key) for key in ("steps", "final_train_loss", "best_eval_loss", "tokens",
                                                          "tokens_per_s", "train_seconds", "replay")},
            "eval": evaluation, "verdict": (evaluation or {}).get("verdict"), "run_dir": str(run_dir),
            "weights_dir": summary.get("adapter_dir") or summary.get("model_dir") or str(run_dir / "adapter"),
            "created_at": None}


def method_of(version: dict) -> str:
    """The training method of the version's run (lora when its config names none)."""
    return str((version.get("config") or {}).get("method") or "lora")


def lora_settings(version: dict) -> dict:
    """Rank, alpha, dropout and target modules of an adapter run (the config's defaults when unset)."""
    lora = (version.get("config") or {}).get("lora") or {}
    return {"r": lora.get("r", 16), "alpha": lora.get("alpha", 32), "dropout": lora.get("dropout", 0.0),
            "target_modules": lora.get("target_modules", "all-linear")}


# The card ----------------------------------------------------------------------------------------------------------

def card_data(version: dict, *, merged: bool = False) -> ModelCardData:
    """The card's YAML metadata: an adapter (PEFT) for lora/dora/qlora/dpo runs, a fine-tune (transformers) for full
    runs and for merged exports."""
    from huggingface_hub import EvalResult, ModelCardData

    adapter = method_of(version) in ADAPTER_METHODS and not merged
    figures = eval_figures(version)
    results = []
    for figure in figures:
        args = {"baseline": figure.baseline, "delta": figure.delta, "ci_low": figure.ci_low,
                "ci_high": figure.ci_high, "confidence": 0.95} if figure.delta is not None else None
        results.append(EvalResult(task_type="text-generation", dataset_type="hone-test-set",
                                  dataset_name="held-out test set", metric_type=figure.metric,
                                  metric_value=figure.value, metric_args=args))
    license_ = base_license((version.get("config") or {}).get("base_model"), version.get("base_model"))
    return ModelCardData(
        model_name=version["name"], base_model=version.get("base_model"),
        base_model_relation="adapter" if adapter else "finetune",
        library_name="peft" if adapter else "transformers", datasets=dataset_ids(version) or None,
        license=license_ or "other", eval_results=results or None, pipeline_tag="text-generation",
        tags=["hone", method_of(version)] + (["merged"] if merged else []))


def model_card(version: dict, *, merged: bool = False) -> ModelCard:
    """The whole card (huggingface_hub.ModelCard) of a version."""
    from huggingface_hub import ModelCard

    data = card_data(version, merged=merged)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_body(version, data, merged)}")


def write_model_card(version_dict: dict, out_dir: Path, *, merged: bool = False) -> Path:
    """Write README.md (the model card) for a version into `out_dir`; returns its path."""
    path = Path(out_dir) / CARD_FILE
    path.write_text(str(model_card(version_dict, merged=merged)), encoding="utf-8")
    return path


def write_version_cards(db, name: str) -> list[Path]:
    """Write the card of the registered version `name`, as the caller's transaction sees it, into its run folder and
    its weights folder (so the adapter folder that serving and export read carries it); returns the paths."""
    from sqlalchemy import select

    from hone.registry.versions import _version_dict
    from hone.store.tables import FineTuningJob, ModelVersion, StoredFile

    version = _version_dict(db.scalar(select(ModelVersion).where(ModelVersion.name == name)))
    job = db.get(FineTuningJob, version["job_id"]) if version.get("job_id") else None
    training = db.get(StoredFile, job.training_file) if job else None
    version["lineage"] = [{"stage": "dataset", "training_file": job.training_file if job else None,
                           "filename": training.filename if training else None}]
    folders = dict.fromkeys(Path(version[key]) for key in ("run_dir", "weights_dir"))
    return [write_model_card(version, folder) for folder in folders if folder.is_dir()]


def _body(version: dict, data: ModelCardData, merged: bool) -> str:
    config = version.get("config") or {}
    training = config.get("training") or {}
    summary = run_summary(version)
    metrics = version.get("metrics") or {}
    method = method_of(version)
    adapter = data.library_name == "peft"
    base = version.get("base_model")
    sections = [f"# {md_text(version['name'])}"]
    what = (f"A {md_code(method)} adapter" if adapter else
            f"The base with a {md_code(method)} adapter merged into its weights" if merged else
            "A fully fine-tuned model")
    sections.append(f"{what} on {md_code(base)}, trained and registered with hone {md_text(hone.__version__)}."
                    + (f" Registered {md_text(version['created_at'])}." if version.get("created_at") else ""))

    details = [["Base model", md_code(base)], ["Base model fingerprint (sha256 of weights)",
                                                 md_code(version.get("base_fingerprint") or "-")],
               ["Relation to base", md_code(data.base_model_relation)], ["Method", md_code(method)]]
    if method in ADAPTER_METHODS:
        lora = lora_settings(version)
        targets = lora["target_modules"]
        details += [["LoRA rank / alpha / dropout", f"{lora['r']} / {lora['alpha']} / {lora['dropout']}"],
                    ["LoRA target modules", md_code(", ".join(targets) if isinstance(targets, list) else targets)]]
    details += [["Trainable parameters", number(summary.get("trainable_parameters"))],
                ["License", md_code(data.license) + ("" if data.license != "other" else
                                                     f" (the base model's license is unknown: {TO_BE_COMPLETED})")],
                ["Provider", TO_BE_COMPLETED], ["Project", md_code(version.get("project") or "-")],
                ["Training job", md_code(version.get("job_id") or "-")]]
    sections += ["## Model details", md_table(["", ""], details)]

    data_rows = [["Identifier", ", ".join(md_code(i) for i in data.datasets or []) or TO_BE_COMPLETED],
                 ["Training file", md_text(training_filename(version) or "-")],
                 ["Examples (train / eval / skipped as too long or unusable)", _example_counts(summary)],
                 ["Replay examples (general data against forgetting)",
                  number((metrics.get("replay") or {}).get("examples"))]]
    sections += ["## Training data", "The identifiers are local to this hone installation (`hone-dataset:` is the "
                 "id of a `hone data prepare` dataset version, `hone-file-sha256:` the sha256 of an uploaded file); "
                 "the data is not on the Hugging Face Hub.", md_table(["", ""], data_rows)]

    procedure = [["Epochs", number(training.get("epochs", 1))], ["Learning rate", number(training.get("lr"), 6)],
                 ["Batch size x gradient accumulation",
                  f"{number(training.get('batch_size'))} x {number(training.get('grad_accum', 1))}"],
                 ["Max length (tokens)", number((config.get("data") or {}).get("max_length"))],
                 ["Optimizer steps", number(metrics.get("steps"))], ["Tokens trained", number(metrics.get("tokens"))],
                 ["Training time (s)", number(metrics.get("train_seconds"))],
                 ["Final train loss", number(metrics.get("final_train_loss"), 4)],
                 ["Best eval loss", number(metrics.get("best_eval_loss"), 4)]]
    sections += ["## Training procedure", md_table(["", ""], procedure)]

    sections += ["## Evaluation", _evaluation_section(version)]
    sections += ["## How to use", _usage(version, adapter, merged)]
    sections += ["## Limitations and intended use", f"Intended purpose, known limitations and risks: "
                 f"{TO_BE_COMPLETED}. `hone registry document` writes the EU AI Act Annex IV technical "
                 "documentation of this version from its lineage."]
    return "\n\n".join(sections) + "\n"


def _example_counts(summary: dict) -> str:
    examples = summary.get("examples")
    if not examples:
        return "-"
    skipped = sum((examples.get("skipped") or {}).values())
    return f"{number(examples.get('train'))} / {number(examples.get('eval'))} / {number(skipped)}"


def _evaluation_section(version: dict) -> str:
    evaluation = version.get("eval")
    if not evaluation:
        return "No evaluation after training was recorded for this version."
    if evaluation.get("error"):
        return f"The evaluation after training could not run: {md_text(evaluation['error'])}"
    lines = [f"Verdict: **{md_text(evaluation.get('verdict') or '-')}**"
             + (f" (evaluated {md_text(evaluated_at(version))})" if evaluated_at(version) else "")]
    lines += [f"- {md_text(reason)}" for reason in evaluation.get("reasons") or []]
    figures = eval_figures(version)
    if figures:
        rows = [[md_code(f.metric) + (" (primary)" if f.primary else ""), number(f.value),
                 md_code(f.baseline) if f.baseline else "-", number(f.delta),
                 f"[{number(f.ci_low)}, {number(f.ci_high)}]" if f.ci_low is not None else "-"] for f in figures]
        lines.append(md_table(["metric", "value", "against", "change", "95% CI of the change"], rows))
        lines.append("On the held-out test set; the CI is a paired bootstrap over the test examples.")
    return "\n\n".join(lines)


def _usage(version: dict, adapter: bool, merged: bool) -> str:
    if adapter:
        return ("```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM, "
                "AutoTokenizer\n\nbase = AutoModelForCausalLM.from_pretrained(BASE_MODEL_FOLDER)\n"
                "model = PeftModel.from_pretrained(base, THIS_FOLDER)\ntokenizer = "
                "AutoTokenizer.from_pretrained(THIS_FOLDER)\n```\n\nWith hone: `hone serve`, then request model "
                f"{md_code(version['name'])}.")
    return ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\nmodel = "
            "AutoModelForCausalLM.from_pretrained(THIS_FOLDER)\ntokenizer = AutoTokenizer.from_pretrained(THIS_FOLDER)"
            "\n```" + ("\n\nThe folder also loads in vLLM and TGI without PEFT." if merged else ""))
