"""The technical documentation of a model version along Annex IV of the EU AI Act, as Markdown and HTML.

Everything hone recorded about the version goes in: the base model and the modification made, the compute used,
where the data came from and what curation did to it, the evaluation with its dates, forgetting, bias slices and
memorization, who approved the version, and its audit trail. What only the provider can say (who they are, the
intended purpose when the project sets none, risk management, standards, post-market monitoring, ...) is marked
"To be completed by the provider", never invented.
"""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlalchemy import select

import hone
from hone.audit.log import AuditEntry, to_entry
from hone.data.versions import is_dataset_dir, read_manifest
from hone.registry.card import (
    ADAPTER_METHODS,
    TO_BE_COMPLETED,
    base_license,
    eval_figures,
    evaluated_at,
    full_eval_report,
    lora_settings,
    md_code,
    md_table,
    md_text,
    method_of,
    number,
    run_summary,
)
from hone.registry.versions import Registry
from hone.store import engine_for, session
from hone.store.tables import AuditLogEntry, FineTuningJob, StoredFile

TBC = f"*{TO_BE_COMPLETED}*"
SOFTWARE = ("torch", "transformers", "peft", "huggingface_hub")


def document(version_name: str, project: str | None = None, db_url: str | None = None,
             out_dir: Path | str = ".") -> dict[str, Path]:
    """Write the Annex IV technical documentation of `version_name` (of `project`; None: any project) into `out_dir`
    as Markdown and HTML; returns {"markdown": path, "html": path}."""
    markdown = technical_documentation(version_name, project, db_url)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", version_name).strip("_.") or "model"
    paths = {"markdown": out_dir / f"{stem}.annex-iv.md", "html": out_dir / f"{stem}.annex-iv.html"}
    paths["markdown"].write_text(markdown, encoding="utf-8")
    paths["html"].write_text(markdown_to_html(markdown, f"Technical documentation: {version_name}"),
                             encoding="utf-8")
    return paths


def markdown_to_html(markdown: str, title: str) -> str:
    """A standalone HTML page of the Markdown; raw HTML in it is shown as text, never run."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return (f"<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{html.escape(title)}"
            f"</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}</body>\n</html>\n")


_CSS = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
        "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;"
        "vertical-align:top;text-align:left}code{background:#f4f4f4;padding:0 .2rem;word-break:break-all}"
        "em{color:#a33}")


# Gathering ----------------------------------------------------------------------------------------------------------

def _job_and_file(db_url: str | None, job_id: str | None) -> tuple[dict | None, dict | None]:
    """The version's job and its training file as plain records (the file with its validation outcome)."""
    if not job_id:
        return None, None
    with session(engine_for(db_url)) as db:
        job = db.get(FineTuningJob, job_id)
        stored = db.get(StoredFile, job.training_file) if job else None
        job_record = None if job is None else {
            "id": job.id, "model": job.model, "training_file": job.training_file,
            "validation_file": job.validation_file, "created_at": _iso(job.created_at),
            "started_at": _iso(job.started_at), "finished_at": _iso(job.finished_at),
            "created_by": job.created_by, "attempts": job.attempts,
            "hone": json.loads(job.hone_json or "{}")}
        file_record = None if stored is None else {
            "id": stored.id, "filename": stored.filename, "sha256": stored.sha256, "bytes": stored.bytes,
            "status": stored.status, "format": stored.format, "examples": stored.examples, "errors": stored.errors,
            "warnings": stored.warnings, "problems": json.loads(stored.validation_json or "[]"),
            "created_at": _iso(stored.created_at)}
    return job_record, file_record


def _audit_entries(db_url: str | None, project: str, object_ids: list[str]) -> list[AuditEntry]:
    """Audit entries about the version, its job or its training file, oldest first."""
    query = (select(AuditLogEntry).where(AuditLogEntry.project == project, AuditLogEntry.object_id.in_(object_ids))
             .order_by(AuditLogEntry.seq))
    with session(engine_for(db_url)) as db:
        return [to_entry(row) for row in db.scalars(query)]


def _manifest(version: dict) -> dict | None:
    """The `hone data prepare` manifest of the training data, when the run trained on such a dataset folder."""
    if not version.get("dataset_id"):
        return None
    train = ((version.get("config") or {}).get("data") or {}).get("train")
    if not train:
        return None
    for folder in (Path(train), Path(train).parent):
        if is_dataset_dir(folder):
            manifest = read_manifest(folder)
            if manifest.get("dataset_id") == version["dataset_id"]:
                return manifest
    return None


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _versions_of_model(registry: Registry, version: dict) -> list[dict]:
    if not version.get("model"):
        return []
    return [v for v in registry.list(version["project"]) if v.get("model") == version["model"]]


