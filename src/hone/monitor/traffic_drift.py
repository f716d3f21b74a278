"""Drift of a served model's captured traffic against the data the answering version was trained on.

The reference is the training file in the version's registry lineage: the user turns of each example (at most
`DriftConfig.reference_sample` examples, drawn by seed), their replies' lengths and format validity. The traffic is
cut into consecutive windows of `window_size` requests per answering version, oldest first; each complete window
is checked for prompt embedding drift (`prompt_drift`), reply length drift (`length_drift`, both sides counted in
the embedder's tokens) and, when the model has an output contract, format validity drift (`rate_drift`). The
last, incomplete window is reported with how many requests it still needs.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache

import numpy as np
from sqlalchemy import select

from hone.errors import ConflictError, RequestError
from hone.monitor.capture import message_text, prompt_messages
from hone.monitor.contracts import OutputContract, format_valid
from hone.monitor.drift import (
    DEFAULT_CONFIG,
    DriftConfig,
    DriftResult,
    PromptEmbeddings,
    SampleTest,
    embed_prompts,
    length_drift,
    prompt_drift,
    rate_drift,
)
from hone.monitor.report import as_utc, contract_for, traffic_filter
from hone.store import engine_for, session
from hone.store.tables import CapturedRequest, ModelAlias, ModelVersion

MAX_CHECKED_WINDOWS = 24
"""Complete windows checked per call, the newest: each check takes about a second of CPU."""
DEFAULT_ALIAS = "champion"


@dataclass(frozen=True)
class DriftWindow:
    """One window of traffic answered by one version and what its checks found."""

    index: int
    start: str
    end: str
    requests: int
    status: str
    """ok, or insufficient: the window is not complete yet (see `needed`)."""
    drifted: bool
    """Any of the checks flagged drift."""
    needed: int = 0
    prompt: DriftResult | None = None
    reply_length: SampleTest | None = None
    format_validity: SampleTest | None = None
    examples: list[str] = field(default_factory=list)
    """The window prompts the classifier ranks least like the reference (PII masked at capture), most first."""


@dataclass(frozen=True)
class VersionDrift:
    """The windows of traffic one version answered, against its training data."""

    version: str
    training_file_sha256: str | None
    reference_size: int
    requests: int
    windows: list[DriftWindow]
    skipped_windows: int = 0
    """Older complete windows not checked (at most MAX_CHECKED_WINDOWS are)."""
    note: str | None = None


@dataclass(frozen=True)
class TrafficDrift:
    """`traffic_drift`'s answer."""

    project: str
    model: str
    alias: str | None
    window_size: int
    min_window: int
    contract: bool
    versions: list[VersionDrift]
    base_requests: int = 0
    """Requests the base model answered: it has no training data to compare them with."""
    examples_hidden: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Reference:
    embeddings: PromptEmbeddings
    reply_lengths: np.ndarray
    replies: tuple[str, ...]


@dataclass
class _Traffic:
    created_at: list[datetime] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)


def prompt_text(messages: list[dict]) -> str:
    """The user turns of a conversation, one per line: what the drift checks compare."""
    return "\n".join(message_text(m.get("content")) for m in messages
                     if isinstance(m, dict) and m.get("role") == "user")


def request_prompt(request_json: str) -> str:
    """The user turns of a captured request (a completion prompt counts as one user turn)."""
    return prompt_text(prompt_messages(json.loads(request_json)))


def _token_counts(texts: list[str]) -> np.ndarray:
    """Tokens per text in the embedder's tokenizer, so reference and traffic replies are counted alike."""
    from hone.retrieval.embeddings import load_embedder

    if not texts:
        return np.zeros(0, dtype=np.int64)
    ids = load_embedder().tokenizer(texts, verbose=False, add_special_tokens=False)["input_ids"]
    return np.array([len(i) for i in ids], dtype=np.int64)


