"""Structured outputs: what a JSON Schema constraint costs in tokens/s, and what it buys in valid JSON.

`hone serve` runs the bundled SmolLM2-135M-Instruct in its own process. A JSON extraction task (a sentence about
a customer; extract name, city, age and plan as JSON with those keys) is sent by `--clients` concurrent clients,
each sending its requests back to back so the batch stays full:
1. with `response_format` json_schema: the constrained replies, their mean length in tokens;
2. the anchor, the same requests unconstrained (`ignore_eos`, `max_tokens` = that mean length), so both sides run
   the same batch with the same reply lengths. The cost is 1 - constrained tokens/s over unconstrained tokens/s,
   the median of `--pairs` alternating pairs (aim: at most 10%).
Then the share of replies that are valid JSON matching the schema (whole reply, and leniently the first {...} in
it), and the share of fields extracted right, with and without the constraint (greedy, the schema described in the
prompt both times). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from serve_throughput import MODEL, Served, check_device  # noqa: E402  (the serving benchmark's server)

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40}, "city": {"type": "string", "maxLength": 40},
    "age": {"type": "integer", "minimum": 0, "maximum": 130}, "plan": {"enum": ["free", "pro", "team"]}},
    "required": ["name", "city", "age", "plan"], "additionalProperties": False}
NAMES = ["Ada Park", "Omar Haddad", "Lena Vogel", "Ravi Iyer", "Mia Costa", "Tom Baker", "Sara Lind", "Ken Ito"]
CITIES = ["Lisbon", "Denver", "Osaka", "Leeds", "Munich", "Austin", "Lyon", "Perth"]
PLANS = ["free", "pro", "team"]
SENTENCES = ["{name}, {age}, lives in {city} and pays for the {plan} plan.",
             "Customer {name} ({age} years old) from {city} is on our {plan} plan.",
             "The {plan} plan account belongs to {name}, aged {age}, based in {city}."]


def extraction_tasks(count: int, seed: int = 0) -> list[tuple[list[dict], dict]]:
    """(messages, expected fields) for `count` customers described in varied sentences."""
    rng = random.Random(seed)
    tasks = []
    for i in range(count):
        truth = {"name": rng.choice(NAMES), "city": rng.choice(CITIES), "age": rng.randint(18, 90),
                 "plan": rng.choice(PLANS)}
        text = SENTENCES[i % len(SENTENCES)].format(**truth)
        messages = [{"role": "system", "content": "Extract the customer as JSON with the keys name, city, age "
                     "(an integer) and plan (free, pro or team). Answer with the JSON object only."},
                    {"role": "user", "content": text}]
        tasks.append((messages, truth))
    return tasks


def response_format() -> dict:
    return {"type": "json_schema", "json_schema": {"name": "customer", "schema": SCHEMA, "strict": True}}


async def throughput(url: str, tasks, clients: int, constrained: bool, max_tokens: int) -> dict:
    """`clients` clients at once, each sending its share of `tasks` back to back."""
    from openai import AsyncOpenAI

    sdk = AsyncOpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600)
    settings = {"response_format": response_format()} if constrained else {"extra_body": {"ignore_eos": True}}
    lengths: list[int] = []

    async def client(number: int) -> None:
        for messages, _ in tasks[number::clients]:
            reply = await sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens,
                                                      temperature=0, **settings)
            lengths.append(reply.usage.completion_tokens)

    started = time.perf_counter()
    await asyncio.gather(*[client(c) for c in range(clients)])
    seconds = time.perf_counter() - started
    await sdk.close()
    return {"seconds": round(seconds, 2), "tokens": sum(lengths), "tokens_per_s": round(sum(lengths) / seconds, 2),
            "mean_reply_tokens": round(statistics.mean(lengths), 1)}


async def validity(url: str, tasks, constrained: bool) -> dict:
    """Share of replies that parse and match SCHEMA, and of fields equal to the truth, greedy."""
    from openai import AsyncOpenAI

    sdk = AsyncOpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600)
    settings = {"response_format": response_format()} if constrained else {}
    valid = lenient = fields = 0
    for messages, truth in tasks:
        reply = await sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=96, temperature=0,
                                                  **settings)
        text = reply.choices[0].message.content
        answer = _matching(text)
        valid += answer is not None
        answer = answer or _matching(text[text.find("{"):text.rfind("}") + 1])  # e.g. inside a code fence
        if answer is not None:
            lenient += 1
            fields += sum(answer[key] == value for key, value in truth.items())
    await sdk.close()
    return {"valid_json_share": round(valid / len(tasks), 3),
            "valid_json_somewhere_share": round(lenient / len(tasks), 3),
            "fields_right_share": round(fields / (len(tasks) * len(SCHEMA["properties"])), 3)}


def _matching(text: str) -> dict | None:
    """`text` as JSON matching SCHEMA, or None."""
    import jsonschema

    try:
        answer = json.loads(text)
        jsonschema.validate(answer, SCHEMA)
        return answer
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="Concurrent clients (the batch size).")
    parser.add_argument("--requests", type=int, default=48, help="Requests per throughput run.")
    parser.add_argument("--quality-requests", type=int, default=40, help="Requests for the valid-JSON share.")
    parser.add_argument("--pairs", type=int, default=3, help="Alternating constrained/anchor pairs.")
    parser.add_argument("--server-threads", type=int, default=None)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="Where the server runs.")
    args = parser.parse_args()
    check_device(args.device)
    tasks = extraction_tasks(max(args.requests, args.quality_requests))
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "serve.yaml"
        config.write_text(yaml.safe_dump({"base": MODEL, "max_batch": args.clients, "threads": args.server_threads,
                                          "device": args.device, "database": f"sqlite:///{Path(folder) / 'hone.db'}"}))
        with Served(config) as url:
            asyncio.run(throughput(url, tasks[:args.clients], args.clients, True, 96))  # warm-up: grammar tokenizer
            pairs = []
            for _ in range(args.pairs):
                constrained = asyncio.run(throughput(url, tasks[:args.requests], args.clients, True, 96))
                length = max(1, round(constrained["mean_reply_tokens"]))
                anchor = asyncio.run(throughput(url, tasks[:args.requests], args.clients, False, length))
                pairs.append((1 - constrained["tokens_per_s"] / anchor["tokens_per_s"], constrained, anchor))
            cost, constrained, anchor = sorted(pairs, key=lambda pair: pair[0])[len(pairs) // 2]
            with_schema = asyncio.run(validity(url, tasks[:args.quality_requests], True))
            without = asyncio.run(validity(url, tasks[:args.quality_requests], False))
    print(json.dumps({"bench": "structured_outputs", "model": MODEL, "device": args.device, "clients": args.clients,
                      "constrained": constrained, "unconstrained_anchor": anchor,
                      "constraint_cost": round(cost, 3), "pair_costs": [round(pair[0], 3) for pair in pairs],
                      "target_cost": 0.10, "meets_target": cost <= 0.10,
                      "json_extraction": {"with_schema": with_schema, "without_schema": without}}))


if __name__ == "__main__":
    main()
