"""Serving throughput: hone's continuously batched, mixed-adapter server against one-at-a-time `generate`.

4 LoRA adapters (hone's default LoRA shape, random non-zero B) on SmolLM2-135M-Instruct. `hone serve` runs
in its own process, as in production; 16 concurrent clients, spread over the 4 adapters, send the same
requests over a real socket with the OpenAI SDK. The anchor serves those requests one at a time with
plain transformers `generate` on a PeftModel (`set_adapter` per request) in this process, with the CPU
thread count that is fastest for it (probed in the same run), while no server is running. Every request
generates exactly `--max-tokens` tokens (`ignore_eos`, and `min_new_tokens` for the anchor), so both sides do
the same work. Then the per-token latency of a lone adapter request against a lone base request on the
server. Then the ablation: the per-token latency of one long adapter reply with every speed switch on, and
on a second server with one switch off at a time. Prints one JSON line.

`--device cuda` runs the server and the anchor on the first GPU (no thread probing there); the default is the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

MODEL = "smollm2-135m-instruct"
ADAPTERS = [f"specialist-{i}" for i in range(4)]
LATENCY_REPEATS = 3
# the server's speed switches (ServeConfig keys), each on by default
SWITCHES = ["incremental_detokenize", "merge_single_adapter"]
QUESTIONS = [
    "My order arrived damaged. What should I do?", "How do I reset my password?",
    "Can I change the delivery address after paying?", "Why was my card charged twice?",
    "Write a short apology for a late delivery.", "What is your refund policy for opened items?",
    "Summarise this ticket: customer cannot log in after the update.", "Is there a student discount?",
]


def make_adapters(folder: Path) -> dict[str, Path]:
    """Run directories for ADAPTERS: hone's default LoRA (r 16, alpha 32, all linear layers), random B."""
    from peft import LoraConfig, get_peft_model

    from hone.models import load_model
    from hone.train.config import LoraConfig as HoneLora

    defaults = HoneLora()
    runs = {}
    for seed, name in enumerate(ADAPTERS):
        torch.manual_seed(seed)
        lora = LoraConfig(r=defaults.r, lora_alpha=defaults.alpha, target_modules=defaults.target_modules)
        model = get_peft_model(load_model(MODEL), lora)
        for parameter_name, parameter in model.named_parameters():
            if "lora_B" in parameter_name:
                torch.nn.init.normal_(parameter, std=0.02)
        run = folder / name
        model.save_pretrained(run / "adapter")
        (run / "config.yaml").write_text(yaml.safe_dump({"base_model": MODEL}))
        runs[name] = run
    return runs


@dataclass(frozen=True)
class Sizes:
    """How much work each part does (the command line's size flags)."""

    clients: int = 16
    requests_per_client: int = 2
    max_tokens: int = 64
    ablation_tokens: int = 256  # long enough for a cost that grows with the reply's length to show


def workload(sizes: Sizes) -> list[tuple[int, str, list[dict]]]:
    """(client, adapter, messages) for every request; client c uses adapter c % 4."""
    return [(client, ADAPTERS[client % len(ADAPTERS)],
             [{"role": "user", "content": QUESTIONS[(client + turn * 3) % len(QUESTIONS)]}])
            for client in range(sizes.clients) for turn in range(sizes.requests_per_client)]


class OneAtATime:
    """The anchor: each request alone through `generate` on a PeftModel holding all four adapters."""

    def __init__(self, runs: dict[str, Path], max_tokens: int, device: str):
        from hone.models import frozen_dtype, load_model, load_tokenizer
        from hone.models.finetuned import attach_adapter

        self.tokenizer = load_tokenizer(MODEL)
        self.device = device
        model = load_model(MODEL, dtype=frozen_dtype(device), device=device)
        for name, run in runs.items():
            model = attach_adapter(model, run / "adapter", MODEL, name=name)
        self.model = model.eval()
        self.max_tokens = max_tokens
        self.seconds, self.tokens, self.texts = 0.0, 0, {}

    def fastest_threads(self, jobs) -> int:
        """The CPU thread count (1 or all cores) at which `generate` runs these requests fastest."""
        timings = {}
        for threads in sorted({1, os.cpu_count() or 1}):
            torch.set_num_threads(threads)
            started = time.perf_counter()
            self.serve(jobs, [0, 1], record=False)
            timings[threads] = time.perf_counter() - started
        best = min(timings, key=timings.get)
        torch.set_num_threads(best)
        return best

    def serve(self, jobs, indices: list[int], record: bool = True) -> None:
        from hone.data.render import render_prompt

        started = time.perf_counter()
        with torch.inference_mode():
            for index in indices:
                _, adapter, messages = jobs[index]
                self.model.set_adapter(adapter)
                ids = torch.tensor([render_prompt(self.tokenizer, messages)], device=self.device)
                out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                          max_new_tokens=self.max_tokens, min_new_tokens=self.max_tokens,
                                          pad_token_id=self.tokenizer.pad_token_id)
                new = out[0, ids.shape[1]:]
                if record:
                    self.tokens += len(new)
                    self.texts[index] = self.tokenizer.decode(new, skip_special_tokens=True)
        if record:
            self.seconds += time.perf_counter() - started

    def result(self) -> dict:
        return {"seconds": round(self.seconds, 2), "tokens": self.tokens,
                "tokens_per_s": round(self.tokens / self.seconds, 2),
                "texts": [self.texts[i] for i in range(len(self.texts))]}


