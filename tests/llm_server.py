"""An OpenAI-compatible LLM server for the fault tests: llama.cpp's own server (as the
xllamacpp wheel carries it in-process) on a loopback port, until killed.

    python tests/llm_server.py MODEL.gguf PORT
"""

import sys
import threading

import xllamacpp

params = xllamacpp.CommonParams()
params.model.path = sys.argv[1]
params.port = int(sys.argv[2])
params.hostnames = ["127.0.0.1"]
params.n_ctx = 2048
params.n_parallel = 1
params.cpuparams.n_threads = 1
params.cpuparams_batch.n_threads = 1
server = xllamacpp.Server(params)
threading.Event().wait()
