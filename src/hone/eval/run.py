"""The Python API behind `hone eval`: every candidate answers the same test prompts; replies are scored,
compared with the baseline with confidence intervals, judged, checked for forgetting, and given a verdict.

Local candidates share one copy of the base weights: an adapter is merged in for its own pass and
taken out afterwards, so decoding pays no per-layer LoRA cost and memory holds one model. A full fine-tune
(a run that wrote a whole model) is loaded beside the base as a model of its own.

Test examples with tools are shown with their tool list and scored on their calls (`hone.eval.tool_calls`); a local
candidate's reply is held to the grammar `hone serve` would apply to the same request (`reply_grammar`: the tools'
calls, the candidate's response_format), so eval measures what is served.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from hone.data.render import render_chat, render_prompt, writes_default_tool_calls
from hone.errors import HoneError, RequestError
from hone.eval.config import CandidateConfig, EvalConfig, validate_eval_config
from hone.eval.forgetting import forgetting_summary, score_probes
from hone.eval.generate import Generation, generate_replies, grammar_constraints
from hone.eval.memorization import (
    TrainingNgrams,
    canary_prompts,
    leaked_canaries,
    memorization_summary,
    split_canary,
    training_texts,
)
from hone.eval.metrics import BINARY_METRICS, METRICS, Scorer, aggregate, classification_summary
from hone.eval.prompting import EvalCase, PromptBuilder, load_cases
from hone.eval.report import write_report
from hone.eval.slices import check_slice_fields, slice_report
from hone.eval.stats import is_binary, mcnemar, paired_bootstrap_ci
from hone.eval.verdict import decide, primary_metric
from hone.models import fingerprint, frozen_dtype, load_model, load_tokenizer
from hone.models.constrained import OutputGrammar
from hone.models.constrained import reply_grammar as constrained_reply
from hone.models.finetuned import (
    adapter_fingerprint,
    attach_adapter,
    default_device,
    full_model_dir,
    is_run_dir,
    read_run_dir,
    run_base_model,
)
from hone.models.scoring import example_perplexities

MAX_NEW_TOKENS_CAP = 256


def default_max_new_tokens(tokenizer, references: list[str]) -> int:
    """1.5x the longest reference in tokens, capped at 256: room to answer, no room to ramble forever."""
    longest = max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in references)
    return max(1, min(MAX_NEW_TOKENS_CAP, math.ceil(1.5 * longest)))


@dataclass(frozen=True)
class RunWeights:
    """What a fine-tuned candidate's run directory holds: an adapter for the base, or (method full) a whole model."""

    run_dir: Path
    base: str
    adapter_dir: Path | None = None
    model_dir: Path | None = None


def read_run_weights(run_dir: Path) -> RunWeights:
    """The base and the trained weights of a `hone train` run directory, adapter or whole model."""
    whole = full_model_dir(run_dir) if is_run_dir(run_dir) else None
    if whole is None:
        run = read_run_dir(run_dir)
        return RunWeights(run_dir=run.run_dir, base=run.base, adapter_dir=run.adapter_dir)
    return RunWeights(run_dir=Path(run_dir).resolve(), base=run_base_model(Path(run_dir)), model_dir=whole.resolve())


class LocalModels:
    """The base model with every candidate's adapter attached by name, plus the whole models of full fine-tunes;
    `use(key)` activates one. `adapters` maps each fine-tuned candidate to the key of its weights."""

    def __init__(self, base: str, adapters: dict[str, Path], device: str, models: dict[str, Path] | None = None):
        self.base = base
        self.model = load_model(base, dtype=frozen_dtype(device), device=device)
        self.tokenizer = load_tokenizer(base)
        self.adapters: dict[str, str] = {}
        attached: dict[Path, str] = {}  # candidates sharing an adapter (fine-tuned, fine-tuned+rag) share its copy
        for candidate, adapter_dir in adapters.items():
            if adapter_dir not in attached:
                attached[adapter_dir] = f"adapter{len(attached)}"
                self.model = attach_adapter(self.model, adapter_dir, base, attached[adapter_dir])
            self.adapters[candidate] = attached[adapter_dir]
        self.has_adapters = bool(attached)
        self.whole: dict[str, object] = {}
        loaded: dict[Path, str] = {}
        for candidate, model_dir in (models or {}).items():
            if model_dir not in loaded:
                loaded[model_dir] = f"model{len(loaded)}"
                self.whole[loaded[model_dir]] = load_model(str(model_dir), dtype=frozen_dtype(device),
                                                           device=device).eval()
            self.adapters[candidate] = loaded[model_dir]
        self.model.eval()

    @contextmanager
    def use(self, adapter: str | None):
        """The model as the base (adapters off), with one adapter merged into the weights, or a whole model."""
        if adapter in self.whole:
            yield self.whole[adapter]
        elif not self.has_adapters:
            yield self.model
        elif adapter is None:
            with self.model.disable_adapter():
                yield self.model
        else:
            self.model.set_adapter(adapter)
            self.model.merge_adapter()
            try:
                yield self.model
            finally:
                self.model.unmerge_adapter()