class Served:
    """`hone serve` in its own process on a free 127.0.0.1 port, as it runs in production."""

    def __init__(self, config: Path):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.command = [sys.executable, "-m", "hone", "serve", "--config", str(config), "--port", str(self.port)]
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> str:
        import httpx

        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"hone serve exited with code {self.process.returncode}")
            try:
                if httpx.get(self.url.removesuffix("/v1") + "/health", timeout=2).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                time.sleep(0.2)
        raise SystemExit("hone serve did not become ready within 300 s")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


async def concurrent_clients(url: str, jobs, sizes: Sizes) -> dict:
    """`sizes.clients` clients at once, each sending its requests one after another."""
    from openai import AsyncOpenAI

    sdk = AsyncOpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600)
    texts: dict[int, str] = {}

    async def client(number: int) -> int:
        tokens = 0
        for index, (owner, adapter, messages) in enumerate(jobs):
            if owner != number:
                continue
            reply = await sdk.chat.completions.create(model=adapter, messages=messages, max_tokens=sizes.max_tokens,
                                                      temperature=0, extra_body={"ignore_eos": True})
            tokens += reply.usage.completion_tokens
            texts[index] = reply.choices[0].message.content
        return tokens

    started = time.perf_counter()
    tokens = sum(await asyncio.gather(*[client(c) for c in range(sizes.clients)]))
    seconds = time.perf_counter() - started
    await sdk.close()  # in this event loop, before asyncio.run closes it
    return {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 2),
            "texts": [texts[i] for i in range(len(jobs))]}


async def per_token_latency(url: str, model: str, max_tokens: int) -> float:
    """Seconds between tokens of one streamed request on an otherwise idle server."""
    from openai import AsyncOpenAI

    first = last = None
    tokens = 0
    async with AsyncOpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600) as sdk:  # closed in its loop
        stream = await sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTIONS[0]}],
                                                   max_tokens=max_tokens, temperature=0, stream=True,
                                                   stream_options={"include_usage": True},
                                                   extra_body={"ignore_eos": True})
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                last = time.perf_counter()
                first = first or last
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
    return (last - first) / (tokens - 1)


async def latencies(url: str, max_tokens: int) -> dict[str, float]:
    """Median per-token latency of the base and of an adapter, measured alternately."""
    samples = {"base": [], "adapter": []}
    for _ in range(LATENCY_REPEATS):
        samples["base"].append(await per_token_latency(url, MODEL, max_tokens))
        samples["adapter"].append(await per_token_latency(url, ADAPTERS[0], max_tokens))
    return {kind: statistics.median(values) for kind, values in samples.items()}


async def long_reply_latency(url: str, tokens: int) -> float:
    """Median per-token latency of a long adapter reply, in ms (the ablation's measure)."""
    samples = [await per_token_latency(url, ADAPTERS[0], tokens) for _ in range(LATENCY_REPEATS)]
    return round(statistics.median(samples) * 1000, 2)


def write_config(folder: Path, runs: dict[str, Path], sizes: Sizes, threads: int | None, device: str,
                 off: str | None) -> Path:
    """A serve.yaml for the adapters `runs` on `device`, with every speed switch on except `off`."""
    config = folder / f"serve-{off or 'all-on'}.yaml"
    config.write_text(yaml.safe_dump({
        "base": MODEL, "adapters": {name: str(run) for name, run in runs.items()}, "max_batch": sizes.clients,
        "max_adapters": len(ADAPTERS), "threads": threads, "device": device,
        "database": f"sqlite:///{folder / 'hone.db'}",
        **({off: False} if off else {})}))
    return config


