"""Hyperparameter search over a training config with Optuna: TPE sampling, median pruning on eval loss,
the study kept in SQLite so a search can be continued."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, model_validator

from hone.errors import HoneError
from hone.settings import read_yaml_mapping, validate
from hone.train.config import TrainConfig, dump_config, load_config

STUDY_NAME = "hone-tune"
Value = bool | int | float | str


class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _RangeParam(_Param):
    log: bool = False

    @model_validator(mode="after")
    def _check_range(self) -> _RangeParam:
        if self.low >= self.high or (self.log and self.low <= 0):
            raise ValueError("needs low < high (and low > 0 with log: true)")
        return self


class FloatParam(_RangeParam):
    type: Literal["float"]
    low: float
    high: float


class IntParam(_RangeParam):
    type: Literal["int"]
    low: int
    high: int


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Value] = Field(min_length=1)


class MultipleOfParam(_Param):
    """A value that is a multiple of another setting, e.g. lora.alpha as 1x or 2x lora.r."""

    type: Literal["multiple_of"]
    of: str
    choices: list[float] = Field(min_length=1)


Param = Annotated[FloatParam | IntParam | CategoricalParam | MultipleOfParam, Field(discriminator="type")]


class SearchSpace(RootModel[dict[str, Param]]):
    """Dotted config keys mapped to how each is sampled."""


def default_space() -> dict[str, Param]:
    """LoRA learning rate, rank, alpha (1x/2x rank), dropout and batch size."""
    return SearchSpace.model_validate({
        "training.lr": {"type": "float", "low": 1e-5, "high": 5e-3, "log": True},
        "lora.r": {"type": "categorical", "choices": [4, 8, 16, 32]},
        "lora.alpha": {"type": "multiple_of", "of": "lora.r", "choices": [1, 2]},
        "lora.dropout": {"type": "float", "low": 0.0, "high": 0.1},
        "training.batch_size": {"type": "categorical", "choices": [4, 8, 16]},
    }).root


def load_space(path: Path) -> dict[str, Param]:
    """A search space YAML: `{training.lr: {type: float, low: 1e-5, high: 1e-3, log: true}, ...}`."""
    return validate(SearchSpace, read_yaml_mapping(Path(path), "search space"), str(path), "search space").root


@dataclass
class TrialResult:
    """One trial as the results table shows it."""

    number: int
    state: str  # complete, pruned, failed or running
    values: dict[str, Value]
    best_eval_loss: float | None
    steps: int | None
    seconds: float | None
    run_dir: str | None


@dataclass
class TuneReport:
    """Every trial of the study (also those of earlier `hone tune` calls) and the best one."""

    study_path: str
    trials: list[TrialResult]
    best: TrialResult | None
    best_config_path: str | None
    keys: list[str]  # the sampled settings, in table order


def _overrides(values: dict[str, Value]) -> list[str]:
    """`--set` items; JSON scalars read back as the same YAML values."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def _dotted(config: TrainConfig, key: str) -> Any:
    node: Any = config.model_dump()
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _candidates(key: str, space: dict[str, Param], base: TrainConfig) -> list[Value]:
    """The extreme values a parameter can take, to validate before any trial runs."""
    param = space[key]
    if isinstance(param, FloatParam | IntParam):
        return [param.low, param.high]
    if isinstance(param, CategoricalParam):
        return list(param.choices)
    if isinstance(space.get(param.of), MultipleOfParam):
        raise HoneError(f"search space {key}: '{param.of}' is itself a multiple_of; refer to a sampled or fixed value")
    refs = _candidates(param.of, space, base) if param.of in space else [_dotted(base, param.of)]
    if not all(isinstance(ref, int | float) and not isinstance(ref, bool) for ref in refs):
        raise HoneError(f"search space {key}: multiple_of needs '{param.of}' to be a numeric setting "
                        "(or a float, int or categorical entry of the space)")
    return [choice * ref for choice in param.choices for ref in refs]


def check_space(config_path: Path, overrides: list[str], space: dict[str, Param]) -> None:
    """Every key must be a settable config path and every extreme value valid, else a HoneError naming it."""
    base = load_config(config_path, overrides)
    for key in space:
        for value in _candidates(key, space, base):
            try:
                load_config(config_path, [*overrides, *_overrides({key: value})])
            except HoneError as error:
                raise HoneError(f"search space {key}={value!r}: {error}") from None


def check_eval_set(config: TrainConfig) -> None:
    """Trials are compared on eval loss, so the config needs an eval set."""
    if not config.data.has_eval_set:
        raise HoneError("hone tune compares trials on eval loss, but the config has no eval set",
                        hint="set data.eval, data.eval_fraction > 0, or use a `hone data prepare` folder as "
                        "data.train (e.g. --set data.eval_fraction=0.1)")


