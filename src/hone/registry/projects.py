"""Projects and their settings: the intended purpose their models serve and the policy a promotion must pass.

A project exists as soon as a key, file or job names it; a row here only holds settings that differ from the
defaults. `hone projects set` and `PATCH /v1/projects/current` change them (admins), and every change is audited.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, select, union

from hone import audit
from hone.errors import HoneError, RequestError
from hone.monitor.contracts import OutputContract
from hone.monitor.loop_settings import LoopSettings
from hone.store import engine_for, session
from hone.store.tables import (
    ApiKey,
    FineTuningJob,
    ModelVersion,
    Project,
    StoredFile,
    iso_utc,
    utc_now,
)

PROJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class PromotionPolicy(BaseModel):
    """What a version must show before an alias may point at it."""

    model_config = ConfigDict(extra="forbid")

    approvals: int = Field(1, ge=0, le=10, description="Approvals needed from approvers who did not train the "
                           "version (its author).")
    require_ship: bool = Field(True, description="The version's evaluation against the alias's current version "
                               "(against the base while the alias points nowhere) must say SHIP.")
    require_forgetting_check: bool = Field(True, description="That evaluation must have measured forgetting on "
                                           "the general probes and found it within its tolerance.")
    max_slice_gap: float | None = Field(None, ge=0, description="Largest gap (points) of the primary metric "
                                        "between slices of the test data (eval `slices`).")
    max_memorization_rate: float | None = Field(None, ge=0, le=100, description="Largest share (%) of replies "
                                                "that reproduce 13+ words of the training data verbatim.")
    exempt_aliases: list[str] = Field(default_factory=list, description="Aliases moved without checks or "
                                      "approvals (e.g. staging); every move is still in the history.")


class MonitorSettings(BaseModel):
    """What the monitor checks in each model's traffic."""

    model_config = ConfigDict(extra="forbid")

    contracts: dict[str, OutputContract] = Field(default_factory=dict, description="Per model (its name, e.g. "
                                                 "support): the shape its replies must have, for format validity.")


class CanarySettings(BaseModel):
    """How canary and shadow splits judge a challenger (`hone canary`), and whether a passing one is promoted."""

    model_config = ConfigDict(extra="forbid")

    auto_promote: bool = Field(False, description="Promote a challenger that passed its canary when the promotion "
                               "policy asks no approvals; otherwise the promotion is only offered.")
    alpha: float = Field(0.01, gt=0, lt=0.5, description="Family-wise significance level of the three tests "
                         "(format validity, rating, latency), split between them (Bonferroni).")
    min_samples: int = Field(30, ge=5, description="Observations each arm needs before a test runs.")
    latency_tolerance: float = Field(0.2, ge=0, description="A challenger slower than the champion by at most "
                                     "this share (0.2: 20%) is not counted as worse.")


class ProjectSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    intended_purpose: str | None = Field(None, max_length=4000, description="What the project's models are for "
                                         "(written into the technical documentation).")
    provider: str | None = Field(None, max_length=400, description="The organisation that places the models on "
                                 "the market or puts them into service.")
    promotion: PromotionPolicy = PromotionPolicy()
    monitor: MonitorSettings = MonitorSettings()
    canary: CanarySettings = CanarySettings()
    loop: LoopSettings = Field(LoopSettings(), description="The retraining loop: triggers, the retrain's "
                               "data and job, challenger vs champion, canary (off by default).")


def check_project_name(name: str) -> str:
    if not PROJECT_NAME.match(name):
        raise HoneError(f"project name {name!r} is not valid: use lower-case letters, digits, '-' and '_' "
                        "(at most 64, starting with a letter or digit)")
    return name


def _validated(raw: dict[str, Any], source: str) -> ProjectSettings:
    try:
        return ProjectSettings.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise RequestError(f"{source}: {problems}", param="settings",
                           hint="see `hone projects show PROJECT` for the settings and their current values") from None


def _deep_merge(base: dict, change: dict) -> dict:
    merged = dict(base)
    for key, value in change.items():
        if value is None:  # back to the default
            merged.pop(key, None)
            continue
        merged[key] = _deep_merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key),
                                                                                                dict) else value
    return merged


class Projects:
    """Project settings in hone's database."""

    def __init__(self, db_url: str | None = None):
        self.engine = engine_for(db_url)

    def settings(self, project: str, db=None) -> ProjectSettings:
        """The project's settings (the defaults for a project never configured)."""
        if db is not None:
            row = db.get(Project, project)
            return _validated(json.loads(row.settings_json), f"settings of project {project!r}") if row else \
                ProjectSettings()
        with session(self.engine) as own:
            return self.settings(project, own)

    def update(self, project: str, change: dict[str, Any], actor: str | None = None) -> ProjectSettings:
        """Merge `change` into the project's settings (nested keys merge; null resets a value), validated and
        audited."""
        check_project_name(project)
        with session(self.engine) as db:
            row = db.get(Project, project)
            current = json.loads(row.settings_json) if row else {}
            settings = _validated(_deep_merge(ProjectSettings.model_validate(current).model_dump(), change),
                                  "project settings")
            stored = settings.model_dump(exclude_defaults=True)
            if row is None:
                db.add(Project(name=project, settings_json=json.dumps(stored), created_at=utc_now()))
            else:
                row.settings_json = json.dumps(stored)
            audit.record(db, project=project, actor=actor, action="project.settings_changed", object_type="project",
                         object_id=project, details={"change": change})
        return settings

    def create(self, project: str, actor: str | None = None) -> None:
        """Record a project (audited); its keys, files and models can exist without this row."""
        check_project_name(project)
        with session(self.engine) as db:
            if db.get(Project, project) is not None:
                raise HoneError(f"project {project!r} already exists", hint="`hone projects list` shows them")
            db.add(Project(name=project, settings_json="{}", created_at=utc_now()))
            audit.record(db, project=project, actor=actor, action="project.created", object_type="project",
                         object_id=project)

    def list(self) -> list[dict[str, Any]]:
        """Every project that has settings, keys, files, jobs or models, with how many of each."""
        with session(self.engine) as db:
            names = sorted(db.scalars(union(*(select(column) for column in (
                Project.name, ApiKey.project, StoredFile.project, FineTuningJob.project, ModelVersion.project)))))
            rows = {row.name: row for row in db.scalars(select(Project))}

            def count(table, name: str) -> int:
                return db.scalar(select(func.count()).select_from(table).where(table.project == name))

            return [{"name": name, "created_at": iso_utc(rows[name].created_at) if name in rows else None,
                     "keys": count(ApiKey, name), "files": count(StoredFile, name),
                     "jobs": count(FineTuningJob, name), "models": count(ModelVersion, name),
                     "configured": name in rows} for name in names]
