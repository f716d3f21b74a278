"""`hone distill run CONFIG.yaml`: the whole chain, label (or generate) -> filter -> dataset version -> train the
student through the jobs service -> evaluate teacher, student and base on the held-out set -> the proof.

The proof says how much of the teacher's quality the student kept (student metric / teacher metric, with a paired
bootstrap 95% CI), what 1,000 requests cost with each (the teacher: its tokens at the configured prices, from what
labeling measured; the student: measured on this machine), their latencies, and a verdict against the config's
threshold. Every stage resumes: the teacher's answers are cached, the dataset version is content-addressed, and the
training job is found again from the run's state file.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hone.distill.dataset import DatasetSettings
from hone.distill.generate import GenerateConfig, generate, resolve_generate_paths
from hone.distill.label import CACHE, LabelConfig, TeacherTask, label, resolve_task_paths
from hone.errors import HoneError
from hone.eval.config import MetricsConfig
from hone.eval.judge import JudgeConfig

STATE, REPORT_JSON, REPORT_MD = "state.json", "report.json", "report.md"
TEACHER, STUDENT, BASE = "teacher", "student", "base"
DONE = ("succeeded", "failed", "cancelled")
GOOD, NOT_PROVEN, NOT_GOOD = "good enough", "not proven", "not good enough"
ONE_LABEL_SHARE = 0.9  # a label set this lopsided is worth a warning in the proof


class StudentTraining(BaseModel):
    """How the student is trained: a fine-tuning job (as `POST /v1/fine_tuning/jobs` takes it) on the dataset."""

    model_config = ConfigDict(extra="forbid")

    base: str = Field("smollm2-135m-instruct", description="The student's base: a catalog name or a local model.")
    hyperparameters: dict[str, Any] = Field(default_factory=dict, description="n_epochs, batch_size, "
                                            "learning_rate_multiplier (each may be \"auto\").")
    hone: dict[str, Any] | None = Field(None, description="hone's own settings (the `hone train` schema: method, "
                                        "lora.r, training.packing, ...).")
    suffix: str = Field("distilled", description="Added to the fine-tuned model's name.")
    seed: int = Field(0, ge=0)
    worker: Literal["here", "service"] = Field("here", description="here: train in this process; service: wait for "
                                               "a `hone worker` or `hone serve` to take the job.")
    timeout_s: float = Field(24 * 3600, gt=0, description="Longest wait for the job to end.")


class StudentEval(BaseModel):
    """How teacher, student and base are compared."""

    model_config = ConfigDict(extra="forbid")

    data: Path | None = Field(None, description="Held-out test file (default: the dataset version's test split, "
                              "whose references the teacher wrote). A human-labeled set proves more.")
    limit: int | None = Field(None, ge=1)
    max_new_tokens: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1)
    metrics: MetricsConfig = MetricsConfig(perplexity=False)
    judge: JudgeConfig | None = None
    threshold: float = Field(0.9, gt=0, description="The least share of the teacher's score the student must keep "
                             "(0.9: 90%) for the verdict to say it is good enough.")
    student_price_per_hour: float | None = Field(None, ge=0, description="What an hour of the student's machine "
                                                 "costs, for its cost per 1,000 requests.")


class DistillRunConfig(BaseModel):
    """What `hone distill run CONFIG.yaml` reads."""

    model_config = ConfigDict(extra="forbid")

    label: LabelConfig | None = Field(None, description="The teacher labels prompts (as `hone distill label` "
                                      "reads it).")
    generate: GenerateConfig | None = Field(None, description="Or the teacher writes new examples from seeds (as "
                                            "`hone distill generate` reads it).")
    train: StudentTraining = StudentTraining()
    eval: StudentEval = StudentEval()
    project: str = Field("default", description="The project that owns the files, the job and the model.")
    database: str | None = Field(None, description="Database URL (default: $HONE_DATABASE_URL, else hone's SQLite).")
    out: Path = Field(description="The run's folder: state.json, the teacher's output, eval/, report.json/.md.")

    @model_validator(mode="after")
    def _one_task_with_a_dataset(self) -> DistillRunConfig:
        if (self.label is None) == (self.generate is None):
            raise ValueError("give the teacher's task as exactly one of `label` (prompts to answer) or `generate` "
                             "(seeds to write new examples from)")
        if self.task.dataset is None:
            self.task.dataset = DatasetSettings(name=f"distill-{self.out.name or 'run'}", project=self.project,
                                                database=self.database)
        return self

    @property
    def task(self) -> TeacherTask:
        """The teacher's task, labeling or generating."""
        return self.label if self.label is not None else self.generate