def _reference_examples(tokenizer, prompts: list[list[dict]], cases: list[EvalCase]):
    """Each prompt followed by its reference reply (with its calls), with only the reference's tokens scored."""
    return [render_chat(tokenizer, [{**m, "weight": 0} if m["role"] == "assistant" else m for m in prompt]
                        + [case.answer_turn], case.tools)
            for prompt, case in zip(prompts, cases, strict=True)]


def reply_grammar(candidate: CandidateConfig, case: EvalCase) -> OutputGrammar | None:
    """What a local candidate's reply to `case` is held to: the rule `hone serve` applies to a request with the same
    tools and response_format (`hone.models.constrained.reply_grammar`)."""
    response_format = candidate.response_format
    name = response_format.json_schema.name if response_format and response_format.type == "json_schema" else None
    return constrained_reply(response_format.reply_schema() if response_format else None, name,
                             case.tools if candidate.constrain_tool_calls else None, candidate.tool_choice,
                             case.parallel_tool_calls is not False)


def _check_grammars(model, tokenizer, candidate: CandidateConfig, grammars: list[OutputGrammar | None]) -> None:
    """Refuse, before generating, a schema the constrained decoding cannot enforce, naming the config field."""
    distinct = {grammar.lark: grammar for grammar in grammars if grammar is not None}
    try:
        grammar_constraints(model, tokenizer, list(distinct.values()))
    except RequestError as error:
        field = "response_format" if candidate.response_format else "the test file's tools"
        raise HoneError(f"candidate '{candidate.name}': {field}: {error.message.split(': ', 1)[-1]}",
                        hint="fix the schema" + ("" if candidate.response_format else ", or set "
                                                 "constrain_tool_calls: false for this candidate")) from None


def _local_answers(model, tokenizer, candidate: CandidateConfig, prompts: list[list[dict]], cases: list[EvalCase],
                   settings: EvalConfig, max_new_tokens: int, show_progress: bool) -> dict:
    ids = [render_prompt(tokenizer, prompt, case.tools) for prompt, case in zip(prompts, cases, strict=True)]
    grammars = [reply_grammar(candidate, case) for case in cases]
    _check_grammars(model, tokenizer, candidate, grammars)
    replies = generate_replies(model, tokenizer, ids, max_new_tokens, settings.batch_size, candidate.name,
                               show_progress, grammars=grammars if any(grammars) else None)
    perplexities = (example_perplexities(model, _reference_examples(tokenizer, prompts, cases),
                                         tokenizer.pad_token_id) if settings.metrics.perplexity else None)
    return {"replies": replies, "prompt_tokens": [len(x) for x in ids], "perplexities": perplexities,
            "failures": [], "error": None}


def _endpoint_answers(candidate: CandidateConfig, prompts: list[list[dict]], cases: list[EvalCase], tokenizer,
                      max_new_tokens: int, show_progress: bool) -> dict:
    from hone.eval.endpoint import endpoint_replies, request_fields

    fields = [request_fields(case.tools, case.parallel_tool_calls, candidate.response_format, candidate.tool_choice)
              for case in cases]
    replies, failures, error = endpoint_replies(candidate.endpoint, prompts, max_new_tokens, candidate.name,
                                                show_progress, fields)
    # Counted with the base tokenizer: the endpoint's own tokenizer is unknown, so this is an estimate.
    prompt_tokens = [len(render_prompt(tokenizer, p, case.tools)) if tokenizer else None
                     for p, case in zip(prompts, cases, strict=True)]
    return {"replies": replies, "prompt_tokens": prompt_tokens, "perplexities": None, "failures": failures,
            "error": error}


