#!/usr/bin/env bash
# The quickstart: prepare the data, fine-tune SmolLM2-135M-Instruct with LoRA, prove whether it was worth it.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=examples/support_tickets

echo "== 1/6 models on this machine"
hone models list

echo "== 2/6 check the training data"
hone data validate "$DATA/train.jsonl"

echo "== 3/6 prepare a versioned dataset: the tickets plus 20% replay of general examples (keeps general skills)"
PREP_LOG=$(mktemp)
# Under $HONE_HOME/datasets the dashboard lists it (with its curation report) for the project named here.
hone data prepare "$DATA/replay.yaml" --out "${HONE_HOME:-$HOME/.cache/hone}/datasets/support-tickets-replay" \
    --project default | tee "$PREP_LOG"
DATASET=$(tail -n 1 "$PREP_LOG")

echo "== 4/6 fine-tune with LoRA"
TRAIN_LOG=$(mktemp)
hone train "$DATA/demo.yaml" --set "data.train=$DATASET" --set data.eval_fraction=0 | tee "$TRAIN_LOG"
RUN_DIR=$(tail -n 1 "$TRAIN_LOG")

echo "== 5/6 is it worth it? base, 3-shot, RAG, fine-tuned and fine-tuned + RAG, plus forgetting probes"
hone eval "$DATA/eval.yaml" --adapter "$RUN_DIR" --out "$RUN_DIR/eval"

echo "== 6/6 the same fine-tune as a team runs it: hone serve, the OpenAI SDK's jobs API, the dashboard"
PORT="${HONE_DEMO_PORT:-8000}"
SERVE_LOG="$RUN_DIR/serve.log"
hone serve --port "$PORT" > "$SERVE_LOG" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 120); do
    python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health')" 2> /dev/null && break
    kill -0 "$SERVER_PID" 2> /dev/null || { cat "$SERVE_LOG"; exit 1; }
    sleep 1
done
python examples/demo_service.py "http://127.0.0.1:$PORT/v1" "$DATASET" || { kill "$SERVER_PID"; exit 1; }

echo
echo "adapter: $RUN_DIR/adapter (PEFT format)"
echo "report:  $RUN_DIR/eval/report.html"
echo "try it:  hone chat --model $RUN_DIR \"Hi, my Kestrel Kettle from order ORD-12345 arrived with a cracked lid and I need it replaced ASAP.\""
echo
echo "dashboard: http://127.0.0.1:$PORT/  (the demo's dataset, job, evaluation and model; server log: $SERVE_LOG)"
echo "the server keeps running for the dashboard; stop it with: kill $SERVER_PID"
