"""llama.cpp's C API, the part the LLM engine calls, over a prebuilt llama.cpp (so installing
the agent compiles nothing): the library of the `xllamacpp` wheel, or node-llama-cpp's
prebuilt libraries fetched from npm (agent/llm/llama_build.py says which and why).

The structs below follow `include/llama.h` of the llama.cpp that xllamacpp 2026.10.11549
bundles, field for field: a different xllamacpp release may lay them out differently, which
is why pyproject.toml pins that release exactly and `load()` checks it. node-llama-cpp
3.22.1's llama.cpp (its `llama/llama.cpp.info.json`: release v0.5.0) has the same structs
but for one field, `moe_cache_size`, which it does not have yet.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
from ctypes import POINTER, c_bool, c_char_p, c_float, c_int8, c_int32, c_size_t, c_uint32
from ctypes import c_void_p as ptr
from pathlib import Path

from agent.llm.llama_build import Build, choose

XLLAMACPP_VERSION = "2026.10.11549"

token_t = c_int32
pos_t = c_int32
seq_id_t = c_int32


class ModelParams(ctypes.Structure):
    _fields_ = [
        ("devices", ptr),
        ("tensor_buft_overrides", ptr),
        ("n_gpu_layers", c_int32),
        ("split_mode", c_int32),
        ("load_mode", c_int32),
        ("lazy_mode", c_int32),
        ("main_gpu", c_int32),
        ("tensor_split", ptr),
        ("progress_callback", ptr),
        ("progress_callback_user_data", ptr),
        ("kv_overrides", ptr),
        ("vocab_only", c_bool),
        ("check_tensors", c_bool),
        ("use_extra_bufts", c_bool),
        ("no_host", c_bool),
        ("no_alloc", c_bool),
        ("load_mtp", c_bool),
    ]


class ContextParams(ctypes.Structure):
    """xllamacpp's llama_context_params (node-llama-cpp's: ``context_params_type``)."""

    _fields_ = [
        ("n_ctx", c_uint32),
        ("n_batch", c_uint32),
        ("n_ubatch", c_uint32),
        ("n_seq_max", c_uint32),
        ("n_rs_seq", c_uint32),
        ("n_outputs_max", c_uint32),
        ("n_outputs_max_per_seq", c_uint32),
        ("n_threads", c_int32),
        ("n_threads_batch", c_int32),
        ("ctx_type", c_int32),
        ("rope_scaling_type", c_int32),
        ("pooling_type", c_int32),
        ("attention_type", c_int32),
        ("flash_attn_type", c_int32),
        ("rope_freq_base", c_float),
        ("rope_freq_scale", c_float),
        ("yarn_ext_factor", c_float),
        ("yarn_attn_factor", c_float),
        ("yarn_beta_fast", c_float),
        ("yarn_beta_slow", c_float),
        ("yarn_orig_ctx", c_uint32),
        ("defrag_thold", c_float),
        ("cb_eval", ptr),
        ("cb_eval_user_data", ptr),
        ("type_k", c_int32),
        ("type_v", c_int32),
        ("moe_cache_size", c_size_t),
        ("abort_callback", ptr),
        ("abort_callback_data", ptr),
        ("embeddings", c_bool),
        ("offload_kqv", c_bool),
        ("no_perf", c_bool),
        ("op_offload", c_bool),
        ("swa_full", c_bool),
        ("kv_unified", c_bool),
        ("samplers", ptr),
        ("n_samplers", c_size_t),
        ("ctx_other", ptr),
    ]


class ContextParamsWithoutMoeCache(ctypes.Structure):
    _fields_ = [f for f in ContextParams._fields_ if f[0] != "moe_cache_size"]


def context_params_type(build: Build) -> type[ctypes.Structure]:
    return ContextParams if build.moe_cache_size else ContextParamsWithoutMoeCache


class Batch(ctypes.Structure):
    _fields_ = [
        ("n_tokens", c_int32),
        ("token", POINTER(token_t)),
        ("embd", POINTER(c_float)),
        ("pos", POINTER(pos_t)),
        ("n_seq_id", POINTER(c_int32)),
        ("seq_id", POINTER(POINTER(seq_id_t))),
        ("logits", POINTER(c_int8)),
    ]


class SamplerChainParams(ctypes.Structure):
    _fields_ = [("no_perf", c_bool)]


FLASH_ATTN_DISABLED = 0
DEFAULT_SEED = 0xFFFFFFFF

# name: (result type, argument types)
_FUNCTIONS = {
    "llama_backend_init": (None, []),
    "llama_log_set": (None, [ptr, ptr]),
    "llama_model_default_params": (ModelParams, []),
    "llama_context_default_params": (ContextParams, []),
    "llama_sampler_chain_default_params": (SamplerChainParams, []),
    "llama_model_load_from_file": (ptr, [c_char_p, ModelParams]),
    "llama_model_free": (None, [ptr]),
    "llama_init_from_model": (ptr, [ptr, ContextParams]),
    "llama_free": (None, [ptr]),
    "llama_get_memory": (ptr, [ptr]),
    "llama_model_get_vocab": (ptr, [ptr]),
    "llama_model_n_ctx_train": (c_int32, [ptr]),
    "llama_model_meta_count": (c_int32, [ptr]),
    "llama_model_meta_key_by_index": (c_int32, [ptr, c_int32, c_char_p, c_size_t]),
    "llama_model_meta_val_str_by_index": (c_int32, [ptr, c_int32, c_char_p, c_size_t]),
    "llama_memory_seq_rm": (c_bool, [ptr, seq_id_t, pos_t, pos_t]),
    "llama_memory_seq_cp": (None, [ptr, seq_id_t, seq_id_t, pos_t, pos_t]),
    "llama_memory_seq_add": (None, [ptr, seq_id_t, pos_t, pos_t, pos_t]),
    "llama_memory_can_shift": (c_bool, [ptr]),
    "llama_batch_init": (Batch, [c_int32, c_int32, c_int32]),
    "llama_batch_free": (None, [Batch]),
    "llama_decode": (c_int32, [ptr, Batch]),
    "llama_get_logits_ith": (POINTER(c_float), [ptr, c_int32]),
    "llama_vocab_get_text": (c_char_p, [ptr, token_t]),
    "llama_vocab_is_eog": (c_bool, [ptr, token_t]),
    "llama_vocab_bos": (token_t, [ptr]),
    "llama_vocab_eos": (token_t, [ptr]),
    "llama_tokenize": (c_int32, [ptr, c_char_p, c_int32, POINTER(token_t), c_int32, c_bool, c_bool]),
    "llama_token_to_piece": (c_int32, [ptr, token_t, c_char_p, c_int32, c_int32, c_bool]),
    "llama_sampler_chain_init": (ptr, [SamplerChainParams]),
    "llama_sampler_chain_add": (None, [ptr, ptr]),
    "llama_sampler_init_greedy": (ptr, []),
    "llama_sampler_init_dist": (ptr, [c_uint32]),
    "llama_sampler_init_top_k": (ptr, [c_int32]),
    "llama_sampler_init_top_p": (ptr, [c_float, c_size_t]),
    "llama_sampler_init_min_p": (ptr, [c_float, c_size_t]),
    "llama_sampler_init_typical": (ptr, [c_float, c_size_t]),
    "llama_sampler_init_temp": (ptr, [c_float]),
    "llama_sampler_init_dry": (
        ptr,
        [ptr, c_float, c_float, c_int32, c_int32, POINTER(c_char_p), c_size_t],
    ),
    "llama_sampler_accept": (None, [ptr, token_t]),
    "llama_sampler_sample": (token_t, [ptr, ptr, c_int32]),
    "llama_sampler_free": (None, [ptr]),
}

_LOG_CALLBACK = ctypes.CFUNCTYPE(None, c_int32, c_char_p, ptr)
_lib = None


class LlamaLibraryError(RuntimeError):
    """llama.cpp's library is missing or not the release this binding was written for."""