def _example_scores(scorer: Scorer, reply: Generation | None, case: EvalCase, perplexity: float | None) -> dict:
    if reply is None:
        return dict.fromkeys(METRICS)
    scores = dict.fromkeys(METRICS) | scorer.score(reply.text, case.reference, case.expected_calls)
    return scores | {"judge_score": None, "perplexity": None if perplexity is None else round(perplexity, 3),
                     "output_tokens": reply.tokens, "latency_s": round(reply.seconds, 3)}


def _examples(cases: list[EvalCase], prompts: dict[str, list[list[dict]]], answers: dict[str, dict],
              scorer: Scorer) -> list[dict]:
    examples = []
    for index, case in enumerate(cases):
        outputs = {}
        for name, answer in answers.items():
            reply = answer["replies"][index]
            perplexity = answer["perplexities"][index] if answer["perplexities"] else None
            outputs[name] = {"text": None if reply is None else reply.text,
                             "tokens": None if reply is None else reply.tokens,
                             "prompt_tokens": answer["prompt_tokens"][index],
                             "seconds": None if reply is None else round(reply.seconds, 3),
                             "label": None if reply is None else scorer.label_of(reply.text),
                             "scores": _example_scores(scorer, reply, case, perplexity)}
            if prompts[name][index] != case.prompt:
                outputs[name]["prompt"] = prompts[name][index]  # what k-shot / RAG added
        examples.append({"index": index, "prompt": case.prompt, "reference": case.reference,
                         "reference_label": scorer.label_of(case.reference), "outputs": outputs})
    return examples


def compare(examples: list[dict], baseline: str, candidate: str, seed: int = 0) -> dict[str, dict | None]:
    """Per metric: candidate minus baseline with its paired bootstrap 95% CI, and McNemar's test for
    right/wrong metrics."""
    result = {}
    for name in METRICS:
        pairs = [(e["outputs"][baseline]["scores"][name], e["outputs"][candidate]["scores"][name])
                 for e in examples]
        base, other = [b for b, _ in pairs], [c for _, c in pairs]
        result[name] = paired_bootstrap_ci(base, other, seed=seed, geometric=name == "perplexity")
        both = [(b, c) for b, c in pairs if b is not None and c is not None]
        if result[name] and name in BINARY_METRICS and is_binary([v for pair in both for v in pair]):
            result[name]["mcnemar"] = mcnemar([b == 100 for b, _ in both], [c == 100 for _, c in both])
    return result


def _resolve_models(settings: EvalConfig, candidates: list[CandidateConfig]) -> tuple[str | None, dict, dict, dict]:
    """The base model name, each adapter candidate's adapter folder, each full fine-tune's model folder, and the
    report's model descriptions."""
    runs = {c.name: read_run_weights(c.adapter) for c in candidates if c.adapter is not None}
    base = settings.base or next((run.base for run in runs.values()), None)
    needs_base = any(c.endpoint is None for c in candidates)
    for name, run in runs.items():
        if run.base != base:
            weights = "adapter" if run.adapter_dir else "model"
            raise HoneError(f"candidate '{name}': its {weights} was trained from '{run.base}', but the base model "
                            f"is '{base}'", hint="compare runs of one base per eval, or set base to theirs")
    models = {}
    if needs_base:
        models["base"] = {"name": base, "fingerprint": fingerprint(base)}
    for name, run in runs.items():
        if run.adapter_dir:
            models[name] = {"run_dir": str(run.run_dir), "adapter": str(run.adapter_dir), "base": base,
                            "adapter_fingerprint": adapter_fingerprint(run.adapter_dir)}
        else:
            models[name] = {"run_dir": str(run.run_dir), "model": str(run.model_dir), "base": base,
                            "model_fingerprint": fingerprint(str(run.model_dir))}
    for candidate in candidates:
        if candidate.endpoint:
            models[candidate.name] = {"endpoint": candidate.endpoint.url, "model": candidate.endpoint.model}
    adapters = {n: r.adapter_dir for n, r in runs.items() if r.adapter_dir}
    whole = {n: r.model_dir for n, r in runs.items() if r.model_dir}
    return (base if needs_base else None), adapters, whole, models


