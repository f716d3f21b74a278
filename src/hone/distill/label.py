"""`hone distill label`: the teacher answers prompts that have no answer yet, and each answer becomes a training
example that records where it came from (teacher, prompt template, samples and their agreement, when).

With `samples` > 1 the teacher answers each prompt several times and the most common answer wins
(self-consistency); the share of samples that agree is kept with the example. Prompts the teacher could not answer
after its retries are written to failures.jsonl with the reason; a run stopped by the token budget (or a kill)
continues where it stopped, from the answers cached in the output folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm import tqdm

from hone.distill.filters import FilterSettings, build_checks, rejections
from hone.distill.teacher import Answer, AnswerCache, Teacher, TeacherSettings
from hone.errors import HoneError

LABELED, FAILURES, SUMMARY, CACHE = "labeled.jsonl", "failures.jsonl", "summary.json", "answers.jsonl"
REJECTED, PAIRS = "rejected.jsonl", "pairs.jsonl"


class TrafficSource(BaseModel):
    """Prompts from a model's captured traffic (as `hone serve` stored it: PII masked), newest first."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The model name the requests named.")
    project: str = "default"
    limit: int = Field(1000, ge=1, le=100_000)
    database: str | None = Field(None, description="Database URL (default: $HONE_DATABASE_URL, else hone's SQLite).")


class LabelConfig(BaseModel):
    """What `hone distill label CONFIG.yaml` reads (paths relative to the config file); `prompts` or `traffic`."""

    model_config = ConfigDict(extra="forbid")

    teacher: TeacherSettings
    prompts: Path | None = Field(None, description="JSONL of {\"messages\": [...]} or {\"prompt\": \"...\"}, or a "
                                 "CSV file.")
    traffic: TrafficSource | None = None
    column: str = Field("prompt", description="The CSV column holding the prompt.")
    system: str | None = Field(None, description="The task's system prompt, put before every prompt.")
    examples: Path | None = Field(None, description="Chat JSONL of reference examples put before every prompt.")
    samples: int = Field(1, ge=1, le=16, description="Answers per prompt; more than 1: the most common one wins.")
    filters: FilterSettings | None = Field(None, description="Checks every answer must pass (rejected answers are "
                                           "kept with their reasons; a rejected and an accepted answer to the same "
                                           "prompt make a DPO pair).")
    out: Path = Field(description="Output folder (relative to where hone runs): labeled.jsonl, failures.jsonl, "
                      "summary.json and the answer cache answers.jsonl.")

    @model_validator(mode="after")
    def _one_source(self) -> LabelConfig:
        if (self.prompts is None) == (self.traffic is None):
            raise ValueError("give the prompts to label as exactly one of `prompts` (a file) or `traffic` (a served "
                             "model's captured requests)")
        return self


def load_label_config(path: Path) -> LabelConfig:
    """Read a `hone distill label` YAML; relative paths are taken relative to the file, unknown keys refused."""
    from hone.settings import read_yaml_mapping, resolve_relative, validate

    config = validate(LabelConfig, read_yaml_mapping(path, "distill label config"), str(path), "distill label config")
    config.prompts = resolve_relative(config.prompts, path)
    if config.examples is not None:
        config.examples = resolve_relative(config.examples, path)
    if config.filters is not None:
        config.filters.json_schema = resolve_relative(config.filters.json_schema, path)
        target, _, name = (config.filters.function or "").rpartition(":")
        if target.endswith(".py"):
            config.filters.function = f"{resolve_relative(Path(target), path)}:{name}"
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
    conversations = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise HoneError(f"{path}:{number}: not JSON ({error.msg})", hint="one JSON object per line") from None
        conversations.append(_conversation(record, path, number))
    return conversations


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


def _template(config: LabelConfig) -> list[dict]:
    """What goes before every prompt: the system prompt and the reference examples."""
    shots: list[dict] = [{"role": "system", "content": config.system}] if config.system else []
    if config.examples is not None:
        for example in read_prompts_with_answers(config.examples):
            shots.extend(example)
    return shots


