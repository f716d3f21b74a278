"""The jobs section of the dashboard: the project's fine-tuning jobs, a form that creates one through
`POST /v1/fine_tuning/jobs`, and a job's page whose loss chart, events, checkpoints and status follow the run
live over server-sent events (`/jobs/{id}/stream`), read through the same /v1 API the SDK uses."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, get_args

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from hone.jobs.service import ACTIVE, FINISHED, MAX_METRIC_POINTS
from hone.train.config import TrainConfig
from hone.web.core import (
    SECURITY_HEADERS,
    Api,
    ApiFailure,
    PageApi,
    Visitor,
    VisitorDep,
    checked_form,
    path_part,
    redirect,
    render,
)

router = APIRouter()

# The methods `hone train` accepts; "dpo" becomes OpenAI's method.type "dpo", the others hone.method.
METHODS = get_args(TrainConfig.model_fields["method"].annotation)
HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
# What a developer may do to a job in each status (the API's own rules; it refuses the others anyway).
ACTIONS = {"cancel": ACTIVE, "pause": tuple(s for s in ACTIVE if s != "paused"), "resume": ("paused",)}
POLL_S = 0.5  # how often the live stream reads the job again
KEEP_ALIVE_POLLS = 20  # a quiet stream sends a comment every 10 s, so proxies and clients keep it open
PAUSED_POLL_S = 5.0  # a paused job changes only when someone resumes it
STREAM_MAX_S = 600.0  # then the stream ends and the browser's EventSource reconnects: no stream lives for hours
NEW_JOB = {"method": "lora", "n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto",
           "evaluate": "on", "replay": "on", "tracking": "on"}
INTEGER = re.compile(r"^-?\d+$")


def _job_path(job_id: str) -> str:
    return f"/v1/fine_tuning/jobs/{path_part(job_id)}"


def _iso(epoch: int | None) -> str | None:
    """An API timestamp (seconds) as the ISO text the `when` macro shows."""
    return datetime.fromtimestamp(epoch, UTC).isoformat() if epoch is not None else None


def _listed(job: dict[str, Any]) -> dict[str, Any]:
    return {**job, "created": _iso(job["created_at"]), "finished": _iso(job.get("finished_at"))}


# ---- the list ----

@router.get("/jobs")
async def job_list(request: Request, visitor: VisitorDep, api: Api, after: str | None = None, limit: int = 20):
    """The project's jobs, newest first, a page at a time (`after`: the last job of the previous page)."""
    page = await api.get("/v1/fine_tuning/jobs", after=after, limit=limit)
    jobs = [_listed(job) for job in page["data"]]
    next_after = jobs[-1]["id"] if page["has_more"] and jobs else None
    return render(request, visitor, "jobs/list.html", jobs=jobs, next_after=next_after, limit=limit,
                  paged=after is not None)


# ---- the form ----