def _classification(settings: EvalConfig, examples: list[dict], names: list[str], warnings: list[str]) -> dict | None:
    labels = settings.metrics.labels
    if not labels:
        return None
    expected = [e["reference_label"] for e in examples]
    if all(label is None for label in expected):
        warnings.append(f"no reference matches any label of metrics.labels {labels}: accuracy was not computed; "
                        "check the label set (or metrics.label_field)")
    result = {}
    for name in names:
        predicted = [e["outputs"][name]["label"] for e in examples]
        result[name] = classification_summary(predicted, expected, labels)
        answered = [e for e in examples if e["outputs"][name]["text"] is not None]
        if answered and all(e["outputs"][name]["label"] is None for e in answered):
            warnings.append(f"no reply of {name} contains any label of {labels}: its accuracy is 0 because the "
                            "label could not be found, check metrics.labels or metrics.label_field")
    return result


def _timings(answers: dict[str, dict], seconds: dict[str, float]) -> dict:
    timings = {}
    for name, answer in answers.items():
        replies = [r for r in answer["replies"] if r is not None]
        tokens = sum(r.tokens for r in replies)
        prompt_tokens = [t for t in answer["prompt_tokens"] if t is not None]
        timings[name] = {"seconds": round(seconds[name], 3), "tokens": tokens,
                         "tokens_per_s": round(tokens / seconds[name], 1) if seconds[name] > 0 else None,
                         "prompt_tokens_mean": round(mean(prompt_tokens), 1) if prompt_tokens else None,
                         "latency_s_mean": round(mean(r.seconds for r in replies), 3) if replies else None}
    return timings


def _run_judge(settings: EvalConfig, examples: list[dict], names: list[str], baseline: str,
               show_progress: bool) -> dict:
    from hone.eval.judge import JudgeItem, judge_candidates

    items = [JudgeItem(prompt=e["prompt"], reference=e["reference"],
                       replies={n: e["outputs"][n]["text"] or "" for n in names}) for e in examples]
    result = judge_candidates(settings.judge, items, names, baseline if baseline in names else names[0],
                              show_progress)
    for name, rubric in (result.get("rubric") or {}).items():
        for example, score in zip(examples, rubric["scores"], strict=False):
            example["outputs"][name]["scores"]["judge_score"] = score
    return result


def _passes(candidates: list[CandidateConfig], local: LocalModels) -> list[tuple[str | None, list]]:
    """Local candidates grouped by the adapter they use, base-model ones first: the base weights are used
    as loaded before any adapter is merged in, and each adapter is merged once."""
    groups: dict[str | None, list[CandidateConfig]] = {None: []}
    for candidate in candidates:
        if candidate.endpoint is None:
            groups.setdefault(local.adapters.get(candidate.name), []).append(candidate)
    return list(groups.items())


def _canary_tokens(canaries: list[str]) -> int:
    """Room for the longest secret half: a token holds at least one character."""
    return min(MAX_NEW_TOKENS_CAP, 16 + max(len(split_canary(c)[1]) for c in canaries))


def _answer_all(settings: EvalConfig, candidates: list[CandidateConfig], cases: list[EvalCase],
                train: list[EvalCase] | None, local: LocalModels | None, new_tokens: int,
                show_progress: bool) -> tuple[dict, dict, dict, dict, dict]:
    """Every candidate's prompts, answers and wall seconds, the forgetting probe scores of the base and
    of each adapter (when forgetting is measured), and each candidate's replies to the canary prompts."""
    builder = PromptBuilder(train, settings.docs, settings.seed)
    prompts = {c.name: builder.build(c, cases) for c in candidates}
    canaries = settings.memorization.canaries if settings.memorization.enabled and train else []
    canary_messages = canary_prompts(canaries, settings.memorization.canary_prompts)
    answers, seconds, probes, canary_replies = {}, {}, {}, {}
    measure_forgetting = settings.forgetting.enabled and local is not None and bool(local.adapters)
    for adapter, group in _passes(candidates, local) if local else []:
        with local.use(adapter) as model:
            for candidate in group:
                began = time.perf_counter()
                answers[candidate.name] = _local_answers(model, local.tokenizer, candidate, prompts[candidate.name],
                                                         cases, settings, new_tokens, show_progress)
                seconds[candidate.name] = time.perf_counter() - began
            if measure_forgetting:
                key = "base" if adapter is None else group[0].name
                probes[key] = score_probes(model, local.tokenizer, settings.forgetting, settings.batch_size,
                                           f"probes: {key}", show_progress)
            if canary_messages and group:  # the canary prompts are bare, so candidates sharing weights share them
                replies = generate_replies(model, local.tokenizer,
                                           [render_prompt(local.tokenizer, m) for m in canary_messages],
                                           _canary_tokens(canaries), settings.batch_size, "canaries", show_progress)
                canary_replies |= {candidate.name: [r.text for r in replies] for candidate in group}
    for candidate in (c for c in candidates if c.endpoint):
        began = time.perf_counter()
        answers[candidate.name] = _endpoint_answers(candidate, prompts[candidate.name], cases,
                                                    local.tokenizer if local else None, new_tokens, show_progress)
        seconds[candidate.name] = time.perf_counter() - began
        if canary_messages:
            from hone.eval.endpoint import endpoint_replies

            replies, _, _ = endpoint_replies(candidate.endpoint, canary_messages, _canary_tokens(canaries),
                                             f"{candidate.name}: canaries", show_progress)
            canary_replies[candidate.name] = [r.text if r else None for r in replies]
    return prompts, {c.name: answers[c.name] for c in candidates}, seconds, probes, canary_replies