# The document -------------------------------------------------------------------------------------------------------

def technical_documentation(version_name: str, project: str | None = None, db_url: str | None = None) -> str:
    """The Annex IV technical documentation of a registered version, as Markdown."""
    registry = Registry(db_url)
    version = registry.show(version_name, project)
    settings = registry.project_settings(version["project"])
    job, training_file = _job_and_file(db_url, version.get("job_id"))
    object_ids = [i for i in (version["name"], version.get("job_id"), (job or {}).get("training_file")) if i]
    audit = _audit_entries(db_url, version["project"], object_ids)
    report = full_eval_report(version)
    summary = run_summary(version)
    sections = [
        f"# Technical documentation (EU AI Act, Annex IV): {md_text(version['name'])}",
        f"Generated by hone {md_text(hone.__version__)} on {datetime.now(UTC).isoformat(timespec='seconds')} from "
        "the registry's record of this model version (its lineage, evaluation, approvals and audit log). Every "
        f"field marked {TBC} is one hone cannot know; the provider completes it. Whether Annex IV applies depends "
        f"on the AI system this model is part of being high-risk: {TBC}.",
        _general(version, settings, summary),
        _development(version, job, summary),
        _data(version, job, training_file),
        _oversight(version, job),
        _testing(version, report),
        _monitoring(version, report, training_file),
        _metrics_appropriateness(version),
        "## 5. Risk management system (Article 9)\n\n" + TBC,
        _lifecycle(registry, version),
        "## 7. Harmonised standards and other specifications applied\n\n" + TBC,
        "## 8. EU declaration of conformity (Article 47)\n\n" + TBC,
        "## 9. Post-market monitoring (Article 72)\n\nThe system in place to evaluate the AI system's performance "
        f"in the post-market phase, including the post-market monitoring plan: {TBC}",
        _audit_section(audit, object_ids),
    ]
    return "\n\n".join(sections) + "\n"


def _general(version: dict, settings: dict, summary: dict) -> str:
    purpose = settings.get("intended_purpose")
    aliases = version.get("aliases") or []
    installed = []
    for package in SOFTWARE:
        try:
            installed.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    provider = settings.get("provider")
    rows = [["Provider (name and address)", md_text(provider) if provider else TBC],
            ["Intended purpose", md_text(purpose) if purpose else TBC],
            ["Model version", md_code(version["name"])],
            ["Model and version number", (md_code(version["model"]) + f" version {number(version.get('version'))}")
             if version.get("model") else "-"],
            ["Project", md_code(version["project"])],
            ["Registered", md_text(version.get("created_at") or "-")],
            ["Aliases pointing at this version", ", ".join(md_code(a) for a in aliases) or "none"],
            ["Software: training code version", md_code(summary["code_version"]) if summary.get("code_version")
             else "not recorded"],
            ["Software installed when this document was generated",
             md_text(", ".join([f"hone {hone.__version__}", *installed]))],
            ["Interaction with hardware, software or other AI systems", TBC],
            ["Forms in which the system is placed on the market or put into service", TBC],
            ["Hardware the system is intended to run on", TBC],
            ["User interface and instructions for use for the deployer", TBC]]
    return "## 1. General description of the AI system\n\n" + md_table(["", ""], rows)