def load(build: str = "auto"):
    """The library of ``build`` (agent/llm/llama_build.BUILDS), its functions typed,
    llama.cpp's logging silenced; loaded once per process, so a later call asking for
    another build is an error."""
    global _lib
    if _lib is not None:
        if build not in ("auto", _lib.build.name):
            raise LlamaLibraryError(
                f"llama.cpp's {_lib.build.name} build is already loaded in this process, "
                f"not {build}'s"
            )
        return _lib
    chosen = choose(build)
    if chosen.name == "xllamacpp":
        installed = importlib.metadata.version("xllamacpp")
        if installed != XLLAMACPP_VERSION:
            raise LlamaLibraryError(
                f"xllamacpp {installed} is installed, but agent/llm/llama_lib.py describes the "
                f"structs of {XLLAMACPP_VERSION}: pip install xllamacpp=={XLLAMACPP_VERSION}"
            )
    try:
        if chosen.ggml is not None:
            # ggml's CPU backends are libraries of their own, one per CPU family: the best
            # one for this CPU is registered before llama.cpp looks for a device.
            ggml = ctypes.CDLL(str(chosen.ggml), mode=ctypes.RTLD_GLOBAL)
            ggml.ggml_backend_load_all_from_path.argtypes = [c_char_p]
            ggml.ggml_backend_load_all_from_path(str(chosen.ggml.parent).encode())
        lib = ctypes.CDLL(str(chosen.library))
    except OSError as e:
        raise LlamaLibraryError(
            f"llama.cpp's library did not load ({e}); it needs the system's libgomp "
            "(apt-get install libgomp1)"
        ) from e
    params = context_params_type(chosen)
    for name, (result, arguments) in _FUNCTIONS.items():
        function = getattr(lib, name)
        function.restype = params if result is ContextParams else result
        function.argtypes = [params if a is ContextParams else a for a in arguments]
    lib.build = chosen
    lib._quiet = _LOG_CALLBACK(lambda level, text, data: None)  # kept alive with the library
    lib.llama_log_set(ctypes.cast(lib._quiet, ptr), None)
    lib.llama_backend_init()
    _lib = lib
    return lib