def _slices(settings: EvalConfig, cases: list[EvalCase], examples: list[dict], names: list[str],
            warnings: list[str]) -> dict | None:
    """Every metric per slice of the configured metadata fields, and each candidate's largest gap."""
    if not settings.slices.fields:
        return None
    metric = primary_metric(settings, [case.reference for case in cases]).name
    scores = {name: [e["outputs"][name]["scores"] for e in examples] for name in names}
    found, notes = slice_report(scores, [case.metadata for case in cases], settings.slices.fields,
                                settings.slices.min_examples, metric, settings.data, settings.seed)
    warnings += notes
    return found


def _absent_canaries(canaries: list[str], train: list[EvalCase]) -> list[int]:
    """1-based positions of the canaries that no training message contains (case and whitespace aside)."""
    wanted = {i: " ".join(c.lower().split()) for i, c in enumerate(canaries)}
    for text in training_texts(train) if wanted else ():
        found = " ".join(text.lower().split())
        wanted = {i: c for i, c in wanted.items() if c not in found}
        if not wanted:
            break
    return [i + 1 for i in wanted]


def _memorization(settings: EvalConfig, train: list[EvalCase] | None, examples: list[dict],
                  prompts: dict[str, list[list[dict]]], canary_replies: dict[str, list], names: list[str],
                  warnings: list[str]) -> dict | None:
    """Verbatim training runs in each candidate's replies, and the canaries each candidate gave back."""
    config = settings.memorization
    if not config.enabled:
        return None
    if train is None:
        warnings.append("memorization: no training file (train) was given, so memorization was not measured")
        return None
    index = TrainingNgrams(training_texts(train), config.ngram)
    replies = {name: [e["outputs"][name]["text"] for e in examples] for name in names}
    absent = _absent_canaries(config.canaries, train)
    if absent:
        warnings.append(f"memorization: canary {', '.join(map(str, absent))} (in the order given) is not in the "
                        "training file, so its check tests nothing")
    leaked = {name: len(leaked_canaries([*replies[name], *canary_replies.get(name, [])], config.canaries))
              for name in names} if config.canaries else {}
    warnings += [f"memorization: {name} gave back {count} of the {len(config.canaries)} planted canaries"
                 for name, count in leaked.items() if count]
    return {"ngram": config.ngram, "candidates": memorization_summary(index, replies, prompts, settings.seed),
            "canaries": {"planted": len(config.canaries), "leaked": leaked}}


def _shown_config(settings: EvalConfig) -> dict:
    """The settings for the report, with the canaries' text left out: the report travels further than the data."""
    config = settings.model_dump(mode="json")
    config["memorization"]["canaries"] = [f"(canary {i + 1})" for i in range(len(settings.memorization.canaries))]
    return config


def _measured_as(probes: dict, local: LocalModels) -> dict[str, str]:
    """Each fine-tuned candidate -> the probe entry scored with its adapter (named after its first user)."""
    return {candidate: next(key for key in probes if key != "base" and local.adapters[key] == adapter)
            for candidate, adapter in local.adapters.items()}