def check_device(device: str) -> None:
    """Stop before any work when CUDA is asked for where there is none."""
    from hone.errors import HoneError
    from hone.models.loading import resolve_device

    try:
        resolve_device(device, "--device")
    except HoneError as error:
        raise SystemExit(f"{error.message}: run it on a GPU machine with a CUDA build of torch, or with "
                         "--device cpu") from None


def main() -> None:
    from hone.models import frozen_dtype

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="Where the server and the anchor run (cuda: the first GPU).")
    parser.add_argument("--server-threads", type=int, default=None,
                        help="CPU threads of `hone serve` (default: PyTorch's choice, as a user gets it)")
    defaults = Sizes()
    parser.add_argument("--clients", type=int, default=defaults.clients, help="Concurrent clients.")
    parser.add_argument("--requests-per-client", type=int, default=defaults.requests_per_client)
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens, help="Tokens of every reply.")
    parser.add_argument("--ablation-tokens", type=int, default=defaults.ablation_tokens,
                        help="Tokens of the ablation's long reply (0: no ablation).")
    args = parser.parse_args()
    check_device(args.device)
    sizes = Sizes(args.clients, args.requests_per_client, args.max_tokens, args.ablation_tokens)
    jobs = workload(sizes)
    half = len(jobs) // 2
    with tempfile.TemporaryDirectory(prefix="hone-serve-bench-") as folder:
        runs = make_adapters(Path(folder))
        config = write_config(Path(folder), runs, sizes, args.server_threads, args.device, off=None)
        anchor = OneAtATime(runs, sizes.max_tokens, args.device)
        anchor_threads = anchor.fastest_threads(jobs) if args.device == "cpu" else None
        # The anchor's two halves bracket hone's run, so a change in the machine's load hits both alike.
        print(f"anchor, first half: one request at a time with transformers generate on {args.device}"
              + (f", {anchor_threads} thread(s)" if anchor_threads else ""), file=sys.stderr)
        anchor.serve(jobs, list(range(half)))
        with Served(config) as url:
            asyncio.run(per_token_latency(url, ADAPTERS[1], sizes.max_tokens))  # warm-up: adapter load, forwards
            print(f"hone serve: {sizes.clients} concurrent clients over {len(ADAPTERS)} adapters ...", file=sys.stderr)
            served = asyncio.run(concurrent_clients(url, jobs, sizes))
            print("per-token latency: base vs adapter ...", file=sys.stderr)
            latency = asyncio.run(latencies(url, sizes.max_tokens))
            ablation = {}
            if sizes.ablation_tokens:
                ablation["all_on"] = asyncio.run(long_reply_latency(url, sizes.ablation_tokens))
        print("anchor, second half ...", file=sys.stderr)
        anchor.serve(jobs, list(range(half, len(jobs))))
        for switch in SWITCHES if sizes.ablation_tokens else []:
            print(f"ablation: {switch} off ...", file=sys.stderr)
            with Served(write_config(Path(folder), runs, sizes, args.server_threads, args.device, off=switch)) as url:
                asyncio.run(per_token_latency(url, ADAPTERS[0], sizes.max_tokens))  # warm-up
                ablation[f"{switch}_off"] = asyncio.run(long_reply_latency(url, sizes.ablation_tokens))
    anchor = anchor.result()
    same = sum(a == b for a, b in zip(anchor.pop("texts"), served.pop("texts"), strict=True))
    overhead = latency["adapter"] / latency["base"] - 1
    gpu = {"gpu": torch.cuda.get_device_name(0)} if args.device == "cuda" else {}
    print(json.dumps({
        "benchmark": "serve_throughput", "model": MODEL, "device": args.device, **gpu, "adapters": len(ADAPTERS),
        "clients": sizes.clients, "requests": len(jobs), "max_tokens": sizes.max_tokens,
        "dtype": str(frozen_dtype(args.device)),
        "anchor_threads": anchor_threads, "server_threads": args.server_threads or "pytorch default",
        "anchor_one_at_a_time": anchor, "hone_concurrent": served,
        "speedup": round(served["tokens_per_s"] / anchor["tokens_per_s"], 2), "target_speedup": 6.0,
        "latency_ms_per_token": {kind: round(value * 1000, 2) for kind, value in latency.items()},
        "adapter_latency_overhead": round(overhead, 4), "target_overhead": 0.10,
        "greedy_replies_equal_to_anchor": f"{same}/{len(jobs)}",
        "ablation_ms_per_token": {"tokens": sizes.ablation_tokens, **ablation},
    }))


if __name__ == "__main__":
    main()