def _development(version: dict, job: dict | None, summary: dict) -> str:
    config = version.get("config") or {}
    training = config.get("training") or {}
    method = method_of(version)
    metrics = version.get("metrics") or {}
    license_ = base_license(config.get("base_model"), version.get("base_model"))
    base_rows = [["Pre-trained base model", md_code(version.get("base_model"))],
                 ["Base model as resolved", md_code(config.get("base_model") or version.get("base_model"))],
                 ["Base model fingerprint (sha256 of its weights)", md_code(version.get("base_fingerprint") or "-")],
                 ["Base model license", md_code(license_) if license_ else TBC],
                 ["Base model provider and its technical documentation", TBC]]
    modification = [["Method", md_code(method)]]
    if method in ADAPTER_METHODS:
        lora = lora_settings(version)
        targets = lora["target_modules"]
        modification += [["LoRA rank (r)", number(lora["r"])], ["LoRA alpha", number(lora["alpha"])],
                         ["LoRA dropout", number(lora["dropout"])],
                         ["LoRA target modules", md_code(", ".join(targets) if isinstance(targets, list) else targets)]]
    if method == "dpo":
        modification.append(["DPO beta", number((config.get("dpo") or {}).get("beta"))])
    modification += [["Epochs", number(training.get("epochs", 1))],
                     ["Learning rate", number(training.get("lr"), 6)],
                     ["Schedule (warmup ratio)", f"{md_text(training.get('scheduler', '-'))} "
                                                 f"({number(training.get('warmup_ratio'))})"],
                     ["Batch size x gradient accumulation",
                      f"{number(training.get('batch_size'))} x {number(training.get('grad_accum', 1))}"],
                     ["Max example length (tokens)", number((config.get("data") or {}).get("max_length"))],
                     ["Seed", number(training.get("seed"))],
                     ["Trainable parameters", number(summary.get("trainable_parameters")) if
                      summary.get("trainable_parameters") is not None else "not recorded"]]
    objective = ("the DPO preference loss on preferred vs. rejected replies, against the frozen base as reference"
                 if method == "dpo" else "next-token cross-entropy on the assistant turns of the training examples")
    seconds = summary.get("wall_seconds")
    compute = [["Device", md_text(summary["device"]) if summary.get("device") else
                f"not recorded by hone: {TBC}"],
               ["Precision of the frozen weights", md_text(summary.get("frozen_dtype") or "-")],
               ["Wall time (s)", number(seconds) if seconds is not None else "not recorded"],
               ["Training time (s)", number(metrics.get("train_seconds"))],
               ["Optimizer steps", number(metrics.get("steps"))],
               ["Tokens trained", number(metrics.get("tokens"))],
               ["Throughput (tokens/s)", number(metrics.get("tokens_per_s"), 1)],
               ["Memory estimate (GiB)", number(summary.get("memory_estimate_gib"))],
               ["Job created / started / finished", " / ".join(md_text(t or "-") for t in (
                   (job or {}).get("created_at"), (job or {}).get("started_at"), (job or {}).get("finished_at")))],
               ["Energy consumption", TBC]]
    return "\n\n".join([
        "## 2. Detailed description of the elements of the AI system and of its development process",
        "### 2(a) Methods and steps of development; pre-trained system used", md_table(["", ""], base_rows),
        "Modification made to the pre-trained model:", md_table(["", ""], modification),
        "### 2(b) Design specifications",
        f"Training objective: {objective}. Final train loss {number(metrics.get('final_train_loss'), 4)}, best eval "
        f"loss {number(metrics.get('best_eval_loss'), 4)}. General logic of the AI system, key design choices and "
        f"their rationale, assumptions and trade-offs: {TBC}",
        "### 2(c) System architecture and computational resources", md_table(["", ""], compute)])


def _data(version: dict, job: dict | None, training_file: dict | None) -> str:
    parts = ["### 2(d) Data requirements: provenance, scope and curation"]
    manifest = _manifest(version)
    if manifest is not None:
        parts.append(f"The training data is the `hone data prepare` dataset version {md_code(manifest['dataset_id'])}"
                     ".")
        sources = [[md_code(s.get("path")), md_text(s.get("format") or "-"), number(s.get("examples")),
                    number(s.get("broken_lines")), md_code(s.get("sha256") or "-")]
                   for s in manifest.get("sources", [])]
        parts.append(md_table(["source", "format", "examples", "broken lines", "sha256"], sources))
        counts = manifest.get("counts") or {}
        parts.append("Counts: " + ", ".join(f"{md_text(k)} {number(v)}" for k, v in counts.items()))
        parts.append("Curation steps, in order:")
        parts.append(md_table(["step", "what it found and did", "examples removed"],
                              [[md_code(s.get("name")), _step_summary(s), number(s.get("removed"))]
                               for s in manifest.get("steps", [])]))
    else:
        parts.append("The training data did not come from `hone data prepare`, so hone recorded no curation of it "
                     "(no PII masking, deduplication, quality filtering or decontamination): "
                     f"{TBC} (data cleaning done outside hone, if any).")
    if training_file is not None:
        rows = [["File", md_code(training_file["id"]) + " " + md_text(training_file["filename"])],
                ["sha256", md_code(training_file["sha256"])], ["Bytes", number(training_file["bytes"])],
                ["Uploaded", md_text(training_file["created_at"] or "-")],
                ["Validation status", md_text(training_file["status"])],
                ["Format", md_text(training_file["format"] or "-")],
                ["Examples", number(training_file["examples"])],
                ["Broken lines (errors) / warnings", f"{number(training_file['errors'])} / "
                                                     f"{number(training_file['warnings'])}"]]
        held_out = ((job or {}).get("hone") or {}).get("eval") or {}
        if held_out:
            rows.append(["Held out for testing (job settings)", md_code(json.dumps(held_out, sort_keys=True))])
        parts += ["Uploaded training file and its validation record:", md_table(["", ""], rows)]
        if training_file["problems"]:
            parts.append(md_table(["line", "field", "severity", "problem"],
                                  [[number(p.get("line")), md_text(p.get("field") or "-"),
                                    md_text(p.get("severity") or "-"), md_text(p.get("message") or "-")]
                                   for p in training_file["problems"][:20]]))
    elif version.get("training_file_sha256"):
        parts.append(f"Training file sha256: {md_code(version['training_file_sha256'])}")
    replay = (version.get("metrics") or {}).get("replay") or {}
    if replay:
        parts.append("Replay (general examples mixed in against forgetting): "
                     f"{number(replay.get('examples'))} examples" + (
                         f", fingerprint {md_code(replay['fingerprint'])}" if replay.get("fingerprint") else "")
                     + (f"; {md_text(replay['note'])}" if replay.get("note") else ""))
    parts.append(f"How the data was collected and selected, its scope and main characteristics, labelling "
                 f"procedures, and the rights to use it: {TBC}")
    return "\n\n".join(parts)