def read_prompts_with_answers(path: Path) -> list[list[dict]]:
    """Reference examples: chat JSONL, each with its assistant answer."""
    if not path.is_file():
        raise HoneError(f"examples file {path} does not exist", hint="set `examples:` to a chat JSONL file")
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            messages = json.loads(line).get("messages") or []
            if not messages or messages[-1].get("role") != "assistant":
                raise HoneError(f"{path}:{number}: a reference example must end with the assistant's answer")
            examples.append([{"role": m["role"], "content": m["content"]} for m in messages
                             if m["role"] in ("user", "assistant")])
    return examples


def majority(answers: list[Answer]) -> tuple[Answer, float]:
    """The most common answer (compared without case and spacing; the earliest wins a tie) and its share."""
    def norm(text: str) -> str:
        return " ".join(text.split()).casefold()

    counts = Counter(norm(a.text) for a in answers)
    best = max(counts.values())
    winner = next(a for a in answers if counts[norm(a.text)] == best)
    return winner, best / len(answers)


def label(config: LabelConfig, show_progress: bool = True) -> dict:
    """Answer every prompt with the teacher; write the examples, the failures and a summary; return the summary."""
    prompts = traffic_prompts(config.traffic) if config.traffic else read_prompts(config.prompts, config.column)
    template = _template(config)
    template_sha256 = hashlib.sha256(json.dumps(template, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    config.out.mkdir(parents=True, exist_ok=True)
    teacher = Teacher(config.teacher, AnswerCache(config.out / CACHE))
    with tqdm(total=len(prompts) * config.samples, desc="teacher", unit="answer", file=sys.stderr,
              disable=not show_progress) as bar:
        answered = teacher.answer_all([template + prompt for prompt in prompts], config.samples,
                                      on_done=lambda: bar.update(1))
    checks = build_checks(config.filters)
    # the student learns with the task's system prompt (it will run with it), not the teacher's reference examples
    system = [{"role": "system", "content": config.system}] if config.system else []
    labeled, failures, rejected, pairs, unasked = [], [], [], [], 0
    for number, (prompt, answers) in enumerate(zip(prompts, answered, strict=True), 1):
        replies = [a for a in answers if isinstance(a, Answer)]
        errors = [a for a in answers if isinstance(a, str)]
        if len(replies) < config.samples:
            if any(a is None for a in answers):
                unasked += 1
            failures.append({"prompt": number, "messages": prompt, "answered": len(replies),
                             "errors": errors or ["not asked: the token budget was used up"]})
            continue
        judged = [(reply, rejections(checks, reply.text, prompt)) for reply in replies]
        accepted = [reply for reply, reasons in judged if not reasons]
        refused = [{"text": reply.text, "reasons": reasons} for reply, reasons in judged if reasons]
        if not accepted:
            rejected.append({"prompt": number, "messages": prompt, "answers": refused})
            continue
        winner, agreement = majority(accepted)
        lineage = {"teacher": {"url": config.teacher.url, "model": config.teacher.model,
                               "fingerprint": winner.fingerprint},
                   "template_sha256": template_sha256, "prompt": number, "samples": config.samples,
                   "agreement": agreement, "passed": len(checks), "rejected_samples": len(refused)}
        labeled.append({"messages": system + prompt + [{"role": "assistant", "content": winner.text}],
                        "metadata": {"distill": lineage}})
        for other in dict.fromkeys(r["text"] for r in refused):  # each distinct rejected answer once
            pairs.append({"input": {"messages": system + prompt},
                          "preferred_output": [{"role": "assistant", "content": winner.text}],
                          "non_preferred_output": [{"role": "assistant", "content": other}]})
    for name, rows in ((LABELED, labeled), (FAILURES, failures), (REJECTED, rejected), (PAIRS, pairs)):
        _write_lines(config.out / name, rows)
    summary = {"prompts": len(prompts), "labeled": len(labeled), "failed": len(failures) - unasked,
               "not_asked": unasked, "rejected": len(rejected), "pairs": len(pairs), "complete": not failures,
               "teacher": config.teacher.model,
               "template_sha256": template_sha256, "usage": teacher.usage.report(config.teacher),
               "out": str(config.out)}
    (config.out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _write_lines(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
