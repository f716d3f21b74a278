"""The demo's fine-tune as a team runs it: through `hone serve`'s OpenAI-compatible jobs API with the official
`openai` SDK (only `base_url` changes), so the dashboard shows the dataset, the job, its evaluation and the model.

Usage: python examples/demo_service.py BASE_URL DATASET_DIR   (DATASET_DIR from `hone data prepare`)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import openai

# The settings of examples/support_tickets/demo.yaml, as the jobs API takes them.
HONE_SETTINGS = {
    "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
    "training": {"lr": 2.0e-3, "scheduler": "cosine", "warmup_ratio": 0.05, "eval_every": 20, "seed": 42},
    "data": {"max_length": 256},
    "replay": None,  # the prepared dataset already holds its 20% replay examples
    "eval": {"max_examples": 40, "probe_limit": 30},
}
TERMINAL = {"succeeded", "failed", "cancelled"}


def main(base_url: str, dataset: Path) -> int:
    # A server without keys (the demo's) takes any key; one with keys needs yours in $HONE_API_KEY.
    client = openai.OpenAI(base_url=base_url, api_key=os.environ.get("HONE_API_KEY", "hone-demo"), max_retries=2)
    with (dataset / "train.jsonl").open("rb") as train, (dataset / "val.jsonl").open("rb") as val:
        training = client.files.create(file=("support-tickets-train.jsonl", train), purpose="fine-tune")
        validation = client.files.create(file=("support-tickets-val.jsonl", val), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="smollm2-135m-instruct", training_file=training.id, validation_file=validation.id, suffix="support",
        hyperparameters={"n_epochs": 1, "batch_size": 8}, extra_body={"hone": HONE_SETTINGS})
    print(f"job {job.id} created from {training.id} (train) and {validation.id} (validation)", flush=True)
    printed: set[str] = set()
    while job.status not in TERMINAL:
        time.sleep(2)
        job = client.fine_tuning.jobs.retrieve(job.id)
        for event in reversed(client.fine_tuning.jobs.list_events(job.id, limit=50).data):
            if event.id not in printed:
                printed.add(event.id)
                print(f"  {event.message}", flush=True)
    if job.status != "succeeded":
        print(f"job {job.id} ended {job.status}: {job.error.message if job.error else ''}", file=sys.stderr)
        return 1
    print(f"fine-tuned model: {job.fine_tuned_model}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
