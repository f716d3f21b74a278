"""The retraining loop's project settings (`loop:` in a project's settings): which models it watches, the triggers
that start a retrain, and how a challenger is judged and rolled out. Read by `hone.monitor.loop`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoopJudge(Section):
    """An OpenAI-compatible endpoint whose model compares two replies (hone.eval's pairwise judge, both orders)."""

    url: str = Field(description="Base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(description="Name the endpoint serves the judge model under.")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key.")


class LoopTriggers(Section):
    """What starts a retrain; each is off unless set. Every trigger reads the champion's traffic since its own last
    firing, and a cause (a drift window, a correction, a period) fires at most once."""

    drift: bool = Field(False, description="Retrain when the newest complete window of the champion's prompts "
                        "drifts from its training prompts (the calibrated defaults of hone.monitor.drift).")
    format_validity_below: float | None = Field(None, ge=0, le=1, description="Retrain when the share of the "
                                                "champion's replies that keep the model's output contract falls "
                                                "below this (needs a contract in monitor.contracts).")
    rating_below: float | None = Field(None, description="Retrain when the mean latest rating of the champion's "
                                       "replies falls below this.")
    corrections: int | None = Field(None, ge=1, description="Retrain after this many new corrected answers.")
    schedule_hours: float | None = Field(None, gt=0, description="Retrain once every this many hours.")
    min_requests: int = Field(50, ge=1, description="Fewest requests (ratings, for rating_below) a rate trigger is "
                              "judged on; fewer wait for more traffic.")


class LoopEval(Section):
    """How a challenger is compared with the champion before it may serve."""

    max_examples: int = Field(100, ge=1, le=2000, description="Examples evaluated at most, per test set.")
    probe_limit: int = Field(30, ge=0, le=500, description="General-knowledge probes (forgetting) asked.")
    traffic_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the captured exchanges held out of "
                                    "the retrain as the fresh slice of recent traffic it is evaluated on.")
    judge: LoopJudge | None = Field(None, description="A pairwise LLM judge (both orders) for the traffic slice "
                                      "without corrections; without one that part of the slice is skipped.")
    timeout_s: float = Field(3600, gt=0, description="An evaluation still running after this long is failed: "
                             "no promotion.")


class LoopCanary(Section):
    """How a challenger that beat the champion starts serving."""

    weight: float = Field(0.1, gt=0, lt=1, description="Share of the alias's requests the challenger answers "
                          "(canary), or that are copied to it (shadow).")
    mode: Literal["canary", "shadow"] = Field("canary", description="canary: the challenger answers its share; "
                                              "shadow: it answers a copy that is captured, never returned.")


class LoopSettings(Section):
    """The retraining loop: triggers -> curated dataset -> fine-tuning job -> challenger vs champion -> canary."""

    enabled: bool = Field(False, description="Run the loop's checks for this project (in every `hone worker`).")
    model: list[str] | Literal["all"] = Field("all", description="Models (names, e.g. support) the loop watches.")
    champion_alias: str = Field("champion", description="The alias whose version is the champion.")
    triggers: LoopTriggers = LoopTriggers()
    min_examples: int = Field(20, ge=1, description="Fewest curated training examples a retrain needs; fewer: "
                              "no job, and the firing says why.")
    eval: LoopEval = LoopEval()
    canary: LoopCanary = LoopCanary()


def _partial(model: type[BaseModel], name: str) -> type[BaseModel]:
    """`model` with every field optional (None: leave it, or reset it), for a typed settings change."""
    from pydantic import create_model

    fields = {}
    for key, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            annotation = _partial(annotation, f"{annotation.__name__}Change")
        fields[key] = (annotation | None, Field(None, description=info.description))
    return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)


LoopChange = _partial(LoopSettings, "LoopChange")
