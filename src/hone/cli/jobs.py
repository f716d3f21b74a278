"""`hone jobs ...` and `hone worker`: the fine-tuning jobs API from the command line, on the same Python API."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hone.cli.output import cli_actor, console, emit_json
from hone.errors import HoneError

app = typer.Typer(help="Fine-tuning jobs: the same jobs `POST /v1/fine_tuning/jobs` creates.", no_args_is_help=True)

DbOption = Annotated[str | None, typer.Option("--db", help="Database URL (default: $HONE_DATABASE_URL, else "
                                              "sqlite:///$HONE_HOME/hone.db).")]
ProjectOption = Annotated[str, typer.Option("--project", help="The project the jobs belong to.")]
ConfigOption = Annotated[Path | None, typer.Option("--config", help="serve.yaml whose jobs.bases names are "
                                                   "accepted as --model.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def _service(db: str | None, config: Path | None = None):
    from hone.jobs.service import JobService
    from hone.serve.config import load_serve_config

    bases = load_serve_config(config).jobs.bases if config else {}
    return JobService(db, bases=bases)


def _file_id(service, project: str, value: str, param: str) -> str:
    """A file id as it is, or a local file uploaded first (its id is printed)."""
    path = Path(value)
    if value.startswith("file-") and not path.exists():
        return value
    if not path.is_file():
        raise HoneError(f"--{param.replace('_', '-')} {value}: neither a file id (file-...) nor a file")
    with open(path, "rb") as handle:
        stored = service.files.upload(project, handle, path.name, "fine-tune", actor=cli_actor())
    print(f"uploaded {path} as {stored.id}: {stored.examples} example(s), {stored.errors} broken line(s)",
          file=sys.stderr)
    return stored.id


@app.command("create")
def create(
    model: Annotated[str, typer.Option(help="Base model: a catalog name or a jobs.bases name.")],
    training_file: Annotated[str, typer.Option(help="A file id, or a local JSONL file to upload first.")],
    validation_file: Annotated[str | None, typer.Option(help="A file id or local file for eval loss.")] = None,
    suffix: Annotated[str | None, typer.Option(help="Added to the fine-tuned model's name.")] = None,
    method: Annotated[str, typer.Option(help="supervised or dpo.")] = "supervised",
    n_epochs: Annotated[str, typer.Option(help="Epochs, or auto.")] = "auto",
    batch_size: Annotated[str, typer.Option(help="Examples per step, or auto.")] = "auto",
    learning_rate_multiplier: Annotated[str, typer.Option(help="Scales the default learning rate, or auto.")] = "auto",
    seed: Annotated[int | None, typer.Option(help="Seed for a reproducible run.")] = None,
    hone: Annotated[str | None, typer.Option(help="hone settings as JSON, e.g. '{\"lora\": {\"r\": 8}}'.")] = None,
    db: DbOption = None, project: ProjectOption = "default", config: ConfigOption = None, as_json: JsonOption = False,
) -> None:
    """Create a fine-tuning job; a worker (`hone serve` or `hone worker`) trains it."""
    from hone.jobs.spec import JobRequest

    service = _service(db, config)
    hyper = {"n_epochs": _auto(n_epochs, int), "batch_size": _auto(batch_size, int),
             "learning_rate_multiplier": _auto(learning_rate_multiplier, float)}
    try:
        settings = json.loads(hone) if hone else None
    except json.JSONDecodeError as error:
        raise HoneError(f"--hone is not valid JSON: {error}") from None
    request = _request(JobRequest, model=model, training_file=_file_id(service, project, training_file,
                                                                        "training_file"),
                       validation_file=_file_id(service, project, validation_file, "validation_file")
                       if validation_file else None, suffix=suffix, seed=seed,
                       method={"type": method, method: {"hyperparameters": hyper}}, hone=settings)
    _show(service.create(project, request, actor=cli_actor()), as_json)


def _auto(value: str, kind):
    if value == "auto":
        return value
    try:
        return kind(value)
    except ValueError:
        raise HoneError(f"{value!r} is neither 'auto' nor a {kind.__name__}") from None


def _request(schema, **fields):
    from pydantic import ValidationError

    try:
        return schema(**fields)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise HoneError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None


def _show(job: dict, as_json: bool) -> None:
    if as_json:
        emit_json(job)
        return
    table = Table(show_header=False)
    for key in ("id", "status", "model", "fine_tuned_model", "training_file", "validation_file", "trained_tokens"):
        table.add_row(key, str(job.get(key)))
    table.add_row("hyperparameters", json.dumps(job["hyperparameters"]))
    if job.get("error"):
        table.add_row("error", f"{job['error']['code']}: {job['error']['message']}")
    console.print(table)


@app.command("list")
def list_jobs(limit: Annotated[int, typer.Option(min=1, max=100)] = 20, after: str | None = None,
              db: DbOption = None, project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """The project's jobs, newest first."""
    page = _service(db).list(project, after, limit)
    if as_json:
        emit_json(page.to_dict())
        return
    table = Table("id", "status", "model", "fine_tuned_model", "created")
    for job in page.data:
        table.add_row(job["id"], job["status"], job["model"], job["fine_tuned_model"] or "",
                      time.strftime("%Y-%m-%d %H:%M", time.gmtime(job["created_at"])))
    console.print(table)


