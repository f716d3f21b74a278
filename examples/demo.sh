#!/usr/bin/env bash
# The quickstart: prepare the data, fine-tune SmolLM2-135M-Instruct with LoRA, prove whether it was worth it.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=examples/support_tickets

echo "== 1/5 models on this machine"
hone models list

echo "== 2/5 check the training data"
hone data validate "$DATA/train.jsonl"

echo "== 3/5 prepare a versioned dataset: the tickets plus 20% replay of general examples (keeps general skills)"
PREP_LOG=$(mktemp)
hone data prepare "$DATA/replay.yaml" | tee "$PREP_LOG"
DATASET=$(tail -n 1 "$PREP_LOG")

echo "== 4/5 fine-tune with LoRA"
TRAIN_LOG=$(mktemp)
hone train "$DATA/demo.yaml" --set "data.train=$DATASET" --set data.eval_fraction=0 | tee "$TRAIN_LOG"
RUN_DIR=$(tail -n 1 "$TRAIN_LOG")

echo "== 5/5 is it worth it? base, 3-shot, RAG, fine-tuned and fine-tuned + RAG, plus forgetting probes"
hone eval "$DATA/eval.yaml" --adapter "$RUN_DIR" --out "$RUN_DIR/eval"

echo
echo "adapter: $RUN_DIR/adapter (PEFT format)"
echo "report:  $RUN_DIR/eval/report.html"
echo "try it:  hone chat --model $RUN_DIR \"Hi, my Kestrel Kettle from order ORD-12345 arrived with a cracked lid and I need it replaced ASAP.\""
