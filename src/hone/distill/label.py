"""`hone distill label`: the teacher answers prompts that have no answer yet, and each answer becomes a training
example that records where it came from (teacher, prompt template, samples and their agreement, the filters it
passed with their scores, when it was answered).

With `samples` > 1 the teacher answers each prompt several times: the most common answer wins (self-consistency,
for labels), or the judge picks the best one in pairwise comparisons asked in both orders (free text). Answers that
fail a filter are kept in rejected.jsonl with their reasons. Prompts the teacher could not answer after its retries
are written to failures.jsonl with the reason; a run stopped by the token budget (or a kill) continues where it
stopped, from the answers cached in the output folder. With `dataset:` the kept examples become a dataset version
like `hone data prepare`'s (PII scrubbed, deduplicated, decontaminated, split), ready for `hone train`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm import tqdm

from hone.distill.dataset import DatasetSettings, build_version
from hone.distill.filters import FilterSettings, JudgeFilter, NamedCheck, build_checks, label_shares, rejections
from hone.distill.teacher import Answer, AnswerCache, Teacher, TeacherSettings
from hone.errors import HoneError

LABELED, FAILURES, SUMMARY, CACHE = "labeled.jsonl", "failures.jsonl", "summary.json", "answers.jsonl"
REJECTED, PAIRS, JUDGED = "rejected.jsonl", "pairs.jsonl", "judged.jsonl"


class TeacherTask(BaseModel):
    """What `hone distill label` and `generate` share: the teacher, the task's prompt, sampling, filters, output."""

    model_config = ConfigDict(extra="forbid")

    teacher: TeacherSettings
    system: str | None = Field(None, description="The task's system prompt, put before every prompt.")
    examples: Path | None = Field(None, description="Chat JSONL of reference examples put before every prompt.")
    samples: int = Field(1, ge=1, le=16, description="Answers per prompt; more than 1: self-consistency (see pick).")
    pick: Literal["auto", "majority", "judge"] = Field(
        "auto", description="How one of several samples wins: majority (the most common answer, for labels) or judge "
        "(pairwise comparisons by filters.judge, for free text); auto: judge when a judge is set and no labels are.")
    filters: FilterSettings | None = Field(None, description="Checks every answer must pass (rejected answers are "
                                           "kept with their reasons; a rejected and an accepted answer to the same "
                                           "prompt make a DPO pair).")
    dataset: DatasetSettings | None = Field(None, description="Make the kept examples a dataset version (PII scrubbed, "
                                            "deduplicated, decontaminated, split) as `hone data prepare` does.")
    out: Path = Field(description="Output folder (relative to where hone runs): labeled.jsonl, failures.jsonl, "
                      "rejected.jsonl, pairs.jsonl, summary.json and the answer cache answers.jsonl.")

    @model_validator(mode="after")
    def _judge_for_judge_pick(self) -> TeacherTask:
        if self.pick == "judge" and (self.filters is None or self.filters.judge is None):
            raise ValueError("pick: judge needs filters.judge (the model that compares the samples)")
        return self

    @property
    def pick_by(self) -> str:
        """How one of several samples wins, with auto resolved."""
        if self.pick != "auto":
            return self.pick
        judge = self.filters is not None and self.filters.judge is not None
        return "judge" if judge and self.filters.labels is None else "majority"