def _step_summary(step: dict) -> str:
    counts = dict(step.get("counts") or {})
    kept = counts.pop("kept", None)
    name, params = step.get("name"), step.get("params") or {}
    if name == "pii":
        with_pii = counts.pop("examples_with_pii", 0)
        found = sum(counts.values())
        mode = params.get("mode", "mask")
        detail = ", ".join(f"{md_text(k)} {number(v)}" for k, v in counts.items())
        text = (f"PII found: {number(found)} in {number(with_pii)} examples"
                + (f" ({detail})" if detail else "") + f"; {'dropped' if mode == 'drop' else 'masked'} "
                f"(mode {md_text(mode)})")
    elif name in ("exact_dedup", "near_dedup"):
        text = f"duplicates removed: {number(step.get('removed'))}"
    else:
        text = ", ".join(f"{md_text(k)} {number(v)}" for k, v in counts.items()) or "-"
    return text + (f"; kept {number(kept)}" if kept is not None else "")


def _oversight(version: dict, job: dict | None) -> str:
    approvals = version.get("approvals") or []
    author = version.get("author") or (job or {}).get("created_by")
    parts = ["### 2(e) Human oversight measures (Article 14)",
             f"Job created by: {md_text(author) if author else 'not recorded'}."]
    if approvals:
        parts.append(md_table(["alias", "decision", "by", "when", "comment"],
                              [[md_code(a.get("alias") or "-"), md_text(a.get("decision") or "-"),
                                md_text(a.get("actor") or "-"), md_text(a.get("created_at") or "-"),
                                md_text(a.get("comment") or "-")] for a in approvals]))
    else:
        parts.append("No approval recorded.")
    parts.append(f"The human oversight measures needed and the technical measures that help deployers interpret "
                 f"the outputs: {TBC}")
    parts.append("### 2(f) Pre-determined changes to the system and its performance\n\n" + TBC)
    return "\n\n".join(parts)


