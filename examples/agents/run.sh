#!/usr/bin/env bash
# The agents example end to end: data, validation, LoRA training, evaluation through the server, and the
# openai SDK's tool-calling loop against the fine-tuned router. Run from the repository root:
#     bash examples/agents/run.sh            (PORT=8011 HONE=.venv/bin/hone PYTHON=.venv/bin/python to change)
#     RUN_DIR=runs/agents-router-... bash examples/agents/run.sh   reuses a finished training run
set -euo pipefail
HERE=examples/agents
HONE=${HONE:-.venv/bin/hone}
PYTHON=${PYTHON:-.venv/bin/python}
PORT=${PORT:-8011}
URL=http://127.0.0.1:$PORT/v1

echo "== data"
$PYTHON $HERE/make_data.py
$HONE data validate $HERE/train.jsonl --max-length 640
$HONE data validate $HERE/test.jsonl --max-length 640

echo "== train"
if [ -z "${RUN_DIR:-}" ]; then
  start=$(date +%s)
  RUN_DIR=$($HONE train $HERE/train.yaml | tail -n 1)
  echo "trained $RUN_DIR in $(( $(date +%s) - start )) s"
fi
$PYTHON -c "import json, sys; s = json.load(open(sys.argv[1])); print({k: s[k] for k in ('steps', 'train_seconds', 'wall_seconds', 'tokens_per_s', 'final_train_loss', 'best_eval_loss')})" "$RUN_DIR/summary.json"

echo "== hone eval: base vs fine-tuned, calls constrained vs free (in process)"
$HONE eval $HERE/eval.yaml --adapter "$RUN_DIR" --out "$RUN_DIR/eval"

echo "== serve"
$HONE serve --config $HERE/serve.yaml --adapter router="$RUN_DIR" --port "$PORT" > "$RUN_DIR/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break
  kill -0 $SERVER 2>/dev/null || { cat "$RUN_DIR/serve.log"; exit 1; }
  sleep 1
done

echo "== evaluate: base vs router, constrained (tools) vs plain prompt"
start=$(date +%s)
$PYTHON $HERE/evaluate.py --base-url "$URL" --models base router --data $HERE/test.jsonl \
  --max-tokens 64 --concurrency 16 --out "$RUN_DIR/agent_eval.json"
echo "evaluated in $(( $(date +%s) - start )) s"

echo "== agent loop"
$PYTHON $HERE/agent.py --base-url "$URL" --model router \
  "Hi, where is order 12345?" \
  "The blender from order 23456 arrived broken, I want my money back." \
  "Thanks, that's all."
