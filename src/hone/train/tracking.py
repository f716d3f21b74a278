"""Experiment tracking of training runs in MLflow: params, per-step metrics, summary and the adapter.

The default store is embedded: SQLite at `$HONE_HOME/mlflow/mlflow.db`, artifacts under
`$HONE_HOME/mlflow/artifacts`. mlflow is imported only when a tracker starts, so the CLI stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hone.errors import HoneError
from hone.home import hone_home

if TYPE_CHECKING:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

RunStatus = Literal["FINISHED", "FAILED", "KILLED"]

FLUSH_EVERY = 20  # steps buffered per log_batch call: one SQLite transaction instead of one per step
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
MAX_TAG_CHARS = 8000  # MLflow's limit on a tag value
MAX_BATCH_METRICS = 1000  # MLflow's limit on metrics in one log_batch call
MAX_BATCH_PARAMS_TAGS = 100  # MLflow's limit on params or tags in one log_batch call
SERVER_SCHEMES = ("http:", "https:", "databricks")  # stores that manage their own artifact location

log = logging.getLogger(__name__)


class TrackingConfig(BaseModel):
    """Where and whether training runs are recorded in MLflow."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(True, description="Record training runs in MLflow; false turns tracking off entirely.")
    uri: str | None = Field(
        None,
        description="MLflow tracking URI (e.g. sqlite:///path/mlflow.db, postgresql://..., http://host:5000); "
        "default: the embedded SQLite store at $HONE_HOME/mlflow/mlflow.db.",
    )
    experiment: str = Field("hone", min_length=1, description="MLflow experiment the runs are grouped under.")

    def store_uri(self) -> str:
        """The tracking URI in effect: `uri`, or the embedded SQLite store under `$HONE_HOME`."""
        return self.uri or f"sqlite:///{mlflow_dir() / 'mlflow.db'}"


def mlflow_dir() -> Path:
    """The embedded MLflow store's folder, `$HONE_HOME/mlflow`; created on first use."""
    path = hone_home() / "mlflow"
    path.mkdir(parents=True, exist_ok=True)
    return path


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level with dotted keys: {"training": {"lr": 1e-4}} -> {"training.lr": 1e-4}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, ending in "..." when it was cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def param_value(value: Any) -> str:
    """A config value as MLflow param text: lists as JSON so they read back unambiguously."""
    text = json.dumps(value, default=str) if isinstance(value, list | tuple | Mapping) else str(value)
    return clip(text, MAX_PARAM_CHARS)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def now_ms() -> int:
    return int(time.time() * 1000)


class NullTracker:
    """What `Tracker.start` returns when tracking is off: every call does nothing."""

    run_id: str | None = None

    def log_step(self, metrics: Mapping[str, float | None], step: int) -> None:
        """Record one training step's metrics (no-op here)."""

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        """Record the run's final figures (no-op here)."""

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        """Upload a folder, such as the adapter, to the run (no-op here)."""

    def finish(self, status: RunStatus = "FINISHED") -> None:
        """Close the run with `status` (no-op here)."""

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.finish("FINISHED")
        else:
            # an interrupt is resumable, so it is KILLED rather than FAILED
            self.finish("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")