@lru_cache(maxsize=16)
def training_reference(version: str, sha256: str, sample: int) -> _Reference:
    """The version's training prompts (embedded) and replies, at most `sample` examples drawn by a fixed seed;
    cached: the same version and sample always give the same reference."""
    from hone.data.formats import Example, read_dataset
    from hone.jobs.files import content_path

    path = content_path(sha256)
    if not path.is_file():
        raise ConflictError(f"the training file of {version} (sha256 {sha256[:12]}...) is no longer stored",
                        hint="drift needs the training data of the version that answered")
    pairs = []
    for example in read_dataset(path).examples:
        conversation, reply = ((example.messages[:-1], example.messages[-1]) if isinstance(example, Example)
                               else (example.prompt, example.chosen))
        prompt = prompt_text(conversation)
        if prompt.strip():
            pairs.append((prompt, message_text(reply.get("content")) if reply.get("role") == "assistant" else ""))
    if len(pairs) > sample:
        pairs = random.Random(0).sample(pairs, sample)
    replies = tuple(reply for _, reply in pairs)
    return _Reference(embed_prompts([prompt for prompt, _ in pairs]), _token_counts(list(replies)), replies)


def _target(db, project: str, model: str, alias: str | None) -> tuple[str, str | None]:
    """The name whose traffic is checked and the alias it goes through: a model name means its `alias`, by default
    champion ("support" -> support@champion); a version or base model name means all its traffic."""
    if "@" in model:
        return model, model.rsplit("@", 1)[1]
    grouped = db.scalar(select(ModelVersion.id).where(ModelVersion.project == project, ModelVersion.model == model)
                        .limit(1))
    return model, alias or (DEFAULT_ALIAS if grouped is not None else None)


def traffic_drift(project: str, model: str, *, db_url: str | None = None, since: datetime | None = None,
                  window_size: int | None = None, alias: str | None = None,
                  config: DriftConfig = DEFAULT_CONFIG, version: str | None = None,
                  latest_only: bool = False) -> TrafficDrift:
    """Drift of `model`'s traffic in `project` (since `since`) against the training data of each version that
    answered it (only `version`, when given). `model` is "support@champion", a version name, or a model name whose
    `alias` (default champion) is checked. `latest_only` checks only the newest complete window of each version.

    NotFoundError when the project neither served nor registered the model.
    """
    window_size = window_size or config.window_size
    if window_size < config.min_window:
        raise RequestError(f"window_size {window_size} is below min_window={config.min_window}", param="window_size",
                           code="invalid_value", hint=f"use at least {config.min_window} requests per window")
    notes: list[str] = []
    with session(engine_for(db_url)) as db:
        model, alias = _target(db, project, model, alias)
        clause = traffic_filter(db, project, model)
        if alias is not None:
            clause = clause & (CapturedRequest.alias == alias)
        if since is not None:
            clause = clause & (CapturedRequest.created_at >= as_utc(since))
        if version is not None:
            clause = clause & (CapturedRequest.served_version == version)
        contract = contract_for(db, project, model, db_url)
        rows = db.execute(select(CapturedRequest.served_version, CapturedRequest.created_at,
                                 CapturedRequest.request_json, CapturedRequest.response_text)
                          .where(clause).order_by(CapturedRequest.created_at, CapturedRequest.id)).all()
        served = {row.served_version for row in rows if row.served_version}
        lineage = dict(db.execute(select(ModelVersion.name, ModelVersion.training_file_sha256)
                                  .where(ModelVersion.project == project, ModelVersion.name.in_(served))).all())
    traffic: dict[str, _Traffic] = {}
    base = 0
    for row in rows:
        if row.served_version is None:
            base += 1
            continue
        part = traffic.setdefault(row.served_version, _Traffic())
        part.created_at.append(as_utc(row.created_at))
        part.prompts.append(request_prompt(row.request_json))
        part.replies.append(row.response_text)
    if base:
        notes.append(f"{base} requests answered by the base model are not checked: it has no training data")
    plans = {version: _plan(len(part.prompts), window_size, latest_only) for version, part in traffic.items()}
    # Embed every window prompt of the call at once.
    order = [(version, i) for version, (complete, _) in plans.items() for start, end in complete
             for i in range(start, end)]
    embedded = embed_prompts([traffic[version].prompts[i] for version, i in order]) if order else None
    position = {key: n for n, key in enumerate(order)}
    versions = []
    for version, part in traffic.items():
        complete, skipped = plans[version]
        sha256 = lineage.get(version)
        if sha256 is None:
            versions.append(VersionDrift(version=version, training_file_sha256=None, reference_size=0,
                                         requests=len(part.prompts), windows=[],
                                         note="the version has no training file in its lineage"))
            continue
        reference = training_reference(version, sha256, config.reference_sample)
        if len(reference.replies) < config.min_window:
            versions.append(VersionDrift(version=version, training_file_sha256=sha256,
                                         reference_size=len(reference.replies), requests=len(part.prompts),
                                         windows=[], note=f"its training data has {len(reference.replies)} "
                                         f"prompts: drift needs at least {config.min_window} to compare with"))
            continue
        windows = [_check(n + skipped, part, start, end, reference, embedded, position, version, contract, config)
                   for n, (start, end) in enumerate(complete)]
        checked = (skipped + len(complete)) * window_size
        if checked < len(part.prompts):
            windows.append(DriftWindow(index=skipped + len(complete), start=part.created_at[checked].isoformat(),
                                       end=part.created_at[-1].isoformat(), requests=len(part.prompts) - checked,
                                       status="insufficient", drifted=False,
                                       needed=window_size - (len(part.prompts) - checked)))
        versions.append(VersionDrift(version=version, training_file_sha256=sha256,
                                     reference_size=len(reference.replies), requests=len(part.prompts),
                                     windows=windows, skipped_windows=skipped))
    if not rows:
        notes.append("no captured traffic for this model" + (f" through alias {alias}" if alias else ""))
    return TrafficDrift(project=project, model=model, alias=alias, window_size=window_size,
                        min_window=config.min_window, contract=contract is not None, versions=versions,
                        base_requests=base, notes=notes)


