"""Health of a served model over time windows, from its captured traffic and feedback.

For each window (default: hourly buckets on the hour, UTC) and each way the traffic was served (the model name as
clients sent it, the version that answered, the arm): request count, latency and tokens-per-second percentiles,
prompt and reply lengths, refusal / empty / truncated reply rates, format validity under the model's output
contract, mean rating and correction rate.

A statistic from too little traffic is not shown: it carries `needed`, how many more samples it takes.
The minimums (`MINIMUMS`):
- p50 and p90 need 20 samples in the window; p99 needs 100 (below that the "p99" is just the largest sample).
- a rate (refusal, validity, corrections...) needs 20 requests: below that one request moves it 5+ points,
  and its 95% Wilson interval is wider than +-20 points around 50%.
- a mean rating needs 10 ratings.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import or_, select

from hone.errors import NotFoundError, RequestError
from hone.monitor.contracts import OutputContract, format_valid, is_empty, is_refusal, is_truncated
from hone.store import engine_for, session
from hone.store.tables import CapturedRequest, Feedback, ModelVersion

MIN_PERCENTILE = 20
MIN_P99 = 100
MIN_RATE = 20
MIN_RATINGS = 10
MAX_WINDOWS = 1000
"""Most windows one report holds; without `since` the report starts this many windows before `until`."""
DEFAULT_WINDOW = timedelta(hours=1)
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class Minimums:
    """The least traffic each statistic is shown for."""

    percentile: int = MIN_PERCENTILE
    p99: int = MIN_P99
    rate: int = MIN_RATE
    ratings: int = MIN_RATINGS


@dataclass(frozen=True)
class Percentiles:
    """p50 / p90 / p99 of a measure over the window's requests that have it; None where too few do."""

    n: int
    p50: float | None
    p90: float | None
    p99: float | None
    needed: int
    """More samples needed before p50 and p90 are shown (0: shown)."""
    needed_p99: int


@dataclass(frozen=True)
class Rate:
    """count / n with its 95% Wilson interval; None where n is below the minimum."""

    count: int
    n: int
    rate: float | None
    ci_low: float | None
    ci_high: float | None
    needed: int


@dataclass(frozen=True)
class Ratings:
    """Mean of the latest rating each rated response got."""

    count: int
    mean: float | None
    needed: int


@dataclass(frozen=True)
class Health:
    """One window's figures (or the whole period's)."""

    start: str
    end: str
    requests: int
    latency_ms: Percentiles
    tokens_per_second: Percentiles
    """Completion tokens per second of latency, per request."""
    prompt_tokens: Percentiles
    reply_tokens: Percentiles
    refusal: Rate
    empty: Rate
    truncated: Rate
    """Replies cut at the token limit (finish_reason length), of those whose finish reason is known."""
    format_valid: Rate | None
    """Replies keeping the model's output contract; None when the model has none."""
    rating: Ratings
    corrected: Rate
    """Requests whose answer a user corrected."""


@dataclass(frozen=True)
class Series:
    """One way the traffic was served: the name clients sent, the version that answered (None: the base), the
    alias the name went through and the arm (primary, canary or shadow)."""

    model: str
    version: str | None
    alias: str | None
    arm: str | None
    total: Health
    windows: list[Health]


@dataclass(frozen=True)
class MonitorReport:
    """`health`'s answer: the whole traffic of `model` per window, and the same per way it was served."""

    project: str
    model: str
    since: str
    until: str
    window_seconds: int
    contract: OutputContract | None
    total: Health
    windows: list[Health]
    series: list[Series]
    minimums: Minimums = field(default_factory=Minimums)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Row:
    created_at: datetime
    model: str
    version: str | None
    alias: str | None
    arm: str | None
    latency_ms: float | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    text: str
    rating: int | None = None
    corrected: bool = False


def parse_duration(text: str, param: str = "window") -> timedelta:
    """'15m', '1h', '1d', '90s', '2w' as a timedelta; RequestError naming `param` otherwise."""
    match = _DURATION.match(text or "")
    if not match or int(match.group(1)) == 0:
        raise RequestError(f"{param} {text!r} is not a duration", param=param, code="invalid_value",
                           hint="write a positive number and a unit: 15m, 1h, 1d (s, m, h, d, w)")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def parse_since(text: str | None, now: datetime | None = None, param: str = "since") -> datetime | None:
    """A moment: ISO 8601 (UTC when it has no zone) or a duration back from now ('2h', '1d'); None stays None."""
    if text is None or not text.strip():
        return None
    if _DURATION.match(text):
        return (now or datetime.now(UTC)) - parse_duration(text, param)
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise RequestError(f"{param} {text!r} is neither an ISO 8601 time nor a duration", param=param,
                           code="invalid_value", hint="e.g. 2026-05-01T09:00:00Z, 2h or 1d") from None
    return as_utc(moment)