def _testing(version: dict, report: dict | None) -> str:
    evaluation = version.get("eval")
    parts = ["### 2(g) Validation and testing procedures and results"]
    if not evaluation:
        parts.append(f"No evaluation after training was recorded for this version: {TBC}")
        return "\n\n".join(parts + [f"Test logs and reports, dated and signed by the responsible persons: {TBC}"])
    if evaluation.get("error"):
        parts.append(f"The evaluation after training could not run: {md_text(evaluation['error'])}. {TBC}")
        return "\n\n".join(parts)
    config = (report or {}).get("config") or {}
    parts.append(f"Evaluated: {md_text(evaluated_at(version) or '-')}. Procedure: hone's evaluation after training "
                 "compares the candidates below on held-out test examples the model did not train on; each change "
                 "against the baseline has a paired bootstrap 95% confidence interval; the verdict rule decides "
                 "whether fine-tuning was worth it.")
    if config:
        parts.append(md_table(["", ""], [
            ["Test data", md_code(config.get("data") or "-")], ["Test examples", number(config.get("examples"))],
            ["Candidates", ", ".join(md_code(c.get("name")) for c in (report or {}).get("candidates") or [])],
            ["Baseline", md_code((report or {}).get("baseline") or "-")],
            ["Device / dtype", md_text(f"{config.get('device') or '-'} / {config.get('dtype') or '-'}")]]))
    parts.append(f"Verdict: **{md_text(evaluation.get('verdict') or '-')}**")
    parts += [f"- {md_text(reason)}" for reason in evaluation.get("reasons") or []]
    parts += [f"- note: {md_text(note)}" for note in evaluation.get("notes") or []]
    parts += [f"- warning: {md_text(warning)}" for warning in evaluation.get("warnings") or []]
    figures = eval_figures(version, report)
    if figures:
        parts.append(md_table(["metric (fine-tuned model)", "value", "against", "change", "95% CI of the change"],
                              [[md_code(f.metric) + (" (primary)" if f.primary else ""), number(f.value),
                                md_code(f.baseline) if f.baseline else "-", number(f.delta),
                                f"[{number(f.ci_low)}, {number(f.ci_high)}]" if f.ci_low is not None else "-"]
                               for f in figures]))
    stored = evaluation.get("figures") or {}
    if stored and evaluation.get("primary_metric"):
        parts.append(f"Every candidate on the primary metric {md_code(evaluation['primary_metric'])}:")
        parts.append(md_table(["candidate", "value", "change vs base", "95% CI"],
                              [[md_code(name), number(f.get("value")), number(f.get("delta")),
                                f"[{number(f.get('ci_low'))}, {number(f.get('ci_high'))}]"
                                if f.get("ci_low") is not None else "-"] for name, f in stored.items()]))
    parts += [_forgetting((report or {}).get("forgetting")), _slices(_report_key(evaluation, report, "slices")),
              _memorization(_report_key(evaluation, report, "memorization")),
              f"Test logs and reports, dated and signed by the responsible persons: {TBC}",
              "### 2(h) Cybersecurity measures\n\nEvery change to this version, its job and its training file is in "
              f"hone's hash-chained audit log (section 10). Other cybersecurity measures: {TBC}"]
    return "\n\n".join(parts)


def _report_key(evaluation: dict, report: dict | None, key: str) -> Any:
    return evaluation[key] if key in evaluation else (report or {}).get(key)


def _ci(low: Any, high: Any) -> str:
    return f"[{number(low)}, {number(high)}]" if low is not None else "-"


def _forgetting(forgetting: dict | None) -> str:
    title = "#### Forgetting (general abilities against the base model)"
    if not forgetting:
        return f"{title}\n\nNot measured for this version: {TBC}"
    rows = []
    for name, change in (forgetting.get("changes") or {}).items():
        match, f1 = change.get("answer_match") or {}, change.get("token_f1") or {}
        rows.append([md_code(name), number(match.get("delta")), _ci(match.get("ci_low"), match.get("ci_high")),
                     number(f1.get("delta")), _ci(f1.get("ci_low"), f1.get("ci_high")),
                     number(change.get("text_perplexity_rise_pct"))])
    return "\n\n".join([title, f"{number(forgetting.get('probes'))} general probes; tolerance "
                        f"{number(forgetting.get('tolerance'))} on {md_code(forgetting.get('metric') or '-')}, "
                        f"perplexity rise tolerance {number(forgetting.get('perplexity_tolerance_pct'))}%.",
                        md_table(["model", "answer match change", "95% CI", "token F1 change", "95% CI",
                                  "text perplexity rise %"], rows)])


def _slices(slices: dict | None) -> str:
    title = "#### Performance across groups (bias slices)"
    if not slices:
        return (f"{title}\n\nNot measured for this version. Degrees of accuracy for specific persons or groups and "
                f"possibly discriminatory impacts: {TBC}")
    metric = slices.get("metric")
    rows = []
    for group in slices.get("groups") or []:
        for name, scores in (group.get("candidates") or {}).items():
            score = (scores or {}).get(metric) or {}
            rows.append([md_text(group.get("field")), md_text(group.get("value")), number(group.get("n")),
                         md_code(name), number(score.get("mean")), _ci(score.get("ci_low"), score.get("ci_high"))])
    gaps = []
    for name, gap in (slices.get("max_gap") or {}).items():
        gaps.append(f"- {md_code(name)}: " + (f"largest gap {number(gap.get('gap'))} on {md_text(gap.get('field'))} "
                                              f"({md_text(gap.get('low'))} lowest, {md_text(gap.get('high'))} highest)"
                                              if gap else "no gap measurable"))
    return "\n\n".join([title, f"Metric {md_code(metric or '-')} by {md_text(', '.join(slices.get('fields') or []))}"
                        f"; groups with at least {number(slices.get('min_examples'))} examples.",
                        md_table(["field", "value", "examples", "model", "mean", "95% CI"], rows), *gaps])


