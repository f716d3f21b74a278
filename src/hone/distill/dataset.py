"""The distilled examples become a dataset version the way `hone data prepare` makes one: PII scrubbed by the
curation pipeline, deduplicated within itself and against the data the model already has, decontaminated against
the given test files and every evaluation set the project has on record, split, content-addressed (id, manifest,
report.html). Each row keeps its `metadata.distill` lineage."""

from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from hone.data.curate.filters import QualitySettings
from hone.data.curate.pii import PiiSettings
from hone.data.curate.prepare import (
    DecontaminateSettings,
    DedupSettings,
    InputSpec,
    PrepareConfig,
    SplitSettings,
    TaskSettings,
    prepare,
)
from hone.errors import HoneError


class DatasetSettings(BaseModel):
    """`dataset:` of a distill config: the settings of `hone data prepare` (without `inputs`: the kept examples
    are the input) and which project's evaluation sets to protect."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", description="The version is written to "
                      "FOLDER/NAME-ID (ID: the first 12 characters of its content hash), so a rerun that kept more "
                      "examples makes a new version beside the old one.")
    folder: Path | None = Field(None, description="Where versions go (default: $HONE_HOME/datasets, where the "
                                "server and the dashboard list them).")
    pii: PiiSettings | None = PiiSettings()
    dedup: DedupSettings = DedupSettings()
    quality: QualitySettings = QualitySettings()
    decontaminate: DecontaminateSettings = DecontaminateSettings()
    split: SplitSettings = SplitSettings()
    task: TaskSettings = TaskSettings()
    project: str = Field("default", description="Whose evaluation sets are protected and who owns the version.")
    project_evals: bool = Field(True, description="Also decontaminate against every test set the project's recorded "
                                "evaluations used.")
    database: str | None = Field(None, description="Database URL (default: $HONE_DATABASE_URL, else hone's SQLite).")

    def resolve_paths(self, config_file: Path) -> None:
        """Take relative paths relative to the distill config file."""
        from hone.settings import resolve_relative

        self.dedup.against = [resolve_relative(p, config_file) for p in self.dedup.against]
        self.decontaminate.against = [resolve_relative(p, config_file) for p in self.decontaminate.against]
        if self.folder is not None:
            self.folder = resolve_relative(self.folder, config_file)


def project_eval_sets(project: str, database: str | None = None) -> tuple[list[Path], int]:
    """The test files of the project's recorded evaluations that are still on disk, and how many are gone."""
    from hone.eval.records import list_evaluations

    found: dict[Path, None] = {}
    missing = 0
    for record in list_evaluations(project, database):
        report = record.report()
        data = (report or {}).get("config", {}).get("data")
        if not data:
            continue
        path = Path(data)
        if path.is_file():
            found[path] = None
        else:
            missing += 1
    return list(found), missing


def build_version(settings: DatasetSettings, labeled: Path, actor: str | None = "hone distill") -> dict:
    """Prepare the dataset version from the kept examples, record it for the project; returns what was built."""
    from hone.data.versions import datasets_dir, record_prepared
    from hone.store import engine_for, session

    protected = list(settings.decontaminate.against)
    evals, missing = project_eval_sets(settings.project, settings.database) if settings.project_evals else ([], 0)
    protected += [path for path in evals if path not in protected]
    parent = settings.folder or datasets_dir()
    building = parent / f".{settings.name}-building"
    config = PrepareConfig(
        inputs=[InputSpec(path=labeled)], out=building, pii=settings.pii, dedup=settings.dedup,
        quality=settings.quality, split=settings.split, task=settings.task,
        decontaminate=settings.decontaminate.model_copy(update={"against": protected}))
    manifest = prepare(config, force=True)  # the building folder is this run's own scratch
    if not manifest["counts"]["train"]:
        steps = ", ".join(f"{step['name']} removed {step['removed']}" for step in manifest["steps"] if step["removed"])
        raise HoneError(f"the dataset version of {labeled} has no training example: {manifest['counts']['ingested']} "
                        f"examples read, {manifest['counts']['broken_lines']} broken lines"
                        + (f", {steps}" if steps else ""),
                        hint=f"see {building / 'report.html'}; loosen dataset.dedup or dataset.quality, or label "
                        "more prompts")
    out = parent / f"{settings.name}-{manifest['dataset_id'][:12]}"
    if out.exists():  # the same content was built before: versions are immutable, the first copy stays
        shutil.rmtree(building)
    else:
        building.rename(out)
    with session(engine_for(settings.database)) as db:
        record_prepared(db, manifest, out, settings.project, actor)
    return {"dataset_id": manifest["dataset_id"], "path": str(out), "counts": manifest["counts"],
            "steps": {step["name"]: step["removed"] for step in manifest["steps"]},
            "protected_eval_sets": len(protected), "eval_sets_gone": missing}