def as_utc(moment: datetime) -> datetime:
    """Aware UTC; SQLite hands datetimes back without their zone."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def traffic_filter(db, project: str, model: str):
    """The captured requests `model` stands for: that exact name; a version name as the version that answered;
    a model (e.g. support) as every alias of it and every version of it. NotFoundError when `project` has neither
    traffic nor a registered model by that name."""
    group = model.split("@", 1)[0]
    versions = select(ModelVersion.name).where(ModelVersion.project == project, ModelVersion.model == model)
    clause = (CapturedRequest.project == project) & or_(
        CapturedRequest.model == model, CapturedRequest.served_version == model,
        CapturedRequest.model.startswith(f"{model}@", autoescape=True), CapturedRequest.served_version.in_(versions))
    known = db.scalar(select(CapturedRequest.id).where(clause).limit(1)) is not None or db.scalar(
        select(ModelVersion.id).where(ModelVersion.project == project,
                                      or_(ModelVersion.name == group, ModelVersion.model == group)).limit(1))
    if not known:
        raise NotFoundError(f"The model '{model}' does not exist or you do not have access to it", param="model",
                            code="model_not_found")
    return clause


def contract_for(db, project: str, model: str, db_url: str | None = None) -> OutputContract | None:
    """The output contract of `model`: the project's contract for its name before '@', or for the model a version
    name belongs to."""
    from hone.registry.projects import Projects

    contracts = Projects(db_url).settings(project, db).monitor.contracts
    name = model.split("@", 1)[0]
    if name not in contracts:
        name = db.scalar(select(ModelVersion.model).where(ModelVersion.project == project,
                                                          ModelVersion.name == name)) or name
    contract = contracts.get(name)
    return contract if contract is not None and contract.defined else None


def health(project: str, model: str, *, db_url: str | None = None, since: datetime | None = None,
           until: datetime | None = None, window: timedelta = DEFAULT_WINDOW,
           alias: str | None = None) -> MonitorReport:
    """Per-window health of `model` ("support": all its aliases and versions; "support@champion"; a version name)
    in `project`, from `since` (default: its first request, at most MAX_WINDOWS windows back) to `until` (now).

    NotFoundError when the project neither served nor registered the model; RequestError (param window or since)
    for a window under a second, a `since` after `until`, or more than MAX_WINDOWS windows.
    """
    until = as_utc(until) if until else datetime.now(UTC)
    step = int(window.total_seconds())
    if step < 1:
        raise RequestError("window must be at least one second", param="window", code="invalid_value")
    notes = []
    with session(engine_for(db_url)) as db:
        clause = traffic_filter(db, project, model)
        if alias is not None:
            clause = clause & (CapturedRequest.alias == alias)
        contract = contract_for(db, project, model, db_url)
        if since is None:
            first = db.scalar(select(CapturedRequest.created_at).where(clause)
                              .order_by(CapturedRequest.created_at).limit(1))
            earliest = until - window * MAX_WINDOWS
            since = max(as_utc(first), earliest) if first is not None else until
            if first is not None and as_utc(first) < earliest:
                notes.append(f"traffic before {earliest.isoformat()} is left out: a report holds at most "
                             f"{MAX_WINDOWS} windows (use since or a larger window)")
        since = as_utc(since)
        if since > until:
            raise RequestError(f"since {since.isoformat()} is after until {until.isoformat()}", param="since",
                               code="invalid_value")
        rows = _rows(db, clause & (CapturedRequest.created_at >= since) & (CapturedRequest.created_at <= until))
    starts = _window_starts(since, until, step)
    total = _health(rows, since, until, contract)
    windows = _per_window(rows, starts, step, contract)
    served: dict[tuple, list[_Row]] = defaultdict(list)
    for row in rows:
        served[(row.model, row.version, row.alias, row.arm)].append(row)
    series = [Series(model=key[0], version=key[1], alias=key[2], arm=key[3],
                     total=_health(part, since, until, contract), windows=_per_window(part, starts, step, contract))
              for key, part in sorted(served.items(), key=lambda item: tuple(str(k) for k in item[0]))]
    if not rows:
        notes.append("no captured traffic in this period")
    return MonitorReport(project=project, model=model, since=since.isoformat(), until=until.isoformat(),
                         window_seconds=step, contract=contract, total=total, windows=windows, series=series,
                         notes=notes)


def _rows(db, clause) -> list[_Row]:
    """The selected requests, oldest first, with the latest rating and whether a correction was given."""
    columns = (CapturedRequest.response_id, CapturedRequest.created_at, CapturedRequest.model,
               CapturedRequest.served_version, CapturedRequest.alias, CapturedRequest.arm, CapturedRequest.latency_ms,
               CapturedRequest.finish_reason, CapturedRequest.prompt_tokens, CapturedRequest.completion_tokens,
               CapturedRequest.response_text)
    found = db.execute(select(*columns).where(clause).order_by(CapturedRequest.created_at, CapturedRequest.id)).all()
    rows = {r.response_id: _Row(as_utc(r.created_at), r.model, r.served_version, r.alias, r.arm, r.latency_ms,
                                r.finish_reason, r.prompt_tokens, r.completion_tokens, r.response_text) for r in found}
    ids = select(CapturedRequest.response_id).where(clause)
    # Oldest first, so the latest rating given overwrites earlier ones.
    for response_id, rating, correction in db.execute(
            select(Feedback.response_id, Feedback.rating, Feedback.correction)
            .where(Feedback.response_id.in_(ids)).order_by(Feedback.id)):
        if rating is not None:
            rows[response_id].rating = rating
        if correction is not None:
            rows[response_id].corrected = True
    return list(rows.values())


def _window_starts(since: datetime, until: datetime, step: int) -> list[datetime]:
    """Window starts aligned to multiples of `step` since the epoch (hourly windows start on the hour)."""
    first = math.floor(since.timestamp() / step) * step
    count = math.floor(until.timestamp() / step) * step // step - first // step + 1
    if count > MAX_WINDOWS:
        raise RequestError(f"{count} windows of {step} s between since and until; at most {MAX_WINDOWS}",
                           param="window", code="invalid_value", hint="use a larger window or a later since")
    return [datetime.fromtimestamp(first + i * step, UTC) for i in range(count)]


def _per_window(rows: list[_Row], starts: list[datetime], step: int, contract: OutputContract | None) -> list[Health]:
    if not starts:
        return []
    origin = starts[0].timestamp()
    buckets: list[list[_Row]] = [[] for _ in starts]
    for row in rows:
        buckets[min(int((row.created_at.timestamp() - origin) // step), len(starts) - 1)].append(row)
    return [_health(bucket, start, start + timedelta(seconds=step), contract)
            for bucket, start in zip(buckets, starts, strict=True)]


def _health(rows: list[_Row], start: datetime, end: datetime, contract: OutputContract | None) -> Health:
    latencies = [r.latency_ms for r in rows if r.latency_ms is not None]
    speeds = [r.completion_tokens / (r.latency_ms / 1000) for r in rows
              if r.latency_ms and r.latency_ms > 0 and r.completion_tokens is not None]
    finished = [r for r in rows if r.finish_reason is not None]
    valid = None
    if contract is not None:
        checked = [format_valid(r.text, contract) for r in rows]
        valid = rate(sum(v is True for v in checked), sum(v is not None for v in checked))
    ratings = [r.rating for r in rows if r.rating is not None]
    return Health(
        start=start.isoformat(), end=end.isoformat(), requests=len(rows),
        latency_ms=percentiles(latencies),
        tokens_per_second=percentiles(speeds),
        prompt_tokens=percentiles([r.prompt_tokens for r in rows if r.prompt_tokens is not None]),
        reply_tokens=percentiles([r.completion_tokens for r in rows if r.completion_tokens is not None]),
        refusal=rate(sum(is_refusal(r.text) for r in rows), len(rows)),
        empty=rate(sum(is_empty(r.text) for r in rows), len(rows)),
        truncated=rate(sum(is_truncated(r.finish_reason) for r in finished), len(finished)),
        format_valid=valid,
        rating=Ratings(count=len(ratings), mean=round(float(np.mean(ratings)), 3) if len(ratings) >= MIN_RATINGS
                       else None, needed=max(MIN_RATINGS - len(ratings), 0)),
        corrected=rate(sum(r.corrected for r in rows), len(rows)),
    )


def percentiles(values: list[float]) -> Percentiles:
    """p50/p90 from MIN_PERCENTILE values on, p99 from MIN_P99 on (linear interpolation)."""
    n = len(values)
    shown = n >= MIN_PERCENTILE
    p50, p90, p99 = (round(float(v), 3) for v in np.percentile(values, [50, 90, 99])) if n else (None,) * 3
    return Percentiles(n=n, p50=p50 if shown else None, p90=p90 if shown else None,
                       p99=p99 if n >= MIN_P99 else None, needed=max(MIN_PERCENTILE - n, 0),
                       needed_p99=max(MIN_P99 - n, 0))


def rate(count: int, n: int) -> Rate:
    """count / n with its 95% Wilson interval, from MIN_RATE on."""
    if n < MIN_RATE:
        return Rate(count=count, n=n, rate=None, ci_low=None, ci_high=None, needed=MIN_RATE - n)
    z = 1.959964
    share = count / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Rate(count=count, n=n, rate=round(share, 4), ci_low=round(max(centre - half, 0.0), 4),
                ci_high=round(min(centre + half, 1.0), 4), needed=0)