class TrafficSource(BaseModel):
    """Prompts from a model's captured traffic (as `hone serve` stored it: PII masked), newest first."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The model name the requests named.")
    project: str = "default"
    limit: int = Field(1000, ge=1, le=100_000)
    database: str | None = Field(None, description="Database URL (default: $HONE_DATABASE_URL, else hone's SQLite).")


class LabelConfig(TeacherTask):
    """What `hone distill label CONFIG.yaml` reads (paths relative to the config file); `prompts` or `traffic`."""

    prompts: Path | None = Field(None, description="JSONL of {\"messages\": [...]} or {\"prompt\": \"...\"}, or a "
                                 "CSV file.")
    traffic: TrafficSource | None = None
    column: str = Field("prompt", description="The CSV column holding the prompt.")

    @model_validator(mode="after")
    def _one_source(self) -> LabelConfig:
        if (self.prompts is None) == (self.traffic is None):
            raise ValueError("give the prompts to label as exactly one of `prompts` (a file) or `traffic` (a served "
                             "model's captured requests)")
        return self


def resolve_task_paths(task: TeacherTask, path: Path) -> None:
    """Take the task's relative paths relative to its config file (as `hone data prepare` does)."""
    from hone.settings import resolve_relative

    if task.examples is not None:
        task.examples = resolve_relative(task.examples, path)
    if task.filters is not None:
        task.filters.json_schema = resolve_relative(task.filters.json_schema, path)
        target, _, name = (task.filters.function or "").rpartition(":")
        if target.endswith(".py"):
            task.filters.function = f"{resolve_relative(Path(target), path)}:{name}"
    if task.dataset is not None:
        task.dataset.resolve_paths(path)


def load_label_config(path: Path) -> LabelConfig:
    """Read a `hone distill label` YAML; relative paths are taken relative to the file, unknown keys refused."""
    from hone.settings import read_yaml_mapping, resolve_relative, validate

    config = validate(LabelConfig, read_yaml_mapping(path, "distill label config"), str(path), "distill label config")
    config.prompts = resolve_relative(config.prompts, path)
    resolve_task_paths(config, path)
    return config


def traffic_prompts(source: TrafficSource) -> list[list[dict]]:
    """The captured requests' conversations (masked as stored; their system turns left out, the task's own is used)."""
    from hone.monitor.capture import CaptureStore, prompt_messages

    exchanges, _ = CaptureStore(source.database).captured(source.project, model=source.model, limit=source.limit)
    conversations = []
    for exchange in exchanges:
        messages = [m for m in prompt_messages(exchange.request) if m["role"] != "system"]
        while messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if messages:
            conversations.append(messages)
    if not conversations:
        raise HoneError(f"no captured requests of {source.model!r} in project {source.project!r}",
                        hint="serve the model with capture on (`capture: true`), or give `prompts:` a file")
    return conversations


def read_prompts(path: Path, column: str = "prompt") -> list[list[dict]]:
    """Each prompt as the conversation to answer (a trailing assistant turn is dropped: the teacher replaces it)."""
    if not path.is_file():
        raise HoneError(f"prompts file {path} does not exist", hint="set `prompts:` to a JSONL or CSV file")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if column not in (reader.fieldnames or []):
                raise HoneError(f"{path}: no column {column!r} (columns: {', '.join(reader.fieldnames or [])})",
                                hint="set `column:` to the column that holds the prompts")
            return [[{"role": "user", "content": row[column]}] for row in reader if (row[column] or "").strip()]
    return [_conversation(record, path, number) for number, record in _jsonl_records(path)]


def _jsonl_records(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed JSON) of every non-blank line; a line that is not JSON is an error naming it."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except ValueError as error:
            raise HoneError(f"{path}:{number}: not JSON ({error.msg})", hint="one JSON object per line") from None


def _conversation(record: dict, path: Path, number: int) -> list[dict]:
    if isinstance(record, dict) and isinstance(record.get("prompt"), str):
        return [{"role": "user", "content": record["prompt"]}]
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        raise HoneError(f"{path}:{number}: expected \"messages\" (a list) or \"prompt\" (a string)",
                        hint='e.g. {"messages": [{"role": "user", "content": "..."}]}')
    while messages and messages[-1].get("role") == "assistant":
        messages = messages[:-1]
    if not messages:
        raise HoneError(f"{path}:{number}: the conversation has no user turn to answer")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _template(config: TeacherTask) -> list[dict]:
    """What goes before every prompt: the system prompt and the reference examples."""
    shots: list[dict] = [{"role": "system", "content": config.system}] if config.system else []
    if config.examples is not None:
        for example in read_prompts_with_answers(config.examples):
            shots.extend(example)
    return shots