@app.command("show")
def show(job_id: str, db: DbOption = None, project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """One job."""
    _show(_service(db).get(project, job_id), as_json)


@app.command("events")
def events(job_id: str, limit: Annotated[int, typer.Option(min=1, max=100)] = 20, db: DbOption = None,
           project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """The job's events, newest first."""
    page = _service(db).events(project, job_id, limit=limit)
    if as_json:
        emit_json(page.to_dict())
        return
    for event in page.data:
        stamp = time.strftime("%H:%M:%S", time.gmtime(event["created_at"]))
        console.print(f"{stamp} {event['level']:5} {event['message']}", soft_wrap=True)


def _control(action: str):
    def command(job_id: str, db: DbOption = None, project: ProjectOption = "default",
                as_json: JsonOption = False) -> None:
        _show(getattr(_service(db), action)(project, job_id, actor=cli_actor()), as_json)

    command.__doc__ = {"cancel": "Cancel a job (a running one stops within seconds, its checkpoint kept).",
                       "pause": "Pause a running or queued job after a checkpoint.",
                       "resume": "Queue a paused job to continue from its last checkpoint."}[action]
    return command


for _action in ("cancel", "pause", "resume"):
    app.command(_action)(_control(_action))


def worker(
    db: DbOption = None,
    executor: Annotated[str, typer.Option(help="local (a child process per job) or ray.")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address for --executor ray.")] = None,
    lease: Annotated[float, typer.Option(min=1, help="Seconds of silence after which another worker takes a "
                                         "job over.")] = 30.0,
    max_jobs: Annotated[int | None, typer.Option(min=1, help="Exit after this many jobs.")] = None,
) -> None:
    """Run fine-tuning jobs from the database until stopped (Ctrl-C stops after a checkpoint and requeues)."""
    import signal

    from hone.jobs.worker import Worker, WorkerSettings

    chosen = _executor(executor, ray_address)
    running = Worker(db, executor=chosen, settings=WorkerSettings(lease_s=lease))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: running.stop())
    print(f"hone worker {running.name} waiting for jobs ({chosen.name} executor)", file=sys.stderr)
    done = running.run(max_jobs=max_jobs)
    print(f"hone worker ran {done} job(s)", file=sys.stderr)


def _executor(name: str, ray_address: str | None):
    from hone.jobs.executors import LocalExecutor

    if name == "local":
        return LocalExecutor()
    if name == "ray":
        from hone.jobs.ray_executor import RayExecutor

        return RayExecutor(ray_address)
    raise HoneError(f"--executor {name!r} is not known", hint="use local or ray")
