"""Make `raw_export.jsonl`: the demo tickets as a helpdesk export really looks, for `hone data prepare`.

Starting from train.jsonl it adds what raw company data carries: customer signatures with email
addresses, phone numbers and card or bank details, a legal disclaimer under agent replies, odd spacing
and decomposed Unicode, re-sent tickets (exact duplicates), lightly edited copies (near duplicates),
tickets copied from the test set (contamination), and a few broken lines from a bad export.

Standard library only and deterministic: the same seed gives a byte-identical file.

    python examples/support_tickets/make_raw.py [--seed 11]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SIGNATURES = [
    "--\nMaria Lopez\nmaria.lopez@northwind-mail.com\n+1 (415) 555-0132",
    "--\nSent from my phone. Call me back on 020 7946 0958",
    "--\nBest, J. Okafor | j.okafor@brightpost.net",
    "--\nCard on file: 4111 1111 1111 1111, please refund to that one",
    "--\nRefund to IBAN DE89370400440532013000 if easier",
    "--\nmy router is 192.168.17.42 if that helps",
]
DISCLAIMER = ("\n\nCONFIDENTIALITY NOTICE: This message is intended only for the addressee and may contain "
              "privileged information.")
BROKEN = ['{"messages": [{"role": "user", "content": "My kettle is',
          '{"messages": [{"role": "customer", "content": "where is my order"}]}',
          '{"messages": []}']


def messy(text: str, rng: random.Random) -> str:
    """Export noise: doubled spaces, trailing blanks, a decomposed accent."""
    if rng.random() < 0.3:
        text = text.replace(" ", "  ", 2) + "   "
    if rng.random() < 0.1:
        text = text.replace("e", "e\u0301", 1)
    return text


def raw_rows(train: list[dict], test: list[dict], rng: random.Random) -> list[str]:
    lines = []
    for row in train:
        system, user, reply = row["messages"]
        user = dict(user, content=messy(user["content"], rng))
        if rng.random() < 0.25:
            user["content"] += "\n\n" + rng.choice(SIGNATURES)
        reply = dict(reply, content=reply["content"] + (DISCLAIMER if rng.random() < 0.3 else ""))
        lines.append(json.dumps({"messages": [system, user, reply]}))
        if rng.random() < 0.06:
            lines.append(lines[-1])  # the ticket was re-sent
        if rng.random() < 0.06:
            edited = dict(user, content=user["content"].replace(".", "!", 1) + " Thanks.")
            lines.append(json.dumps({"messages": [system, edited, reply]}))
    for row in rng.sample(test, 4):  # tickets that also ended up in the test set
        lines.insert(rng.randrange(len(lines)), json.dumps(row))
    for broken in BROKEN:
        lines.insert(rng.randrange(len(lines)), broken)
    return lines


def read_jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (HERE / name).read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    lines = raw_rows(read_jsonl("train.jsonl"), read_jsonl("test.jsonl"), random.Random(args.seed))
    (HERE / "raw_export.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} lines to {HERE / 'raw_export.jsonl'}")


if __name__ == "__main__":
    main()