def _number(text: str) -> int | float | str:
    """A hyperparameter as typed: "auto", a whole number, a decimal; anything else goes as typed, for the API
    to refuse with its own message."""
    text = text.strip()
    if INTEGER.match(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def job_request(fields: dict[str, Any]) -> dict[str, Any]:
    """The `POST /v1/fine_tuning/jobs` body a filled form asks for: OpenAI's fields, hone's extras in `hone`."""
    method = str(fields.get("method") or "lora")
    kind = "dpo" if method == "dpo" else "supervised"
    hyperparameters = {name: _number(str(fields[name])) for name in HYPERPARAMETERS
                       if str(fields.get(name, "")).strip()}
    hone: dict[str, Any] = {"eval": {"enabled": "evaluate" in fields}, "tracking": {"enabled": "tracking" in fields}}
    if kind == "supervised":
        hone["method"] = method
    if "replay" not in fields:
        hone["replay"] = None
    if str(fields.get("lora_r", "")).strip():
        hone["lora"] = {"r": _number(str(fields["lora_r"]))}
    if str(fields.get("eval_every", "")).strip():
        hone["training"] = {"eval_every": _number(str(fields["eval_every"]))}
    body: dict[str, Any] = {"model": fields.get("model", ""), "training_file": fields.get("training_file", ""),
                            "method": {"type": kind, kind: {"hyperparameters": hyperparameters}}, "hone": hone}
    for optional in ("validation_file", "suffix"):
        if str(fields.get(optional, "")).strip():
            body[optional] = str(fields[optional]).strip()
    return body


async def _form_page(request: Request, visitor: Visitor, api: PageApi, values: dict[str, Any],
                     error: ApiFailure | None = None):
    """The new-job form with `values` filled in, and the API's refusal above it when there was one."""
    models = await api.get("/v1/models")
    files = await api.get("/v1/files", purpose="fine-tune", limit=200)
    bases = [model["id"] for model in models["data"] if model.get("parent") is None]
    return render(request, visitor, "jobs/new.html", status=error.status if error else 200, bases=bases,
                  files=files["data"], methods=METHODS, values=values, error=error)


@router.get("/jobs/new")
async def new_job(request: Request, visitor: VisitorDep, api: Api):
    """The form that creates a fine-tuning job."""
    return await _form_page(request, visitor, api, dict(NEW_JOB))


@router.post("/jobs")
async def create_job(request: Request, visitor: VisitorDep, api: Api):
    """Create the job through the API and open its page; a refused request shows the form again with the
    API's message and the values as they were."""
    fields = await checked_form(request, visitor)
    try:
        job = await api.post("/v1/fine_tuning/jobs", json=job_request(fields))
    except ApiFailure as error:
        if error.status not in (400, 404):  # not the form's values (e.g. the role): the error page
            raise
        return await _form_page(request, visitor, api, fields, error)
    return redirect(f"/jobs/{path_part(job['id'])}")


# ---- one job ----

def eta_text(seconds: int | None) -> str | None:
    """A duration as "about 2 min 5 s"."""
    if seconds is None:
        return None
    minutes, rest = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{hours} h"] * bool(hours) + [f"{minutes} min"] * bool(minutes) \
        + [f"{rest} s"] * (not hours and (bool(rest) or not minutes))
    return "about " + " ".join(parts)


def progress(points: list[dict[str, Any]], status: str) -> dict[str, Any]:
    """Steps done of the total, the pace and the ETA of a job from its newest logged step.

    ETA = time spent training so far (tokens so far / tokens per second) / steps done * steps left; shown only
    while the job runs."""
    last = points[-1] if points else {}
    step, total, rate, tokens = (last.get(key) for key in ("step", "total_steps", "tokens_per_s", "tokens"))
    eta = None
    if status == "running" and step and total and rate and tokens:
        eta = round(tokens / rate / step * max(0, total - step))
    return {"step": step, "total_steps": total, "tokens_per_s": rate, "tokens": tokens, "eta_s": eta,
            "eta": eta_text(eta), "points": len(points)}


def job_state(job: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of the job that may change while it runs, and the actions its status allows."""
    error = job.get("error") or {}
    return {"status": job["status"], "fine_tuned_model": job.get("fine_tuned_model"),
            "trained_tokens": job.get("trained_tokens"), "error": error.get("message"),
            "finished": job["status"] in FINISHED,
            "actions": [action for action, allowed in ACTIONS.items() if job["status"] in allowed]}


async def all_points(api: PageApi, job_id: str, after_step: int | None = None) -> list[dict[str, Any]]:
    """Every logged step of the job after `after_step`, in step order (page by page)."""
    points: list[dict[str, Any]] = []
    while True:
        page = await api.get(f"{_job_path(job_id)}/metrics", after_step=after_step, limit=MAX_METRIC_POINTS)
        points += page["data"]
        if not page["has_more"] or not page["data"]:
            return points
        after_step = page["data"][-1]["step"]


def chart_points(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the chart draws of each point (the page carries every step, so only these)."""
    return [{key: point.get(key) for key in ("step", "train_loss", "valid_loss")} for point in points]


def _event_row(event: dict[str, Any]) -> dict[str, Any]:
    return {"id": event["id"], "created": _iso(event["created_at"]), "level": event["level"],
            "message": event["message"]}


def _checkpoint_row(checkpoint: dict[str, Any]) -> dict[str, Any]:
    metrics = checkpoint.get("metrics") or {}
    return {"name": checkpoint["fine_tuned_model_checkpoint"], "step": checkpoint["step_number"],
            "train_loss": metrics.get("train_loss"), "valid_loss": metrics.get("valid_loss")}


@router.get("/jobs/{job_id}")
async def job_page(request: Request, job_id: str, visitor: VisitorDep, api: Api):
    """A job: its settings, pace, ETA, loss chart, events and checkpoints, updated live while it runs."""
    job = await api.get(_job_path(job_id))
    points = await all_points(api, job_id)
    events = await api.get(f"{_job_path(job_id)}/events", limit=50)
    checkpoints = await api.get(f"{_job_path(job_id)}/checkpoints", limit=10)
    method = job["method"]
    live = {"stream": f"/jobs/{path_part(job_id)}/stream", "points": chart_points(points),
            "after_event": events["data"][0]["id"] if events["data"] else None,
            "state": job_state(job), "progress": progress(points, job["status"])}
    return render(request, visitor, "jobs/job.html", job=_listed(job), state=live["state"],
                  progress=live["progress"], hyperparameters=method[method["type"]]["hyperparameters"],
                  events=[_event_row(e) for e in events["data"]],
                  checkpoints=[_checkpoint_row(c) for c in checkpoints["data"]], live=live)


def sse(event: str, data: Any) -> str:
    """One server-sent event (the JSON is one line, so one `data:` field)."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def job_updates(api: PageApi, job_id: str, after_step: int | None, after_event: str | None,
                      disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[str]:
    """The job's changes as server-sent events, read every POLL_S: `job` (status and actions), `metrics` (new
    points and the progress), `events` (new rows, oldest first), `checkpoints` (the list when it changes); `end`
    once the job is finished. Stops when the visitor leaves, or after STREAM_MAX_S (the browser reconnects)."""
    last_state, last_checkpoints, points_seen, quiet = None, None, after_step, 0
    deadline = asyncio.get_running_loop().time() + STREAM_MAX_S
    while not await disconnected() and asyncio.get_running_loop().time() < deadline:
        try:
            job = await api.get(_job_path(job_id))
            points = await all_points(api, job_id, points_seen)
            events = await api.get(f"{_job_path(job_id)}/events", limit=100)
            checkpoints = await api.get(f"{_job_path(job_id)}/checkpoints", limit=10)
        except ApiFailure as error:  # e.g. the session ended: say so, and stop
            yield sse("failure", {"status": error.status, "message": error.message})
            return
        state = job_state(job)
        if state != last_state:
            yield sse("job", state)
            last_state = state
        if points:
            points_seen = points[-1]["step"]
            yield sse("metrics", {"points": chart_points(points), "progress": progress(points, job["status"])})
        fresh = []
        for event in events["data"]:
            if event["id"] == after_event:
                break
            fresh.append(_event_row(event))
        if fresh:
            after_event = fresh[0]["id"]
            yield sse("events", fresh[::-1])
        rows = [_checkpoint_row(c) for c in checkpoints["data"]]
        if rows != last_checkpoints:
            yield sse("checkpoints", rows)
            last_checkpoints = rows
        if state["finished"]:
            yield sse("end", {"status": job["status"]})
            return
        quiet = 0 if (points or fresh) else quiet + 1
        if quiet >= KEEP_ALIVE_POLLS:
            yield ": still running\n\n"
            quiet = 0
        await asyncio.sleep(PAUSED_POLL_S if job["status"] == "paused" else POLL_S)


@router.get("/jobs/{job_id}/stream")
async def job_stream(request: Request, job_id: str, visitor: VisitorDep, api: Api,
                     after_step: int | None = Query(None, ge=0), after_event: str | None = None):
    """The job's live updates as text/event-stream (another project's job: 404 before anything streams)."""
    await api.get(_job_path(job_id))
    headers = {**SECURITY_HEADERS, "X-Accel-Buffering": "no"}
    return StreamingResponse(job_updates(api, job_id, after_step, after_event, request.is_disconnected),
                             media_type="text/event-stream", headers=headers)


async def _control(request: Request, visitor: Visitor, api: PageApi, job_id: str, action: str):
    await checked_form(request, visitor)
    await api.post(f"{_job_path(job_id)}/{action}")
    return redirect(f"/jobs/{path_part(job_id)}")


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: str, visitor: VisitorDep, api: Api):
    """Cancel the job (the API refuses a finished one with its message)."""
    return await _control(request, visitor, api, job_id, "cancel")


@router.post("/jobs/{job_id}/pause")
async def pause_job(request: Request, job_id: str, visitor: VisitorDep, api: Api):
    """Pause the job after its next checkpoint."""
    return await _control(request, visitor, api, job_id, "pause")


@router.post("/jobs/{job_id}/resume")
async def resume_job(request: Request, job_id: str, visitor: VisitorDep, api: Api):
    """Queue a paused job to continue from its last checkpoint."""
    return await _control(request, visitor, api, job_id, "resume")