class Model:
    """A GGUF model's weights and vocabulary."""

    def __init__(self, path: str | Path):
        self.lib = load()
        self.handle = self.lib.llama_model_load_from_file(
            str(path).encode(), self.lib.llama_model_default_params()
        )
        if not self.handle:
            raise LlamaLibraryError(f"llama.cpp could not load the model {path}")
        self.vocab = self.lib.llama_model_get_vocab(self.handle)

    def metadata(self) -> dict[str, str]:
        out = {}
        for i in range(self.lib.llama_model_meta_count(self.handle)):
            out[self._meta(self.lib.llama_model_meta_key_by_index, i)] = self._meta(
                self.lib.llama_model_meta_val_str_by_index, i
            )
        return out

    def _meta(self, read, i: int) -> str:
        size = 256
        while True:
            buffer = ctypes.create_string_buffer(size)
            n = read(self.handle, i, buffer, size)
            if n < size:
                return buffer.raw[: max(n, 0)].decode("utf-8", errors="replace")
            size = n + 1

    def n_ctx_train(self) -> int:
        return self.lib.llama_model_n_ctx_train(self.handle)

    def token_text(self, token: int) -> str:
        text = self.lib.llama_vocab_get_text(self.vocab, token)
        return text.decode("utf-8", errors="replace") if text else ""

    def bos(self) -> int:
        return self.lib.llama_vocab_bos(self.vocab)

    def eos(self) -> int:
        return self.lib.llama_vocab_eos(self.vocab)

    def is_end(self, token: int) -> bool:
        return self.lib.llama_vocab_is_eog(self.vocab, token)

    def tokenize(self, text: bytes, add_bos: bool, special: bool) -> list[int]:
        size = len(text) + 8
        while True:
            tokens = (token_t * size)()
            n = self.lib.llama_tokenize(self.vocab, text, len(text), tokens, size, add_bos, special)
            if n >= 0:
                return list(tokens[:n])
            size = -n

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (part of a UTF-8 character, possibly)."""
        size = 32
        while True:
            buffer = ctypes.create_string_buffer(size)
            n = self.lib.llama_token_to_piece(self.vocab, token, buffer, size, 0, False)
            if n >= 0:
                return buffer.raw[:n]
            size = -n

    def close(self) -> None:
        if self.handle:
            self.lib.llama_model_free(self.handle)
            self.handle = None


class Context:
    """An inference context (KV cache and all) of ``model``."""

    def __init__(self, model: Model, params: ctypes.Structure):
        self.lib = model.lib
        self.handle = self.lib.llama_init_from_model(model.handle, params)
        if not self.handle:
            raise LlamaLibraryError("llama.cpp could not make a context (out of memory?)")
        self.memory = self.lib.llama_get_memory(self.handle)

    def close(self) -> None:
        if self.handle:
            self.lib.llama_free(self.handle)
            self.handle = None


def sampler_chain(*samplers) -> int:
    """A sampler chain of ``samplers`` (each a ``llama_sampler_init_*`` result); free it with
    ``llama_sampler_free``."""
    lib = load()
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    for sampler in samplers:
        lib.llama_sampler_chain_add(chain, sampler)
    return chain