def sample(trial, space: dict[str, Param], base: TrainConfig) -> dict[str, Value]:
    """Draw one config value per key; a multiple_of is drawn after the value it multiplies."""
    values: dict[str, Value] = {}
    for key, param in space.items():
        if isinstance(param, FloatParam):
            values[key] = trial.suggest_float(key, param.low, param.high, log=param.log)
        elif isinstance(param, IntParam):
            values[key] = trial.suggest_int(key, param.low, param.high, log=param.log)
        elif isinstance(param, CategoricalParam):
            values[key] = trial.suggest_categorical(key, param.choices)
    for key, param in space.items():
        if isinstance(param, MultipleOfParam):
            values[key] = trial.suggest_categorical(key, param.choices) * values.get(param.of, _dotted(base, param.of))
    return values


def _objective(config_path: Path, overrides: list[str], space: dict[str, Param], out: Path, base: TrainConfig):
    import optuna

    from hone.train.run import train

    def objective(trial: optuna.Trial) -> float:
        values = sample(trial, space, base)
        trial.set_user_attr("values", values)
        placement = [f"output_dir={json.dumps(str(out / 'trials'))}", f"run_name=trial-{trial.number:03d}"]
        config = load_config(config_path, [*overrides, *_overrides(values), *placement])

        def on_eval(step: int, loss: float) -> bool:
            trial.report(loss, step)
            return trial.should_prune()

        started = time.perf_counter()
        run_dir = train(config, config_path=config_path, show_progress=False, on_eval=on_eval)
        summary = json.loads((run_dir / "summary.json").read_text())
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("steps", summary["steps"])
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
        trial.set_user_attr("best_eval_loss", summary["best_eval_loss"])
        if summary["interrupted"]:
            raise HoneError(f"interrupted during trial {trial.number}",
                            hint=f"run `hone tune` again with --out {out} to continue the study")
        if summary["pruned"]:
            raise optuna.TrialPruned()
        if summary["best_eval_loss"] is None:
            raise HoneError(f"trial {trial.number} measured no eval loss: the eval set is empty")
        return summary["best_eval_loss"]

    return objective


def first_eval_step(config: TrainConfig) -> int:
    """The step of the first eval: pruning compares trials from there on."""
    return config.training.eval_every or config.training.max_steps or 1


def open_study(out: Path, base: TrainConfig):
    """Create or load the study in OUT/study.db, with a seeded TPE sampler and a median pruner."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from on_trial instead
    out.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}", load_if_exists=True, direction="minimize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=first_eval_step(base)))
    # Offset by the trials so far, so a continued study does not replay the same random draws.
    study.sampler = optuna.samplers.TPESampler(seed=base.training.seed + len(study.trials))
    return study


def trial_result(frozen) -> TrialResult:
    """The table row of a finished (or still running) Optuna trial."""
    state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}.get(frozen.state.name, "running")
    attrs = frozen.user_attrs
    return TrialResult(number=frozen.number, state=state, values=attrs.get("values", {}),
                       best_eval_loss=attrs.get("best_eval_loss"), steps=attrs.get("steps"),
                       seconds=attrs.get("seconds"), run_dir=attrs.get("run_dir"))


def tune(config_path: Path, trials: int, *, overrides: list[str] | None = None,
         space: dict[str, Param] | None = None, out: Path | None = None,
         on_trial: Callable[[TrialResult], None] | None = None) -> TuneReport:
    """Run `trials` more trials of the study in `out` (default OUTPUT_DIR/tune-CONFIG) and write the best
    trial's full config to OUT/best.yaml; `on_trial` is called as each trial finishes."""
    overrides, space = overrides or [], space if space is not None else default_space()
    base = load_config(config_path, overrides)
    check_eval_set(base)
    check_space(config_path, overrides, space)
    out = Path(out) if out is not None else Path(base.output_dir) / f"tune-{Path(config_path).stem}"
    study = open_study(out, base)
    callbacks = [lambda _study, frozen: on_trial(trial_result(frozen))] if on_trial else []
    study.optimize(_objective(Path(config_path), overrides, space, out, base), n_trials=trials,
                   callbacks=callbacks, catch=(RuntimeError,))
    return report(study, out, config_path, overrides, list(space))


def report(study, out: Path, config_path: Path, overrides: list[str], keys: list[str]) -> TuneReport:
    """The results of every trial so far; writes OUT/best.yaml when a trial completed."""
    results = [trial_result(frozen) for frozen in study.trials]
    complete = [result for result in results if result.state == "complete"]
    best = min(complete, key=lambda result: result.best_eval_loss) if complete else None
    best_path = None
    if best is not None:
        best_path = out / "best.yaml"
        best_path.write_text(dump_config(load_config(config_path, [*overrides, *_overrides(best.values)])))
    keys = list(dict.fromkeys([*keys, *(key for result in results for key in result.values)]))
    return TuneReport(study_path=str(out / "study.db"), trials=results, best=best,
                      best_config_path=str(best_path) if best_path else None, keys=keys)