class Tracker(NullTracker):
    """One MLflow run of one training run. Call from the main process only (rank 0 under DDP)."""

    def __init__(self, client: MlflowClient, run_id: str, uri: str):
        self.client = client
        self.run_id = run_id
        self.uri = uri
        self._pending: list[Metric] = []
        self._pending_steps = 0
        self._last_step = 0
        self._finished = False

    @classmethod
    def start(cls, settings: TrackingConfig, run_name: str, params: Mapping[str, Any],
              tags: Mapping[str, Any], run_id: str | None = None) -> Tracker | NullTracker:
        """Open a new MLflow run, or continue run `run_id` when resuming; a NullTracker when tracking is off.

        `params` may be nested (the resolved training config); keys are flattened to `training.lr` form.
        """
        if not settings.enabled:
            return NullTracker()
        uri = settings.store_uri()
        client = mlflow_client(uri)
        if run_id is None:
            experiment_id = experiment_for(client, settings.experiment, uri)
            run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
            new_params = {key: param_value(value) for key, value in flatten(params).items()}
        else:
            new_params = params_to_add(client, run_id, params)
            client.update_run(run_id, status="RUNNING")
        tracker = cls(client, run_id, uri)
        tracker._log_params_and_tags(new_params, {key: str(value) for key, value in tags.items()})
        return tracker

    def log_step(self, metrics: Mapping[str, float | None], step: int) -> None:
        """Buffer one step's metrics (None values are skipped); written every FLUSH_EVERY steps and at finish."""
        from mlflow.entities import Metric

        timestamp = now_ms()
        self._pending += [Metric(key, float(value), timestamp, step)
                          for key, value in metrics.items() if value is not None]
        self._last_step = step
        self._pending_steps += 1
        if self._pending_steps >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Write the buffered step metrics now."""
        for batch in chunks(self._pending, MAX_BATCH_METRICS):
            self.client.log_batch(self.run_id, metrics=batch, synchronous=True)
        self._pending = []
        self._pending_steps = 0

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        """Record final figures: numbers as metrics at the last step, everything else (fingerprints) as tags."""
        from mlflow.entities import Metric

        self.flush()  # the step values go first, so the summary's value of a metric is its latest
        flat = {key: value for key, value in flatten(summary).items() if value is not None}
        timestamp = now_ms()
        self._pending += [Metric(key, float(value), timestamp, self._last_step)
                          for key, value in flat.items() if is_number(value)]
        self.flush()
        self._log_params_and_tags({}, {key: str(value) for key, value in flat.items() if not is_number(value)})

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        """Copy every file under `folder` (e.g. RUN_DIR/adapter) into the run's artifacts at `artifact_path`."""
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def finish(self, status: RunStatus = "FINISHED") -> None:
        """Write buffered metrics and close the run with `status`; later calls do nothing."""
        if self._finished:
            return
        self.flush()
        self.client.set_terminated(self.run_id, status)
        self._finished = True

    def _log_params_and_tags(self, params: Mapping[str, str], tags: Mapping[str, str]) -> None:
        from mlflow.entities import Param, RunTag

        for batch in chunks([Param(key, value) for key, value in params.items()], MAX_BATCH_PARAMS_TAGS):
            self.client.log_batch(self.run_id, params=batch, synchronous=True)
        run_tags = [RunTag(key, clip(value, MAX_TAG_CHARS)) for key, value in tags.items()]
        for batch in chunks(run_tags, MAX_BATCH_PARAMS_TAGS):
            self.client.log_batch(self.run_id, tags=batch, synchronous=True)


def mlflow_client(uri: str) -> MlflowClient:
    """An MLflow client bound to `uri`, leaving mlflow's global tracking URI untouched."""
    # must be set before mlflow is imported: its telemetry otherwise reaches out to the network
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_for(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment `name`, created on first use with artifacts under `$HONE_HOME` for local stores."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None if uri.startswith(SERVER_SCHEMES) else artifacts_dir().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as error:
        # another process created it between our look-up and create
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def artifacts_dir() -> Path:
    """Where local stores keep run artifacts: `$HONE_HOME/mlflow/artifacts`."""
    path = mlflow_dir() / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def params_to_add(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> dict[str, str]:
    """The params a resumed run lacks; MLflow params cannot change, so changed values are reported, not logged."""
    from mlflow.exceptions import MlflowException

    try:
        logged = client.get_run(run_id).data.params
    except MlflowException as error:
        raise HoneError(f"MLflow run {run_id} cannot be resumed: {error.message}",
                        hint="check tracking.uri points at the store the run was started in") from None
    wanted = {key: param_value(value) for key, value in flatten(params).items()}
    changed = sorted(key for key, value in wanted.items() if key in logged and logged[key] != value)
    if changed:
        log.warning("MLflow run %s keeps its original values for changed params: %s", run_id, ", ".join(changed))
    return {key: value for key, value in wanted.items() if key not in logged}
