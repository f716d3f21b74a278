"""The model card (README.md) of a registered version, `hone export`'s card, and the EU AI Act Annex IV technical
documentation `hone registry document` writes from the version's lineage."""

from __future__ import annotations

import io
import json
from pathlib import Path

import yaml
from huggingface_hub import ModelCard
from jobs_helpers import FAST, chat_lines, write_lines
from typer.testing import CliRunner

from hone import audit
from hone.jobs.files import FileStore
from hone.jobs.service import JobService
from hone.jobs.spec import JobRequest
from hone.jobs.worker import Worker, WorkerSettings
from hone.registry.card import TO_BE_COMPLETED, version_from_run_dir, write_model_card
from hone.registry.document import document
from hone.registry.versions import Registry
from hone.store import engine_for, session
from hone.store.tables import FineTuningJob

HOSTILE = "<script>alert(1)</script>"
DATASET_ID = "d" * 64


def full_report(test_file: Path) -> dict:
    """An eval report.json of hone's shape, with slices and memorization."""
    return {
        "config": {"data": str(test_file), "examples": 40, "device": "cpu", "dtype": "float32"},
        "candidates": [{"name": "base", "kind": "local"}, {"name": "fine-tuned", "kind": "adapter"}],
        "baseline": "base",
        "aggregates": {"base": {"exact_match": 40.0, "token_f1": 55.5, "latency_s": 0.2, "perplexity": None},
                       "fine-tuned": {"exact_match": 72.5, "token_f1": 81.25, "latency_s": 0.3, "perplexity": None}},
        "comparisons": {"fine-tuned": {"exact_match": {"delta": 32.5, "ci_low": 20.0, "ci_high": 45.0},
                                       "token_f1": {"delta": 25.75, "ci_low": 15.5, "ci_high": 36.0}}},
        "forgetting": {"probes": 30, "metric": "answer_match", "tolerance": 5.0, "perplexity_tolerance_pct": 10.0,
                       "changes": {"fine-tuned": {"answer_match": {"delta": -3.33, "ci_low": -10.0, "ci_high": 3.33},
                                                  "token_f1": {"delta": -1.5, "ci_low": -4.0, "ci_high": 1.0},
                                                  "text_perplexity_rise_pct": 4.2}}},
        "slices": {"fields": ["region"], "metric": "exact_match", "min_examples": 5,
                   "groups": [{"field": "region", "value": "north", "n": 20,
                               "candidates": {"fine-tuned": {"exact_match": {"mean": 80.0, "ci_low": 60.0,
                                                                             "ci_high": 95.0}}}},
                              {"field": "region", "value": "south", "n": 20,
                               "candidates": {"fine-tuned": {"exact_match": {"mean": 65.0, "ci_low": 45.0,
                                                                             "ci_high": 85.0}}}}],
                   "max_gap": {"fine-tuned": {"gap": 15.0, "field": "region", "low": "south", "high": "north"},
                               "base": None}},
        "memorization": {"ngram": 8, "candidates": {"fine-tuned": {"rate": 2.5, "replies": 40, "ci_low": 0.0,
                                                                   "ci_high": 7.5, "examples": ["a b c"]}},
                         "canaries": {"planted": 3, "leaked": {"fine-tuned": 1}}},
        "verdict": {"decision": "SHIP", "primary_metric": "exact_match", "candidate": "fine-tuned",
                    "reasons": ["fine-tuned beats base on exact_match by 32.5 (95% CI 20.0 to 45.0)"]},
    }


def make_run(folder: Path, *, method: str = "lora", train: Path | None = None) -> Path:
    """A finished run folder as a job leaves it: config, summary, weights and the eval report (no training)."""
    run_dir = folder / "run"
    weights = run_dir / ("model" if method == "full" else "adapter")
    weights.mkdir(parents=True)
    (weights / ("config.json" if method == "full" else "adapter_config.json")).write_text("{}")
    config = {"base_model": "smollm2-135m-instruct", "method": method,
              "data": {"train": str(train or folder / "train.jsonl"), "max_length": 512},
              "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
              "training": {"epochs": 3, "lr": 0.0001, "batch_size": 4, "grad_accum": 2, "seed": 7}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    summary = {"trainable_parameters": 460800, "wall_seconds": 812.5, "frozen_dtype": "bfloat16",
               "code_version": "abc123", "examples": {"train": 90, "eval": 10, "skipped": {"too_long": 2}},
               "dataset_id": DATASET_ID if train else None, "base_model_fingerprint": "f" * 64,
               "adapter_dir": None if method == "full" else str(weights),
               "model_dir": str(weights) if method == "full" else None}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "report.json").write_text(json.dumps(full_report(folder / "test.jsonl")))
    return run_dir