def _plan(count: int, window_size: int, latest_only: bool) -> tuple[list[tuple[int, int]], int]:
    """The complete windows to check as (start, end) row ranges, and how many older complete ones are skipped."""
    complete = count // window_size
    keep = min(complete, 1 if latest_only else MAX_CHECKED_WINDOWS)
    return [(i * window_size, (i + 1) * window_size) for i in range(complete - keep, complete)], complete - keep


def _check(index: int, part: _Traffic, start: int, end: int, reference: _Reference, embedded: PromptEmbeddings,
           position: dict, version: str, contract: OutputContract | None, config: DriftConfig) -> DriftWindow:
    rows = [position[(version, i)] for i in range(start, end)]
    window = PromptEmbeddings(embedded.vectors[rows], embedded.lengths[rows], embedded.max_seq_length)
    prompt = prompt_drift(reference.embeddings, window, seed=index, config=config)
    replies = part.replies[start:end]
    lengths = length_drift(reference.reply_lengths, _token_counts(replies), config=config)
    # length_drift words its finding for prompts; here it measured replies.
    lengths = replace(lengths, reason=lengths.reason.replace("prompt length", "reply length", 1))
    validity = None
    if contract is not None:
        reference_valid = sum(format_valid(r, contract) is True for r in reference.replies)
        validity = rate_drift(reference_valid, len(reference.replies), sum(format_valid(r, contract) is True
                                                                             for r in replies), len(replies),
                              config=config)
    drifted = prompt.drifted or lengths.drifted or (validity is not None and validity.drifted)
    examples = [part.prompts[start + i] for i in prompt.most_drifted]
    return DriftWindow(index=index, start=part.created_at[start].isoformat(), end=part.created_at[end - 1].isoformat(),
                       requests=end - start, status="ok", drifted=drifted, prompt=prompt, reply_length=lengths,
                       format_validity=validity, examples=examples)


def latest_drift(project: str, model: str, *, db_url: str | None = None) -> DriftResult | None:
    """Prompt drift of the newest complete window of `model`'s champion traffic answered by the current champion;
    None when the model has no champion or not one complete window of its traffic yet."""
    name = model.split("@", 1)[0]
    with session(engine_for(db_url)) as db:
        champion = db.scalar(select(ModelAlias.version_name).where(
            ModelAlias.project == project, ModelAlias.model == name, ModelAlias.alias == DEFAULT_ALIAS))
    if champion is None:
        return None
    found = traffic_drift(project, f"{name}@{DEFAULT_ALIAS}", db_url=db_url, version=champion, latest_only=True)
    for version in found.versions:
        checked = [w for w in version.windows if w.prompt is not None]
        if version.version == champion and checked:
            return checked[-1].prompt
    return None


def hide_examples(found: TrafficDrift) -> TrafficDrift:
    """`found` without the example prompts (captured user text), for callers who may not read captures."""
    versions = [replace(v, windows=[replace(w, examples=[]) for w in v.windows]) for v in found.versions]
    return replace(found, versions=versions, examples_hidden=True,
                   notes=[*found.notes, "example prompts are captured user text: only admin keys see them"])