def read_prompts_with_answers(path: Path, what: str = "reference example",
                              setting: str = "examples") -> list[list[dict]]:
    """Chat JSONL examples, each ending with its assistant answer (reference examples, seeds); `what` and the
    config `setting` that names the file are named in errors."""
    if not path.is_file():
        raise HoneError(f"{setting} file {path} does not exist",
                        hint=f"set `{setting}:` to a chat JSONL file of examples, each ending with the assistant's "
                        "answer")
    examples = []
    for number, record in _jsonl_records(path):
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise HoneError(f"{path}:{number}: expected \"messages\" (a list of turns)",
                            hint='e.g. {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}')
        if messages[-1].get("role") != "assistant":
            raise HoneError(f"{path}:{number}: a {what} must end with the assistant's answer")
        examples.append([{"role": m.get("role"), "content": m.get("content")} for m in messages
                         if m.get("role") in ("user", "assistant")])
    return examples




def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def majority(answers: list[Answer]) -> tuple[Answer, float]:
    """The most common answer (compared without case and spacing; the earliest wins a tie) and its share."""
    counts = Counter(_norm(a.text) for a in answers)
    best = max(counts.values())
    winner = next(a for a in answers if counts[_norm(a.text)] == best)
    return winner, best / len(answers)


class JudgeCalls:
    """The filter judge, with its verdicts cached in the output folder so a rerun does not ask again."""

    def __init__(self, settings: JudgeFilter, cache: AnswerCache):
        from hone.eval.endpoint import make_client

        self.settings = settings
        self.config = settings.judge_config()
        self.cache = cache
        self.client = make_client(settings.url, settings.api_key_env, settings.timeout_s)
        self.calls = 0
        self.lock = threading.Lock()  # several prompts are decided at once

    def _cached(self, kind: str, prompt: list[dict], replies: list[str], ask: Callable[[], tuple]) -> tuple:
        identity = {"url": self.settings.url, "model": self.settings.model, "criteria": self.settings.criteria,
                    "kind": kind, "prompt": prompt, "replies": replies}
        key = hashlib.sha256(json.dumps(identity, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        found = self.cache.get(key)
        if found is not None:
            return found["value"], None
        with self.lock:
            self.calls += 1
        value, error = ask()
        if value is not None:
            self.cache.put(key, {"value": value})
        return value, error

    def score(self, prompt: list[dict], reply: str) -> tuple[int | None, str | None]:
        """The reply's 1-5 rubric score, or (None, why the judge gave none)."""
        from hone.eval.judge import rate_reply

        return self._cached("rubric", prompt, [reply],
                            lambda: rate_reply(self.client, self.config, prompt, reply))

    def prefer(self, prompt: list[dict], first: str, second: str) -> tuple[str | None, str | None]:
        """"first", "second" or "tie", asked in both orders; (None, why) when the judge gave no verdict."""
        from hone.eval.judge import prefer

        return self._cached("pairwise", prompt, [first, second],
                            lambda: prefer(self.client, self.config, prompt, first, second))


def judge_pick(judge: JudgeCalls, prompt: list[dict], answers: list[Answer]) -> tuple[Answer, list[str]]:
    """The answer that wins most pairwise comparisons among the distinct ones (a tie counts half; the more common
    answer, then the earlier, breaks a tie in wins), with the judge's errors."""
    first: dict[str, Answer] = {}
    for answer in answers:  # each distinct answer as the teacher first gave it, in that order
        first.setdefault(_norm(answer.text), answer)
    distinct = list(first.values())
    wins = dict.fromkeys(range(len(distinct)), 0.0)
    errors = []
    for i in range(len(distinct)):
        for j in range(i + 1, len(distinct)):
            outcome, error = judge.prefer(prompt, distinct[i].text, distinct[j].text)
            if error:
                errors.append(error)
            points = {"first": (1.0, 0.0), "second": (0.0, 1.0)}.get(outcome, (0.5, 0.5))
            wins[i] += points[0]
            wins[j] += points[1]
    counts = Counter(_norm(a.text) for a in answers)
    best = max(range(len(distinct)), key=lambda k: (wins[k], counts[_norm(distinct[k].text)], -k))
    return distinct[best], errors


@dataclass
class Outcome:
    """What became of one prompt: a kept example, a rejection, a failure, and the DPO pairs it gave."""

    example: dict | None = None
    rejected: dict | None = None
    failure: dict | None = None
    pairs: list[dict] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)  # every rejected answer with its reasons
    not_asked: bool = False


@dataclass
class _Run:
    """What every prompt's decision needs: the task, its checks, the judge, the template's hash."""

    task: TeacherTask
    checks: list[NamedCheck]
    judge: JudgeCalls | None
    template_sha256: str
    kind: str


def _decide(run: _Run, number: int, prompt: list[dict], answers: list[Answer | str | None],
            lineage: dict) -> Outcome:
    """Check, pick and judge one prompt's answers."""
    replies = [a for a in answers if isinstance(a, Answer)]
    errors = [a for a in answers if isinstance(a, str)]
    if len(replies) < run.task.samples:
        return Outcome(failure={"prompt": number, "messages": prompt, "answered": len(replies),
                                "errors": errors or ["not asked: the token budget was used up"]},
                       not_asked=any(a is None for a in answers))
    judged = [(reply, rejections(run.checks, reply.text, prompt)) for reply in replies]
    accepted = [reply for reply, reasons in judged if not reasons]
    refused = [{"text": reply.text, "reasons": reasons} for reply, reasons in judged if reasons]
    if not accepted:
        return Outcome(rejected={"prompt": number, "messages": prompt, "answers": refused}, refused=refused)
    picked_by = run.task.pick_by if len({_norm(a.text) for a in accepted}) > 1 else "only answer"
    if picked_by == "judge":
        winner, judge_errors = judge_pick(run.judge, prompt, accepted)
    else:
        (winner, _), judge_errors = majority(accepted), []
    agreement = sum(_norm(a.text) == _norm(winner.text) for a in replies) / len(replies)
    filters = {"passed": [name for name, _ in run.checks]}
    if run.judge is not None:
        score, error = run.judge.score(prompt, winner.text)
        if score is None:
            return Outcome(failure={"prompt": number, "messages": prompt, "answered": len(replies),
                                    "errors": [f"judge: {error}"]})
        filters["judge"] = {"model": run.judge.settings.model, "score": score,
                            "min_score": run.judge.settings.min_score}
        if score < run.judge.settings.min_score:
            refused.append({"text": winner.text,
                            "reasons": [f"judge: score {score} is below min_score {run.judge.settings.min_score}"]})
            return Outcome(rejected={"prompt": number, "messages": prompt, "answers": refused}, refused=refused)
    system = [{"role": "system", "content": run.task.system}] if run.task.system else []
    teacher = run.task.teacher
    record = {"kind": run.kind, "teacher": {"url": teacher.url, "model": teacher.model,
                                            "fingerprint": winner.fingerprint},
              "template_sha256": run.template_sha256, "prompt": number, "samples": run.task.samples,
              "agreement": agreement, "picked_by": picked_by, "filters": filters,
              "rejected_samples": len(refused), "answered_at": winner.answered_at, **lineage}
    if judge_errors:
        record["judge_errors"] = len(judge_errors)
    example = {"messages": system + prompt + [{"role": "assistant", "content": winner.text}],
               "metadata": {"distill": record}}
    pairs = [{"input": {"messages": system + prompt},
              "preferred_output": [{"role": "assistant", "content": winner.text}],
              "non_preferred_output": [{"role": "assistant", "content": other}]}
             for other in dict.fromkeys(r["text"] for r in refused)]  # each distinct rejected answer once
    return Outcome(example=example, pairs=pairs, refused=refused)


def answer_prompts(task: TeacherTask, prompts: Sequence[list[dict]], *, kind: str = "label",
                   lineage: Sequence[dict] | None = None, show_progress: bool = True) -> dict:
    """Have the teacher answer every prompt, filter, pick and judge the answers, write the examples, rejections,
    DPO pairs, failures and a summary into `task.out` (and the dataset version `task.dataset` asks for); return the
    summary. `lineage[i]` is added to prompt i's recorded lineage (e.g. the topic a generated prompt came from)."""
    template = _template(task)
    template_sha256 = hashlib.sha256(json.dumps(template, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    task.out.mkdir(parents=True, exist_ok=True)
    teacher = Teacher(task.teacher, AnswerCache(task.out / CACHE))
    with tqdm(total=len(prompts) * task.samples, desc="teacher", unit="answer", file=sys.stderr,
              disable=not show_progress) as bar:
        answered = teacher.answer_all([template + prompt for prompt in prompts], task.samples,
                                      on_done=lambda: bar.update(1))
    judge_settings = task.filters.judge if task.filters else None
    judge = JudgeCalls(judge_settings, AnswerCache(task.out / JUDGED)) if judge_settings else None
    run = _Run(task, build_checks(task.filters), judge, template_sha256, kind)
    extra = list(lineage) if lineage is not None else [{}] * len(prompts)
    with ThreadPoolExecutor(judge_settings.concurrency if judge_settings else 1) as pool:
        outcomes = list(pool.map(lambda i: _decide(run, i + 1, prompts[i], answered[i], extra[i]),
                                 range(len(prompts))))
    rows = {LABELED: [o.example for o in outcomes if o.example], FAILURES: [o.failure for o in outcomes if o.failure],
            REJECTED: [o.rejected for o in outcomes if o.rejected], PAIRS: [p for o in outcomes for p in o.pairs]}
    for name, lines in rows.items():
        _write_lines(task.out / name, lines)
    not_asked = sum(o.not_asked for o in outcomes)
    summary = {"kind": kind, "prompts": len(prompts), "labeled": len(rows[LABELED]),
               "failed": len(rows[FAILURES]) - not_asked, "not_asked": not_asked, "rejected": len(rows[REJECTED]),
               "pairs": len(rows[PAIRS]), "complete": not rows[FAILURES], "teacher": task.teacher.model,
               "template_sha256": template_sha256, "usage": teacher.usage.report(task.teacher),
               "judge": _judge_summary(task, judge),
               "rejections": _rejection_counts([answer for o in outcomes for answer in o.refused]),
               "labels": _label_shares(task, rows[LABELED]),
               "out": str(task.out)}
    if task.dataset is not None and rows[LABELED]:
        summary["dataset"] = build_version(task.dataset, task.out / LABELED)
    (task.out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _judge_summary(task: TeacherTask, judge: JudgeCalls | None) -> dict | None:
    if judge is None:
        return None
    same = judge.settings.url.rstrip("/") == task.teacher.url.rstrip("/") and judge.settings.model == task.teacher.model
    return {"model": judge.settings.model, "calls": judge.calls, "min_score": judge.settings.min_score,
            "is_the_teacher": same}


def _label_shares(task: TeacherTask, kept: list[dict]) -> dict[str, float] | None:
    """Each label's share of the kept examples (with `filters.labels`): a teacher that gives one label to almost
    everything teaches the student one answer."""
    if task.filters is None or task.filters.labels is None or not kept:
        return None
    return label_shares([row["messages"][-1]["content"] for row in kept], task.filters)


def _rejection_counts(refused: list[dict]) -> dict[str, int]:
    """How many answers each filter rejected (a reason starts with its filter's name)."""
    return dict(Counter(reason.split(": ")[0] for answer in refused for reason in answer["reasons"]))


def label(config: LabelConfig, show_progress: bool = True) -> dict:
    """Answer every prompt with the teacher; write the examples, the failures and a summary; return the summary."""
    prompts = traffic_prompts(config.traffic) if config.traffic else read_prompts(config.prompts, config.column)
    return answer_prompts(config, prompts, kind="label", show_progress=show_progress)


def _write_lines(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