def dataset_folder(folder: Path) -> Path:
    """A `hone data prepare` dataset version that masked PII and removed duplicates."""
    folder.mkdir()
    (folder / "train.jsonl").write_text("")
    manifest = {"dataset_id": DATASET_ID, "sources": [{"path": "raw.jsonl", "format": "chat", "examples": 120,
                                                       "broken_lines": 1, "sha256": "a" * 64}],
                "counts": {"ingested": 120, "train": 90, "val": 10, "test": 10, "broken_lines": 1},
                "steps": [{"name": "pii", "params": {"mode": "mask"}, "removed": 0,
                           "counts": {"EMAIL_ADDRESS": 7, "PHONE_NUMBER": 4, "examples_with_pii": 9, "kept": 120}},
                          {"name": "exact_dedup", "params": {}, "removed": 6, "counts": {"removed_duplicate": 6,
                                                                                         "kept": 114}},
                          {"name": "near_dedup", "params": {}, "removed": 4, "counts": {"kept": 110}}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def register(tmp_path: Path, *, suffix: str = "support", method: str = "lora", prepared: bool = True,
             evaluated: bool = True) -> dict:
    """Upload a training file, add its job and register its version the way the worker does; returns show()."""
    project = "default"
    stored = FileStore().upload(project, io.BytesIO(("\n".join(chat_lines(12)) + "\n").encode()), "tickets.jsonl",
                                "fine-tune", actor="alice")
    job_folder = tmp_path / f"job-{suffix[:6].strip('<')}-{method}"
    job_folder.mkdir()
    train = dataset_folder(job_folder / "dataset") if prepared else None
    run_dir = make_run(job_folder, method=method, train=train)
    job_id = f"ftjob-{method}{len(suffix):04d}"
    name = f"ft:smollm2-135m-instruct:{project}:{suffix}:{job_id[-8:]}"
    evaluation = {"verdict": "SHIP", "reasons": full_report(job_folder)["verdict"]["reasons"],
                  "primary_metric": "exact_match", "primary_metric_reason": "the references are short answers",
                  "figures": {"base": {"value": 40.0}, "fine-tuned": {"value": 72.5, "delta": 32.5, "ci_low": 20.0,
                                                                      "ci_high": 45.0}},
                  "notes": [], "warnings": [], "report": "run/eval/report.json"} if evaluated else None
    with session(engine_for(None)) as db:
        db.add(FineTuningJob(id=job_id, project=project, model="smollm2-135m-instruct",
                             base_model="smollm2-135m-instruct", training_file=stored.id, suffix=suffix, seed=7,
                             method_json="{}", status="succeeded", run_dir=str(run_dir)))
        audit.record(db, project=project, actor="alice", action="job.created", object_type="fine_tuning_job",
                     object_id=job_id)
        Registry().register(db, project=project, name=name, base_model="smollm2-135m-instruct",
                            base_fingerprint="f" * 64, job_id=job_id, training_file_sha256=stored.sha256,
                            dataset_id=DATASET_ID if prepared else None,
                            config=yaml.safe_load((run_dir / "config.yaml").read_text()),
                            metrics={"steps": 75, "final_train_loss": 0.4321, "best_eval_loss": 0.5, "tokens": 123456,
                                     "tokens_per_s": 152.0, "train_seconds": 800.1, "replay": None},
                            run_dir=run_dir, weights_dir=run_dir / ("model" if method == "full" else "adapter"),
                            eval_report=evaluation, verdict=(evaluation or {}).get("verdict"), actor="worker w1")
    return Registry().show(name, project)


def upload(service: JobService, tmp_path: Path):
    with open(write_lines(tmp_path / "t.jsonl", chat_lines(12)), "rb") as handle:
        return service.files.upload("default", handle, "t.jsonl", "fine-tune")


def metric_values(card: ModelCard) -> dict[str, float]:
    return {result.metric_type: result.metric_value for result in card.data.eval_results}


def test_the_card_of_an_adapter_names_its_base_relation_data_license_and_eval_figures(tmp_path):
    version = register(tmp_path)
    (tmp_path / "out").mkdir()
    path = write_model_card(version, tmp_path / "out")

    card = ModelCard.load(path)
    assert card.data.base_model == "smollm2-135m-instruct"
    assert card.data.base_model_relation == "adapter"
    assert "base_model_relation: adapter" in path.read_text()  # written, not left for the hub to infer
    assert card.data.library_name == "peft"
    assert card.data.datasets == [f"hone-dataset:{DATASET_ID}"]
    assert card.data.license == "apache-2.0"  # SmolLM2's, from hone's catalog
    assert card.data.model_name == version["name"]
    assert metric_values(card) == {"exact_match": 72.5, "token_f1": 81.25}  # quality metrics, not latency
    primary = next(r for r in card.data.eval_results if r.metric_type == "exact_match")
    assert primary.metric_args == {"baseline": "base", "delta": 32.5, "ci_low": 20.0, "ci_high": 45.0,
                                   "confidence": 0.95}
    assert "8 / 16 / 0.05" in card.text and "`q_proj, v_proj`" in card.text and "460,800" in card.text
    assert "**SHIP**" in card.text and f"Provider | {TO_BE_COMPLETED}" in card.text


def test_a_full_fine_tune_without_eval_or_known_license_is_a_transformers_finetune(tmp_path):
    version = register(tmp_path, method="full", prepared=False, evaluated=False)
    version["base_model"] = version["config"]["base_model"] = "some/unknown-base"
    (tmp_path / "out").mkdir()

    card = ModelCard.load(write_model_card(version, tmp_path / "out"))
    assert card.data.base_model_relation == "finetune" and card.data.library_name == "transformers"
    assert card.data.datasets == [f"hone-file-sha256:{version['training_file_sha256']}"]
    assert card.data.license == "other" and "the base model's license is unknown" in card.text
    assert "No evaluation after training was recorded" in card.text


def test_annex_iv_documentation_is_filled_from_the_lineage(tmp_path):
    version = register(tmp_path)
    paths = document(version["name"], "default", None, tmp_path / "docs")
    text = paths["markdown"].read_text()

    assert f"Provider (name and address) | *{TO_BE_COMPLETED}*" in text
    assert f"Intended purpose | *{TO_BE_COMPLETED}*" in text  # the project sets none
    for unknowable in ("Risk management system (Article 9)", "EU declaration of conformity",
                       "Harmonised standards", "Post-market monitoring"):
        section = text.split(unknowable, 1)[1].split("\n## ", 1)[0]
        assert TO_BE_COMPLETED in section, unknowable
    # the base and the modification made
    assert "LoRA rank (r) | 8" in text and "LoRA alpha | 16" in text and "`q_proj, v_proj`" in text
    assert "Epochs | 3" in text and "Learning rate | 0.000100" in text and "Trainable parameters | 460,800" in text
    assert "Base model license | `apache-2.0`" in text
    # compute
    assert "Wall time (s) | 812.50" in text and "Tokens trained | 123,456" in text
    assert f"Device | not recorded by hone: *{TO_BE_COMPLETED}*" in text
    # data provenance and curation counts
    assert f"dataset version `{DATASET_ID}`" in text
    assert "PII found: 11 in 9 examples (EMAIL\\_ADDRESS 7, PHONE\\_NUMBER 4); masked" in text
    assert "duplicates removed: 6" in text and "duplicates removed: 4" in text
    assert "tickets.jsonl" in text and "Examples | 12" in text
    # evaluation with its date, forgetting, slices, memorization
    assert "Evaluated: 20" in text and "Verdict: **SHIP**" in text
    assert "| `exact_match` (primary) | 72.50 | `base` | 32.50 | [20.00, 45.00] |" in text
    assert "| `fine-tuned` | -3.33 | [-10.00, 3.33] | -1.50 | [-4.00, 1.00] | 4.20 |" in text
    assert "| region | south | 20 | `fine-tuned` | 65.00 | [45.00, 85.00] |" in text
    assert "largest gap 15.00 on region (south lowest, north highest)" in text
    assert "| `fine-tuned` | 2.50 | [0.00, 7.50] | 40 | 1 |" in text and "Canaries planted: 3" in text
    # oversight and audit
    assert "No approval recorded." in text
    audit_section = text.split("## 10. Audit trail", 1)[1]
    for action in ("file.uploaded", "job.created", "model.registered"):
        assert f"`{action}`" in audit_section
    assert "alice" in audit_section and "worker w1" in audit_section

    page = paths["html"].read_text()
    assert page.startswith("<!doctype html>") and "<table>" in page and "<h2>10. Audit trail</h2>" in page


def test_missing_slices_memorization_and_curation_are_marked_not_invented(tmp_path):
    version = register(tmp_path, prepared=False)
    report_path = Path(version["run_dir"]) / "eval" / "report.json"
    report = json.loads(report_path.read_text())
    del report["slices"], report["memorization"], report["forgetting"]
    report_path.write_text(json.dumps(report))

    text = document(version["name"], None, None, tmp_path / "docs")["markdown"].read_text()
    assert "did not come from `hone data prepare`" in text
    for title in ("Forgetting", "bias slices", "Memorization"):
        assert "Not measured for this version" in text.split(title, 1)[1].split("####", 1)[0], title


def test_user_text_is_escaped_in_the_html_and_approvers_are_named(tmp_path, monkeypatch):
    version = register(tmp_path, suffix=HOSTILE)
    shown = Registry.show

    def with_governance(self, name, project=None):
        return {**shown(self, name, project), "approvals": [
            {"alias": "champion", "decision": "approved", "actor": "carol", "comment": f"ok {HOSTILE}",
             "created_at": "2026-12-01T10:00:00+00:00"}]}

    monkeypatch.setattr(Registry, "show", with_governance)
    monkeypatch.setattr(Registry, "project_settings", lambda self, project: {
        "intended_purpose": f"Answer support tickets {HOSTILE}", "provider": "Acme GmbH"}, raising=False)
    paths = document(version["name"], "default", None, tmp_path / "docs")

    text = paths["markdown"].read_text()
    assert "| `champion` | approved | carol | 2026-12-01T10:00:00+00:00 |" in text
    assert "No approval recorded" not in text
    assert "Provider (name and address) | Acme GmbH" in text and "Answer support tickets" in text
    page = paths["html"].read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert paths["html"].parent == tmp_path / "docs" and "script" in paths["html"].name  # a safe file name
    assert "/" not in paths["html"].name.removesuffix(".annex-iv.html").replace("_", "")


def test_the_registry_document_command_writes_markdown_and_html(tmp_path):
    from hone.cli import app

    version = register(tmp_path)
    result = CliRunner().invoke(app, ["registry", "document", version["name"], "--out", str(tmp_path / "docs"),
                                      "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)
    assert written["model"] == version["name"]
    assert "Annex IV" in Path(written["markdown"]).read_text()
    assert "<h1>" in Path(written["html"]).read_text()
    unknown = CliRunner().invoke(app, ["registry", "document", "ft:nothing:default::x", "--out", str(tmp_path)])
    assert unknown.exit_code != 0 and "does not exist" in str(unknown.exception)


def test_model_and_version_resolve_to_the_registered_name(tmp_path):
    from hone.cli import app

    version = register(tmp_path)
    result = CliRunner().invoke(app, ["registry", "document", version["model"], str(version["version"]),
                                      "--out", str(tmp_path / "docs"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"] == version["name"]


def test_the_export_card_describes_the_merged_model_under_its_registered_name(tmp_path):
    version = register(tmp_path, prepared=False)  # the file's sha256 is known only from the registered card
    run_dir = Path(version["run_dir"])
    write_model_card(version, run_dir)
    (tmp_path / "merged").mkdir()

    card = ModelCard.load(write_model_card(version_from_run_dir(run_dir), tmp_path / "merged", merged=True))
    assert card.data.model_name == version["name"]
    assert card.data.base_model_relation == "finetune" and card.data.library_name == "transformers"
    assert card.data.datasets == [f"hone-file-sha256:{version['training_file_sha256']}"]
    assert metric_values(card)["exact_match"] == 72.5 and "merged into its weights" in card.text


def test_a_job_writes_its_card_into_the_run_and_adapter_folders(tiny_model_dir, tmp_path):
    service = JobService(bases={"tiny": str(tiny_model_dir)})
    stored = upload(service, tmp_path)
    job = service.create("default", JobRequest(model="tiny", training_file=stored.id, seed=7, hone=FAST,
                                               suffix="cards", method={"type": "supervised", "supervised": {
                                                   "hyperparameters": {"n_epochs": 1}}}))
    assert job["status"] == "queued", job  # else the worker below would wait for it forever
    Worker(settings=WorkerSettings(poll_s=0.1, idle_poll_s=0.1)).run(max_jobs=1)
    done = service.get("default", job["id"])
    assert done["status"] == "succeeded", done["error"]
    version = Registry().show(done["fine_tuned_model"], "default")
    for folder in (version["run_dir"], version["weights_dir"]):
        card = ModelCard.load(Path(folder) / "README.md")
        assert card.data.model_name == version["name"] and card.data.base_model_relation == "adapter"
        assert card.data.datasets == [f"hone-file-sha256:{stored.sha256}"] and "t.jsonl" in card.text


def test_a_card_that_cannot_be_written_is_a_warning_not_a_failed_job(tiny_model_dir, tmp_path, monkeypatch):
    import hone.jobs.worker as worker_module

    def broken(db, name):
        raise OSError("disk full")

    monkeypatch.setattr(worker_module, "write_version_cards", broken)
    service = JobService(bases={"tiny": str(tiny_model_dir)})
    stored = upload(service, tmp_path)
    job = service.create("default", JobRequest(model="tiny", training_file=stored.id, seed=7, hone=FAST,
                                               method={"type": "supervised", "supervised": {
                                                   "hyperparameters": {"n_epochs": 1}}}))
    assert job["status"] == "queued", job  # else the worker below would wait for it forever
    Worker(settings=WorkerSettings(poll_s=0.1, idle_poll_s=0.1)).run(max_jobs=1)
    assert service.get("default", job["id"])["status"] == "succeeded"
    events = service.events("default", job["id"], limit=100).data
    warning = next(e for e in events if "model card" in e["message"])
    assert warning["level"] == "warn" and "disk full" in warning["message"]