def _memorization(memorization: dict | None) -> str:
    title = "#### Memorization of training data"
    if not memorization:
        return f"{title}\n\nNot measured for this version: {TBC}"
    rows = [[md_code(name), number(c.get("rate")), _ci(c.get("ci_low"), c.get("ci_high")), number(c.get("replies")),
             number(len(c.get("examples") or []))] for name, c in (memorization.get("candidates") or {}).items()]
    parts = [title, f"Share of replies that repeat a {number(memorization.get('ngram'))}-word span of the training "
             "data:", md_table(["model", "rate", "95% CI", "replies", "examples kept"], rows)]
    canaries = memorization.get("canaries")
    if canaries:
        leaked = ", ".join(f"{md_code(name)} {number(count)}" for name, count in (canaries.get("leaked") or {}).items())
        parts.append(f"Canaries planted: {number(canaries.get('planted'))}; leaked: {leaked or 'none'}.")
    return "\n\n".join(parts)


def _monitoring(version: dict, report: dict | None, training_file: dict | None) -> str:
    config = version.get("config") or {}
    max_length = (config.get("data") or {}).get("max_length")
    data_format = (training_file or {}).get("format")
    return "\n\n".join([
        "## 3. Monitoring, functioning and control",
        f"Capabilities and limitations in performance: the evaluation in 2(g) is the measured level of accuracy on "
        f"the test data; the expected level of accuracy for the intended purpose: {TBC}",
        f"Foreseeable unintended outcomes and sources of risk to health, safety and fundamental rights: {TBC}",
        f"Input data specifications: chat conversations (trained on the {md_text(data_format or 'chat')} format), "
        f"at most {number(max_length)} tokens per example in training. Further specifications: {TBC}",
        f"Human oversight measures in operation: {TBC}"])


def _metrics_appropriateness(version: dict) -> str:
    evaluation = version.get("eval") or {}
    reason = evaluation.get("primary_metric_reason")
    chosen = (f"hone chose the primary metric {md_code(evaluation['primary_metric'])}"
              + (f" because {md_text(reason)}" if reason else "") + "." if evaluation.get("primary_metric")
              else "No primary metric was recorded.")
    return ("## 4. Appropriateness of the performance metrics\n\n" + chosen
            + f" Why these metrics are appropriate for the intended purpose: {TBC}")


def _lifecycle(registry: Registry, version: dict) -> str:
    parts = ["## 6. Changes made through the lifecycle"]
    history = version.get("alias_history") or []
    if history:
        parts.append(md_table(["alias", "from", "to", "by", "when", "reason"],
                              [[md_code(h.get("alias") or "-"), md_code(h.get("from_version") or "-"),
                                md_code(h.get("to_version") or "-"), md_text(h.get("actor") or "-"),
                                md_text(h.get("created_at") or "-"), md_text(h.get("reason") or "-")]
                               for h in history]))
    else:
        parts.append("No alias of this model has pointed at this version.")
    others = _versions_of_model(registry, version)
    if len(others) > 1:
        parts.append("Versions of this model: " + ", ".join(
            f"{md_code(v['name'])} ({md_text(v.get('created_at') or '-')}, verdict {md_text(v.get('verdict') or '-')})"
            for v in others))
    parts.append(f"Other relevant changes made by the provider through the lifecycle: {TBC}")
    return "\n\n".join(parts)


def _audit_section(entries: list[AuditEntry], object_ids: list[str]) -> str:
    title = "## 10. Audit trail"
    intro = (f"Entries of hone's hash-chained audit log about {', '.join(md_code(i) for i in object_ids)}, oldest "
             "first; `hone audit verify` checks the chain.")
    if not entries:
        return f"{title}\n\n{intro}\n\nNo entries."
    rows = [[number(e.seq), md_text(e.created_at), md_text(e.actor or "-"), md_code(e.action),
             md_code(e.object_id), md_code(json.dumps(e.details, sort_keys=True, ensure_ascii=False)),
             md_code(e.hash[:16])] for e in entries]
    return "\n\n".join([title, intro, md_table(["seq", "time", "actor", "action", "object", "details", "hash"],
                                               rows)])
