"""Curation throughput: 100,000 chat examples through ingest + clean + exact + near-duplicate removal,
and PII scanning in examples/s, each against the straightforward use of the same library in the same run.

Anchors: near-duplicate removal with datasketch's defaults (SHA-1 per shingle, one `update` call each),
and Presidio scanning every turn with no pre-check. Prints one JSON line.

    python bench/curate_throughput.py [--examples 100000] [--pii-examples 3000] [--anchor-examples 20000]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

WORDS = ("account invoice refund shipping parcel password login upgrade export billing seat webhook token "
         "report dashboard payment card renewal trial plan storage backup mobile desktop browser error page "
         "timeout sync calendar contact address order delivery warehouse tracking label return exchange "
         "discount coupon subscription license team admin role permission audit security email notification").split()
PII_SAMPLES = ("reach me at jordan.miles@example.com", "call +1 (212) 555-0187 after five",
               "card 4111 1111 1111 1111 was charged twice", "wire it to GB82WEST12345698765432",
               "the server at 10.20.30.40 rejects me", "my SSN is 536-22-1234")


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def synthetic_rows(count: int, seed: int = 0) -> list[dict]:
    """Support-style conversations: ~8% exact copies and ~8% small edits of earlier rows."""
    rng = random.Random(seed)
    rows: list[dict] = []
    for index in range(count):
        roll = rng.random()
        if rows and roll < 0.08:
            rows.append(rng.choice(rows))
            continue
        if rows and roll < 0.16:
            source = rng.choice(rows)["messages"]
            words = source[1]["content"].split()
            words[rng.randrange(len(words))] = rng.choice(WORDS)
            rows.append({"messages": [source[0], {"role": "assistant", "content": " ".join(words)}]})
            continue
        user = f"Ticket {index}: " + " ".join(sentence(rng, rng.randint(8, 16)) for _ in range(2))
        reply = " ".join(sentence(rng, rng.randint(10, 18)) for _ in range(3))
        rows.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]})
    return rows


def with_pii(rows: list[dict], seed: int = 1) -> list[dict]:
    """A copy where one example in four carries a piece of personal data."""
    rng = random.Random(seed)
    out = []
    for row in rows:
        user = row["messages"][0]["content"]
        if rng.random() < 0.25:
            user = f"{user} Also, {rng.choice(PII_SAMPLES)}."
        out.append({"messages": [{"role": "user", "content": user}, row["messages"][1]]})
    return out


def timed(step):
    began = time.perf_counter()
    result = step()
    return result, time.perf_counter() - began


def curate_pipeline(path: Path) -> dict:
    from hone.data.curate.clean import CleanSettings, clean_examples
    from hone.data.curate.dedup import exact_dedup, near_dedup
    from hone.data.formats import read_dataset

    dataset, ingest_s = timed(lambda: read_dataset(path))
    (cleaned, _), clean_s = timed(lambda: clean_examples(list(dataset.examples), CleanSettings()))
    (unique, _), exact_s = timed(lambda: exact_dedup(cleaned))
    (kept, _), near_s = timed(lambda: near_dedup(unique))
    return {"seconds": {"ingest": round(ingest_s, 2), "clean": round(clean_s, 2), "exact": round(exact_s, 2),
                        "near": round(near_s, 2), "total": round(ingest_s + clean_s + exact_s + near_s, 2)},
            "counts": {"ingested": len(dataset.examples), "after_exact": len(unique), "after_near": len(kept)},
            "near_per_s": round(len(unique) / near_s, 1)}


def anchor_near_dedup(examples) -> dict:
    """datasketch used as its README shows: MinHash() with SHA-1, update() per shingle, MinHashLSH."""
    from datasketch import MinHash, MinHashLSH

    from hone.data.curate.dedup import shingles
    from hone.data.curate.steps import example_text

    began = time.perf_counter()
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    kept = 0
    for index, example in enumerate(examples):
        minhash = MinHash(num_perm=128)
        for shingle in shingles(example_text(example), 5):
            minhash.update(shingle)
        if not any(True for _ in lsh.query(minhash)):
            lsh.insert(index, minhash)
            kept += 1
    seconds = time.perf_counter() - began
    return {"examples": len(examples), "kept": kept, "seconds": round(seconds, 2),
            "per_s": round(len(examples) / seconds, 1)}


def pii_throughput(examples) -> dict:
    from hone.data.curate.pii import PiiSettings, Scrubber, scrub_examples

    Scrubber(PiiSettings())  # build the analyzer outside the timing
    (_, report), seconds = timed(lambda: scrub_examples(examples, PiiSettings()))
    scrubber = Scrubber(PiiSettings())
    began = time.perf_counter()
    for example in examples:  # anchor: every turn through Presidio, no pre-check
        for message in example.messages:
            scrubber.analyzer.analyze(text=message["content"], language="en", entities=scrubber.entities,
                                      score_threshold=0.35)
    anchor_seconds = time.perf_counter() - began
    return {"examples": len(examples), "found": {k: v for k, v in report.counts.items() if k.isupper()},
            "per_s": round(len(examples) / seconds, 1),
            "anchor_per_s": round(len(examples) / anchor_seconds, 1),
            "speedup": round(anchor_seconds / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--pii-examples", type=int, default=3_000)
    parser.add_argument("--anchor-examples", type=int, default=20_000)
    args = parser.parse_args()

    from hone.data.formats import read_dataset

    rows = synthetic_rows(args.examples)
    with tempfile.TemporaryDirectory(prefix="hone-bench-") as tmp:
        path = Path(tmp) / "raw.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        pipeline = curate_pipeline(path)
        sample = Path(tmp) / "sample.jsonl"
        sample.write_text("".join(json.dumps(row) + "\n" for row in rows[: args.anchor_examples]))
        from hone.data.curate.dedup import near_dedup

        sample_examples = list(read_dataset(sample).examples)
        _, ours_s = timed(lambda: near_dedup(sample_examples))
        anchor = anchor_near_dedup(sample_examples)
        pii_file = Path(tmp) / "pii.jsonl"
        pii_file.write_text("".join(json.dumps(r) + "\n" for r in with_pii(rows[: args.pii_examples])))
        pii = pii_throughput(list(read_dataset(pii_file).examples))
    print(json.dumps({
        "bench": "curate_throughput", "examples": args.examples, **pipeline,
        "target_seconds": 60, "meets_target": pipeline["seconds"]["total"] <= 60,
        "near_dedup_vs_datasketch_defaults": {"examples": len(sample_examples), "hone_seconds": round(ours_s, 2),
                                              "anchor": anchor, "speedup": round(anchor["seconds"] / ours_s, 2)},
        "pii": pii,
    }))


if __name__ == "__main__":
    main()