def load_run_config(path: Path) -> DistillRunConfig:
    """Read a `hone distill run` YAML; relative paths are taken relative to the file, unknown keys refused."""
    from hone.settings import read_yaml_mapping, resolve_relative, validate

    raw = read_yaml_mapping(path, "distill run config")
    for kind in ("label", "generate"):
        if isinstance(raw.get(kind), dict) and isinstance(raw.get("out"), str):
            raw[kind].setdefault("out", str(Path(raw["out"]) / "teacher"))
    config = validate(DistillRunConfig, raw, str(path), "distill run config")
    if config.label is not None:
        config.label.prompts = resolve_relative(config.label.prompts, path)
    else:
        resolve_generate_paths(config.generate, path)
    resolve_task_paths(config.task, path)
    config.eval.data = resolve_relative(config.eval.data, path)
    if config.eval.metrics.json_schema is not None:
        config.eval.metrics.json_schema = resolve_relative(config.eval.metrics.json_schema, path)
    return config


def _say(show_progress: bool, message: str) -> None:
    if show_progress:
        print(message, file=sys.stderr, flush=True)


def run_distillation(config: DistillRunConfig, show_progress: bool = True) -> dict:
    """Label, build the dataset, train the student, evaluate and prove; writes OUT/report.json and report.md."""
    config.out.mkdir(parents=True, exist_ok=True)
    if config.label is not None:
        _say(show_progress, "1/4 the teacher labels the prompts")
        labeling = label(config.label, show_progress=show_progress)
    else:
        _say(show_progress, "1/4 the teacher writes new examples from the seeds")
        labeling = generate(config.generate, show_progress=show_progress)
    if "dataset" not in labeling:
        raise HoneError(f"the teacher's answers left no example to train on ({labeling['labeled']} kept of "
                        f"{labeling['prompts']} prompts)",
                        hint=f"see {config.task.out}/failures.jsonl and rejected.jsonl")
    dataset = Path(labeling["dataset"]["path"])
    _say(show_progress, f"2/4 dataset version {labeling['dataset']['dataset_id'][:12]}: "
                        f"{labeling['dataset']['counts']['train']} training examples")
    job = train_student(config, dataset, labeling["dataset"]["dataset_id"], show_progress)
    _say(show_progress, f"3/4 {job['fine_tuned_model']} trained; evaluating teacher, student and base")
    test_file = config.eval.data or dataset / "test.jsonl"
    evaluation = evaluate_three(config, Path(job["run_dir"]), test_file, show_progress)
    proof = prove(config, evaluation, labeling, teacher_wrote_references=config.eval.data is None)
    report = {"labeling": labeling, "dataset": labeling["dataset"],
              "job": {key: job[key] for key in ("id", "status", "fine_tuned_model", "trained_tokens")},
              "eval_report": evaluation["paths"].get("json"), **proof}
    (config.out / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (config.out / REPORT_MD).write_text(report_markdown(report), encoding="utf-8")
    _say(show_progress, f"4/4 {proof['verdict']['decision']}: {proof['verdict']['reason']}")
    report["paths"] = {"json": str(config.out / REPORT_JSON), "markdown": str(config.out / REPORT_MD)}
    return report


# ---- training the student through the jobs service ----

def _state(config: DistillRunConfig) -> dict:
    path = config.out / STATE
    return json.loads(path.read_text()) if path.is_file() else {}


def _save_state(config: DistillRunConfig, state: dict) -> None:
    (config.out / STATE).write_text(json.dumps(state, indent=2) + "\n")


def _base_name(base: str) -> str:
    """What the job calls the student's base: a catalog name as it is, a local model by its folder's name (a model
    name never shows where the model lies on this machine)."""
    from hone.models.catalog import CATALOG

    return base if base in CATALOG else Path(base).name.removesuffix(".gguf")


def _service(config: DistillRunConfig):
    from hone.jobs.service import JobService

    base, name = config.train.base, _base_name(config.train.base)
    # the run's own config names the base, so a local folder is allowed here (a client's request never names one)
    return JobService(config.database, bases={} if name == base else {name: base})


def _upload(service, project: str, path: Path) -> str:
    with path.open("rb") as handle:
        return service.files.upload(project, handle, path.name, "fine-tune", actor="hone distill").id


def submit_job(config: DistillRunConfig, dataset: Path, dataset_id: str) -> str:
    """The job training the student on the dataset version: the one this run started before when it is still
    alive (a rerun resumes it), else a new one."""
    from hone.data.validate import MIN_EXAMPLES
    from hone.errors import NotFoundError
    from hone.jobs.spec import JobRequest

    service = _service(config)
    state = _state(config)
    if state.get("dataset_id") == dataset_id and state.get("job_id"):
        try:
            if service.get(config.project, state["job_id"])["status"] not in ("failed", "cancelled"):
                return state["job_id"]
        except NotFoundError:
            pass
    validation = dataset / "val.jsonl"
    # the jobs API refuses a validation file under MIN_EXAMPLES, as OpenAI's does: a smaller split is left out
    enough = len(validation.read_text(encoding="utf-8").splitlines()) >= MIN_EXAMPLES
    request = JobRequest(
        model=_base_name(config.train.base), training_file=_upload(service, config.project, dataset / "train.jsonl"),
        validation_file=_upload(service, config.project, validation) if enough else None,
        suffix=config.train.suffix, seed=config.train.seed, hone=config.train.hone,
        metadata={"distilled_from": config.task.teacher.model[:512], "dataset_id": dataset_id[:64]},
        method={"type": "supervised", "supervised": {"hyperparameters": config.train.hyperparameters}})
    job = service.create(config.project, request, actor="hone distill")
    if job["status"] == "failed":
        raise HoneError(f"the training job was refused: {job['error']['message']}")
    _save_state(config, {"dataset_id": dataset_id, "job_id": job["id"]})
    return job["id"]


def train_student(config: DistillRunConfig, dataset: Path, dataset_id: str, show_progress: bool) -> dict:
    """Submit (or find again) the student's job, train it here or wait for a worker; the finished job."""
    from hone.jobs.service import job_dir
    from hone.jobs.worker import Worker

    job_id = submit_job(config, dataset, dataset_id)
    service = _service(config)
    if config.train.worker == "here":
        worker = Worker(config.database)
        if worker.claim(job_id):
            _say(show_progress, f"training {job_id} in this process")
            worker.run_job(job_id)
    deadline = time.monotonic() + config.train.timeout_s
    job = service.get(config.project, job_id)
    while job["status"] not in DONE:
        if time.monotonic() > deadline:
            raise HoneError(f"the training job {job_id} did not end within {config.train.timeout_s:g} s "
                            f"(it is {job['status']})", hint="run the same command again to keep waiting")
        time.sleep(2.0)
        job = service.get(config.project, job_id)
    if job["status"] != "succeeded":
        message = (job.get("error") or {}).get("message") or job["status"]
        raise HoneError(f"the training job {job_id} {job['status']}: {message}",
                        hint="fix what it says and run the same command again (the teacher is not asked again)")
    return job | {"run_dir": str(job_dir(job_id) / "run")}


# ---- teacher vs student vs base ----

def evaluate_three(config: DistillRunConfig, run_dir: Path, test_file: Path, show_progress: bool) -> dict:
    """`hone eval` of the teacher (its endpoint), the student (the trained adapter) and the student's base."""
    from hone.eval.config import validate_eval_config
    from hone.eval.run import evaluate

    teacher = config.task.teacher
    # the teacher answers as it labeled: with the task's reference examples before the prompt (the student, trained
    # on its answers, gets none); the system prompt comes with every test row
    examples = reference_examples(config.task)
    settings = validate_eval_config({
        "base": config.train.base, "data": test_file, "out": config.out / "eval", "limit": config.eval.limit,
        "max_new_tokens": config.eval.max_new_tokens or teacher.max_tokens, "batch_size": config.eval.batch_size,
        "train": examples,
        "candidates": [{"name": BASE},
                       {"name": STUDENT, "adapter": run_dir},
                       {"name": TEACHER, "shots": _count_lines(examples) if examples else 0,
                        "endpoint": {"url": teacher.url, "model": teacher.model, "api_key_env": teacher.api_key_env,
                                     "timeout_s": teacher.timeout_s, "concurrency": min(teacher.concurrency, 64)}}],
        "metrics": config.eval.metrics.model_dump(), "judge": config.eval.judge.model_dump() if config.eval.judge
        else None, "forgetting": {"enabled": False},
        "verdict": {"candidate": STUDENT, "baseline": BASE}}, source="hone distill run")
    return evaluate(settings, show_progress=show_progress)


def reference_examples(task: TeacherTask) -> Path | None:
    """The reference examples the teacher saw before every prompt: `examples`, or a generate task's seeds."""
    if task.examples is not None:
        return task.examples
    return getattr(task, "seeds", None) if getattr(task, "seeds_as_examples", False) else None


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _scores(evaluation: dict, name: str, metric: str) -> list[float | None]:
    return [example["outputs"][name]["scores"].get(metric) for example in evaluation["examples"]]


def teacher_tokens_per_request(answers_cache: Path) -> tuple[float, float] | None:
    """Mean prompt and completion tokens of the teacher's answers on record (the run's answer cache)."""
    if not answers_cache.is_file():
        return None
    records = []
    for line in answers_cache.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    if not records:
        return None
    return (sum(r.get("prompt_tokens", 0) for r in records) / len(records),
            sum(r.get("completion_tokens", 0) for r in records) / len(records))


def costs(config: DistillRunConfig, evaluation: dict) -> dict:
    """Cost and latency per 1,000 requests: the teacher's from its tokens at the configured prices, the student's
    from the machine time it took here."""
    teacher = config.task.teacher
    timings = evaluation["timings"]
    examples = max(len(evaluation["examples"]), 1)
    tokens = teacher_tokens_per_request(config.task.out / CACHE)
    priced = teacher.price_input_per_million is not None or teacher.price_output_per_million is not None
    teacher_cost = None
    if tokens and priced:
        teacher_cost = 1000 * (tokens[0] * (teacher.price_input_per_million or 0)
                               + tokens[1] * (teacher.price_output_per_million or 0)) / 1e6
    machine_s = timings[STUDENT]["seconds"] / examples  # generation is batched: machine time, not one reply's wait
    price = config.eval.student_price_per_hour
    return {
        TEACHER: {"cost_per_1k_requests": teacher_cost, "prompt_tokens_mean": tokens[0] if tokens else None,
                  "completion_tokens_mean": tokens[1] if tokens else None,
                  "latency_s_mean": timings[TEACHER]["latency_s_mean"],
                  "basis": "tokens x configured price" if teacher_cost is not None else "no price configured"},
        STUDENT: {"cost_per_1k_requests": 1000 * machine_s * price / 3600 if price is not None else None,
                  "machine_seconds_per_1k_requests": round(1000 * machine_s, 1),
                  "latency_s_mean": timings[STUDENT]["latency_s_mean"],
                  "tokens_per_s": timings[STUDENT]["tokens_per_s"],
                  "basis": "measured on this machine" + ("" if price is not None else
                                                         " (set eval.student_price_per_hour for a price)")},
    }


def prove(config: DistillRunConfig, evaluation: dict, labeling: dict, teacher_wrote_references: bool) -> dict:
    """Quality kept with its CI, every candidate's score, costs, latency and the verdict."""
    from hone.eval.stats import bootstrap_mean_ci, ratio_bootstrap_ci

    metric = evaluation["verdict"]["primary_metric"]
    scores = {name: _scores(evaluation, name, metric) for name in (TEACHER, STUDENT, BASE)}
    quality = {}
    for name, values in scores.items():
        interval = bootstrap_mean_ci(values)
        quality[name] = {"mean": evaluation["aggregates"][name].get(metric),
                         "ci_low": round(interval[0], 2) if interval else None,
                         "ci_high": round(interval[1], 2) if interval else None}
    kept = ratio_bootstrap_ci(scores[STUDENT], scores[TEACHER])
    notes = []
    if teacher_wrote_references:
        notes.append("the held-out references were written by the teacher, so the teacher's score is its agreement "
                     "with itself and 'quality kept' is how closely the student matches the teacher; set eval.data "
                     "to a human-labeled set to measure quality itself")
    if not labeling["complete"]:
        notes.append(f"{labeling['failed'] + labeling['not_asked']} of {labeling['prompts']} prompts have no "
                     "answer from the teacher (see failures.jsonl); run again to finish them")
    shares = labeling.get("labels") or {}
    top = max(shares.items(), key=lambda item: item[1], default=None)
    if top and top[1] >= ONE_LABEL_SHARE:
        notes.append(f"the teacher answered {top[0]!r} to {top[1]:.0%} of the kept prompts: a student trained on "
                     "that learns one answer; check the teacher's labels before trusting the score")
    over_base = evaluation["comparisons"].get(STUDENT, {}).get(metric)
    if over_base and not (over_base["excludes_zero"] and over_base["delta"] > 0):
        notes.append(f"the student does not beat its base on {metric} with confidence "
                     f"({over_base['delta']:+.1f} points, 95% CI [{over_base['ci_low']:+.1f}, "
                     f"{over_base['ci_high']:+.1f}])")
    return {"metric": metric, "quality": quality, "quality_kept": kept, "student_over_base": over_base,
            "costs": costs(config, evaluation), "verdict": verdict(kept, config.eval.threshold) | {"notes": notes},
            "failures": {name: len(items) for name, items in evaluation["failures"].items()}}


def verdict(kept: dict | None, threshold: float) -> dict:
    """Good enough when the whole 95% CI of quality kept is at or above the threshold; not proven when only the
    estimate is; not good enough when the estimate is below."""
    if kept is None:
        return {"decision": NOT_PROVEN, "threshold": threshold,
                "reason": "quality kept could not be computed (the teacher scored 0 or nothing was scored)"}
    shown = f"{kept['ratio']:.0%} (95% CI {kept['ci_low']:.0%}-{kept['ci_high']:.0%})"
    if kept["ci_low"] >= threshold:
        return {"decision": GOOD, "threshold": threshold,
                "reason": f"the student keeps {shown} of the teacher's score, at least {threshold:.0%}"}
    if kept["ratio"] >= threshold:
        return {"decision": NOT_PROVEN, "threshold": threshold,
                "reason": f"the student keeps {shown} of the teacher's score: the estimate reaches {threshold:.0%} "
                          "but the interval does not; evaluate on more examples"}
    return {"decision": NOT_GOOD, "threshold": threshold,
            "reason": f"the student keeps {shown} of the teacher's score, under {threshold:.0%}"}


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def report_markdown(report: dict) -> str:
    """The proof as a short Markdown page."""
    quality, costs_ = report["quality"], report["costs"]
    kept = report["quality_kept"]
    lines = [f"# Distillation: {report['verdict']['decision']}", "", report["verdict"]["reason"], "",
             f"Metric: {report['metric']} (mean with 95% CI) on the held-out set.", "",
             "| | score | 95% CI | cost / 1k requests | latency (s) |", "|---|---|---|---|---|"]
    for name in (TEACHER, STUDENT, BASE):
        q = quality[name]
        interval = "-" if q["ci_low"] is None else f"{q['ci_low']:.1f} - {q['ci_high']:.1f}"
        cost = costs_.get(name, {})
        lines.append(f"| {name} | {q['mean']} | {interval} | {_money(cost.get('cost_per_1k_requests'))} | "
                     f"{cost.get('latency_s_mean', '-')} |")
    if kept:
        lines += ["", f"Quality kept: {kept['ratio']:.1%} (95% CI {kept['ci_low']:.1%} - {kept['ci_high']:.1%}, "
                      f"{kept['examples']} examples)."]
    lines += ["", f"Student machine time: {costs_[STUDENT]['machine_seconds_per_1k_requests']} s per 1k requests "
                  f"({costs_[STUDENT]['basis']})."]
    lines += [f"- {note}" for note in report["verdict"]["notes"]]
    labeling, dataset = report["labeling"], report["dataset"]
    lines += ["", f"Teacher: {labeling['teacher']}, {labeling['labeled']} of {labeling['prompts']} prompts kept, "
                  f"{labeling['rejected']} rejected, {labeling['failed']} failed. Dataset version "
                  f"{dataset['dataset_id'][:12]}; model {report['job']['fine_tuned_model']}.", ""]
    return "\n".join(lines)