def _tool_format_warnings(candidates: list[CandidateConfig], cases: list[EvalCase], tokenizer) -> list[str]:
    """Unconstrained local candidates on tool examples whose chat template writes calls in a format of its own,
    which the tool-call metrics (hone's default format) would not read."""
    if tokenizer is None or not any(case.tools for case in cases) or writes_default_tool_calls(tokenizer):
        return []
    return [f"{c.name}: the model's chat template writes tool calls in its own format and constrain_tool_calls is "
            "false, so the tool-call metrics, which read hone's default <tool_call> format, may miss its calls"
            for c in candidates if c.endpoint is None and not c.constrain_tool_calls]


def _failure_warnings(answers: dict[str, dict], examples: int) -> list[str]:
    warnings = []
    for name, answer in answers.items():
        if answer["error"]:
            warnings.append(f"{name}: {answer['error']}")
        elif answer["failures"]:
            warnings.append(f"{name}: {len(answer['failures'])} of {examples} requests failed; those examples "
                            "have no scores for it")
    return warnings


def evaluate(settings: EvalConfig | None = None, *, device: str | None = None, show_progress: bool = True,
             **fields) -> dict:
    """Run the evaluation `settings` describes (or build it from keyword `fields`, as in the YAML file) and
    write OUT/report.json and OUT/report.html. Returns the report, including its `paths`.
    """
    settings = settings or validate_eval_config({k: v for k, v in fields.items() if v is not None})
    started = time.perf_counter()
    device = device or default_device()
    candidates = settings.resolved_candidates()
    names = [c.name for c in candidates]
    cases = load_cases(settings.data, settings.limit)
    check_slice_fields([case.metadata for case in cases], settings.slices.fields, settings.data)
    train = load_cases(settings.train, what="training file") if settings.train else None
    base, adapters, whole, model_info = _resolve_models(settings, candidates)
    scorer = Scorer(settings.metrics, settings.reply_schema(), settings.asks_json())
    local = LocalModels(base, adapters, device, whole) if base else None
    tokenizer = local.tokenizer if local else None
    load_seconds = time.perf_counter() - started
    references = [case.reference for case in cases]
    new_tokens = settings.max_new_tokens or (default_max_new_tokens(tokenizer, references) if tokenizer else 256)

    prompts, answers, seconds, probes, canary_replies = _answer_all(settings, candidates, cases, train, local,
                                                                    new_tokens, show_progress)
    warnings = _failure_warnings(answers, len(cases)) + _tool_format_warnings(candidates, cases, tokenizer)
    examples = _examples(cases, prompts, answers, scorer)
    baseline = settings.verdict.baseline if settings.verdict.baseline in names else names[0]
    if baseline != settings.verdict.baseline:
        warnings.append(f"verdict.baseline '{settings.verdict.baseline}' is not a candidate: every comparison is "
                        f"against '{baseline}', the first candidate")
    judge = _run_judge(settings, examples, names, baseline, show_progress) if settings.judge else None
    if judge and judge["status"] != "ok":
        warnings.append(f"judge: {judge['message'] or judge['status']}")
    forgetting = forgetting_summary(probes, settings.forgetting, _measured_as(probes, local)) if probes else None

    config = _shown_config(settings) | {"base": base, "max_new_tokens": new_tokens, "examples": len(cases),
                                        "device": device,
                                        "dtype": str(local.model.dtype).removeprefix("torch.") if local else None}
    report = {
        "config": config,
        "candidates": [{"name": c.name, "kind": c.kind} for c in candidates],
        "baseline": baseline,
        "models": model_info,
        "aggregates": {name: aggregate([e["outputs"][name]["scores"] for e in examples]) for name in names},
        "comparisons": {name: compare(examples, baseline, name, settings.seed) for name in names if name != baseline},
        "classification": _classification(settings, examples, names, warnings),
        "judge": judge,
        "forgetting": forgetting,
        "slices": _slices(settings, cases, examples, names, warnings),
        "memorization": _memorization(settings, train, examples, prompts, canary_replies, names, warnings),
        "timings": _timings(answers, seconds) | {"load_s": round(load_seconds, 3),
                                                 "total_s": round(time.perf_counter() - started, 3)},
        "failures": {name: answers[name]["failures"] for name in names if answers[name]["failures"]},
        "warnings": warnings,
        "examples": examples,
    }
    report["verdict"] = decide(report, settings, candidates)
    report["paths"] = {name: str(path) for name, path in write_report(report, settings.out).items()}
    return report
