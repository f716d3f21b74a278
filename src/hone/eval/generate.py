"""Greedy generation: batched for evaluation (left-padded, grouped by prompt length), single for chat; replies can be
held to a grammar (JSON, a JSON Schema, tool calls) exactly as `hone serve` holds them."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from hone.data.render import render_prompt
from hone.models.constrained import Constraint, GrammarLogitsProcessor, OutputGrammar, grammar_tokenizer
from hone.models.generation import stop_token_ids


@dataclass
class Generation:
    """One reply: its text, how many tokens were generated, and the seconds until it was ready."""

    text: str
    tokens: int
    seconds: float


def _left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids):] = 1
    return input_ids.to(device), attention_mask.to(device)


def _until_stop(ids: list[int], stop_ids: tuple[int, ...]) -> list[int]:
    """The generated ids before the first stop token (finished rows are padded after it)."""
    return next((ids[:at] for at, token in enumerate(ids) if token in stop_ids), ids)


def grammar_constraints(model, tokenizer, grammars: list[OutputGrammar | None]) -> list[Constraint | None]:
    """A fresh constraint per reply (None: free text), over the model's whole output vocabulary; the grammar ends
    a reply with the tokens that stop generation, as in `hone serve`."""
    if not any(grammars):
        return [None] * len(grammars)
    vocab = grammar_tokenizer(tokenizer, model.get_output_embeddings().weight.shape[0],
                              stop_token_ids(tokenizer, getattr(model, "generation_config", None)))
    return [None if grammar is None else Constraint(grammar, vocab) for grammar in grammars]


def generate_batch(model, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                   streamer=None, grammars: list[OutputGrammar | None] | None = None) -> list[tuple[str, int]]:
    """Greedy replies for prompt token ids in one `generate` call: (stripped text, generated tokens) each.

    Generation stops on the same tokens as in `hone serve` (`stop_token_ids`). With `grammars`, row i's reply is
    held to grammars[i] (None: free) by the constrained decoding `hone serve` applies (hone.models.constrained).
    """
    from transformers import LogitsProcessorList

    stop_ids = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
    input_ids, attention_mask = _left_pad(prompts, tokenizer.pad_token_id, model.device)
    constraints = grammar_constraints(model, tokenizer, grammars or [None] * len(prompts))
    # Left padding: every row's prompt ends at the same column, where the grammar starts.
    processors = LogitsProcessorList([GrammarLogitsProcessor(constraints, input_ids.shape[1], stop_ids)]
                                     if any(constraints) else [])
    with torch.inference_mode():
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                                max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=list(stop_ids), streamer=streamer, logits_processor=processors)
    replies = []
    for row in output[:, input_ids.shape[1]:].tolist():
        new_ids = _until_stop(row, stop_ids)
        replies.append((tokenizer.decode(new_ids, skip_special_tokens=True).strip(), len(new_ids)))
    return replies


def generate_replies(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 16,
                     label: str = "generating", show_progress: bool = True,
                     grammars: list[OutputGrammar | None] | None = None) -> list[Generation]:
    """Greedy replies for many prompts, in input order, with a progress bar on stderr; with `grammars`, prompt i's
    reply is held to grammars[i] (None: free text).

    Prompts are sorted by length before batching so little padding is generated over. An example's
    `seconds` is the wall time of the batch it was in: how long that reply took to arrive.
    """
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    with tqdm(total=len(prompts), desc=label, unit="ex", file=sys.stderr, disable=not show_progress) as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start: start + batch_size]
            began = time.perf_counter()
            replies = generate_batch(model, tokenizer, [prompts[i] for i in batch], max_new_tokens,
                                     grammars=[grammars[i] for i in batch] if grammars else None)
            seconds = time.perf_counter() - began
            for index, (text, tokens) in zip(batch, replies, strict=True):
                results[index] = Generation(text=text, tokens=tokens, seconds=seconds)
            bar.update(len(batch))
    return results


def chat_reply(model, tokenizer, messages: list[dict], max_new_tokens: int = 256,
               stream: bool = False) -> Generation:
    """One greedy assistant reply to `messages`; with `stream`, text is printed to stdout as it comes."""
    from transformers import TextStreamer

    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    began = time.perf_counter()
    [(text, tokens)] = generate_batch(model, tokenizer, [render_prompt(tokenizer, messages)], max_new_tokens,
                                      streamer=streamer)
    return Generation(text=text, tokens=tokens, seconds=time.perf_counter() - began)
