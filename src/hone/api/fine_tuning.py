"""`/v1/fine_tuning/jobs`: OpenAI's fine-tuning jobs API, so the official SDK works by changing `base_url`."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from hone.api.auth import Developer, Viewer
from hone.api.errors import error_responses
from hone.jobs.service import MAX_METRIC_POINTS, JobService
from hone.jobs.spec import HoneSettings, JobRequest


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class HyperparametersOut(BaseModel):
    """The job's hyperparameters: "auto" until the data is counted, then the values used."""

    n_epochs: int | Literal["auto"]
    batch_size: int | Literal["auto"]
    learning_rate_multiplier: float | Literal["auto"]
    beta: float | Literal["auto"] | None = Field(None, description="DPO only.")


class MethodSettingsOut(BaseModel):
    hyperparameters: HyperparametersOut


class MethodOut(BaseModel):
    type: Literal["supervised", "dpo"]
    supervised: MethodSettingsOut | None = None
    dpo: MethodSettingsOut | None = None


class CandidateFigure(BaseModel):
    """A candidate's primary metric, and its change against the base with the paired bootstrap 95% CI."""

    value: float | None = None
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None


class JobEvaluation(BaseModel):
    """The evaluation after training: the fine-tune against the base, k-shot and RAG on held-out examples, and
    the forgetting probes."""

    verdict: str | None = Field(None, description="SHIP, NOT WORTH IT, REGRESSION or INCOMPLETE.")
    reasons: list[str] = []
    primary_metric: str | None = None
    primary_metric_reason: str | None = Field(None, description="Why this metric was chosen for these references.")
    figures: dict[str, CandidateFigure] = {}
    notes: list[str] = []
    warnings: list[str] = []
    report: str | None = Field(None, description="The report inside the job's folder.")
    error: str | None = Field(None, description="Why the evaluation could not run (the model still trained).")


class FineTuningJobModel(BaseModel):
    """OpenAI's `fine_tuning.job`, plus the hone settings the job was created with."""

    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    id: str
    model: str
    created_at: int
    finished_at: int | None = None
    fine_tuned_model: str | None = None
    organization_id: str = Field(description="The project the job belongs to.")
    result_files: list[str]
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused"]
    validation_file: str | None = None
    training_file: str
    hyperparameters: HyperparametersOut
    trained_tokens: int | None = None
    error: JobError | None = None
    user_provided_suffix: str | None = None
    seed: int
    estimated_finish: int | None = None
    integrations: list[dict[str, str]] = []
    metadata: dict[str, str] | None = None
    method: MethodOut
    hone: HoneSettings = Field(description="hone's own settings for the job (extra_body hone).")
    evaluation: JobEvaluation | None = None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobModel]
    has_more: bool


class EventData(BaseModel):
    """A metrics event's figures (OpenAI's names, plus hone's throughput and DPO rewards), or a message's details."""

    model_config = ConfigDict(extra="allow")

    step: int | None = None
    total_steps: int | None = None
    train_loss: float | None = None
    valid_loss: float | None = Field(None, description="Eval loss, when the job has a validation set.")
    learning_rate: float | None = None
    epoch: float | None = None
    tokens: int | None = None
    tokens_per_s: float | None = None
    fine_tuned_model: str | None = None
    worker: str | None = Field(None, description="The machine whose worker runs the job.")


class CheckpointMetrics(BaseModel):
    step: int
    train_loss: float | None = None
    valid_loss: float | None = None


class JobEventModel(BaseModel):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: EventData | None = None


class JobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEventModel]
    has_more: bool


class CheckpointModel(BaseModel):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str = Field(description="A model name chat completions accept.")
    fine_tuning_job_id: str
    step_number: int
    metrics: CheckpointMetrics


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CheckpointModel]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class MetricPoint(BaseModel):
    """One logged training step of a job: a point of its loss chart (DPO jobs add their reward figures)."""

    model_config = ConfigDict(extra="allow")

    step: int
    total_steps: int | None = None
    train_loss: float | None = None
    valid_loss: float | None = Field(None, description="Eval loss, on the steps it was measured.")
    learning_rate: float | None = None
    epoch: float | None = None
    tokens: int | None = Field(None, description="Tokens trained on so far.")
    tokens_per_s: float | None = Field(None, description="Tokens so far over the seconds spent training so far.")
    created_at: int = Field(description="When the worker reported the step.")


class MetricPointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[MetricPoint]
    has_more: bool


def _metadata_filter(request: Request) -> dict[str, str]:
    """`metadata[k]=v` query parameters as {k: v}."""
    return {key[len("metadata["):-1]: value for key, value in request.query_params.items()
            if key.startswith("metadata[") and key.endswith("]")}


def job_service(request: Request) -> JobService:
    """The jobs service this application uses (set by `create_app`)."""
    return request.app.state.jobs


Jobs = Annotated[JobService, Depends(job_service)]
Limit = Annotated[int | None, Query(ge=1, le=100)]
# A key sees only its own project's jobs; another project's answer 404.
router = APIRouter(prefix="/fine_tuning/jobs", tags=["fine_tuning"])


@router.post("", response_model=FineTuningJobModel, responses=error_responses(400, 401, 404))
def create(me: Developer, service: Jobs, body: JobRequest) -> dict:
    """Create a job; its files are checked at once (a broken file fails the job, naming the line)."""
    return service.create(me.project, body, actor=me.actor)


@router.get("", response_model=JobList, responses=error_responses(400, 401))
def list_jobs(me: Viewer, service: Jobs, request: Request, after: str | None = None,
              limit: Limit = None) -> dict:
    """The project's jobs, newest first; `metadata[k]=v` keeps jobs tagged so."""
    return service.list(me.project, after, limit, _metadata_filter(request)).to_dict()


@router.get("/{job_id}", response_model=FineTuningJobModel, responses=error_responses(401, 404))
def retrieve(me: Viewer, service: Jobs, job_id: str) -> dict:
    return service.get(me.project, job_id)


@router.post("/{job_id}/cancel", response_model=FineTuningJobModel, responses=error_responses(400, 401, 404))
def cancel(me: Developer, service: Jobs, job_id: str) -> dict:
    return service.cancel(me.project, job_id, actor=me.actor)


@router.post("/{job_id}/pause", response_model=FineTuningJobModel, responses=error_responses(400, 401, 404))
def pause(me: Developer, service: Jobs, job_id: str) -> dict:
    return service.pause(me.project, job_id, actor=me.actor)


@router.post("/{job_id}/resume", response_model=FineTuningJobModel, responses=error_responses(400, 401, 404))
def resume(me: Developer, service: Jobs, job_id: str) -> dict:
    return service.resume(me.project, job_id, actor=me.actor)


@router.get("/{job_id}/events", response_model=JobEventList, responses=error_responses(401, 404))
def events(me: Viewer, service: Jobs, job_id: str, after: str | None = None, limit: Limit = None) -> dict:
    """The job's events, newest first: messages and a metrics event per logged step."""
    return service.events(me.project, job_id, after, limit).to_dict()


@router.get("/{job_id}/metrics", response_model=MetricPointList, responses=error_responses(400, 401, 404))
def metrics(me: Viewer, service: Jobs, job_id: str, after_step: Annotated[int | None, Query(ge=0)] = None,
            limit: Annotated[int | None, Query(ge=1, le=MAX_METRIC_POINTS)] = None) -> dict:
    """The job's logged steps in step order, after step `after_step`: a loss chart's points (hone's own route)."""
    return service.metrics(me.project, job_id, after_step, limit).to_dict()


@router.get("/{job_id}/checkpoints", response_model=CheckpointList, responses=error_responses(401, 404))
def checkpoints(me: Viewer, service: Jobs, job_id: str, after: str | None = None, limit: Limit = None) -> dict:
    """The job's kept checkpoints, newest first; each is usable as a model."""
    page = service.checkpoints(me.project, job_id, after, limit).to_dict()
    ids = [c["id"] for c in page["data"]]
    return {**page, "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None}

