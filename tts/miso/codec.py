"""Mimi, the audio codec of a Sesame-CSM-style TTS: 24 kHz mono <-> 32 RVQ codebooks at 12.5 Hz.

A thin wrapper around transformers' ``MimiModel`` that adds what a speaking pipeline needs and
transformers does not have: input checks with readable errors, a typed loader whose failure
says what to download, and a streaming decoder. The streaming decoder turns a few frames of
codes at a time into audio whose concatenation equals a one-shot decode of all the codes, so
playback can start after the first frame instead of after the whole utterance.

Plain torch + transformers: nothing here knows about pipecat.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import MimiConfig, MimiModel
from transformers.cache_utils import DynamicCache
from transformers.models.mimi.modeling_mimi import (
    MimiConv1d,
    MimiConvTranspose1d,
    MimiResnetBlock,
    MimiTransformerModel,
)

from tts.miso.moshi_mimi import load_moshi_mimi

__all__ = ["CodecNotFoundError", "MimiCodec", "MimiStreamingDecoder"]

DEFAULT_HUB_ID = "kyutai/mimi"
# Files a transformers-format Mimi directory must hold to be loadable.
_CONFIG_FILE = "config.json"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


class CodecNotFoundError(FileNotFoundError):
    """The codec's weights are neither at the given path nor obtainable from the hub."""


class MimiCodec:
    """Encode 24 kHz mono audio to Mimi codes and decode codes back, one-shot or streaming.

    Build it with :meth:`load` (real weights) or :meth:`random` (random weights, for tests).
    The wrapped model is shared read-only: any number of streaming decoders may run on one
    codec, each keeping its own state.
    """

    def __init__(self, model: MimiModel, num_codebooks: int = 32):
        available = model.config.num_quantizers
        if not 1 <= num_codebooks <= available:
            raise ValueError(
                f"num_codebooks={num_codebooks} is not usable: the Mimi model has {available} "
                f"quantizers (codebooks), so it must be between 1 and {available}"
            )
        if model.encoder is None or model.decoder is None:
            raise ValueError("MimiCodec needs a Mimi model with both its encoder and its decoder")
        self._model = model.eval()
        self._num_codebooks = num_codebooks
        self._samples_per_frame = _samples_per_frame(model)

    # ----------------------------------------------------------------------------------------
    # construction

    @classmethod
    def load(
        cls,
        source: str | Path = DEFAULT_HUB_ID,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        num_codebooks: int = 32,
    ) -> MimiCodec:
        """Load a transformers-format Mimi from a local directory or a hub id ("kyutai/mimi"),
        or kyutai's own moshi-format file (a ``.safetensors`` file: see :meth:`from_moshi`).

        Raises CodecNotFoundError when ``source`` is neither a directory holding the model, nor
        such a file, nor a hub id that can be fetched (e.g. offline and not in the local cache).
        """
        model = _load_pretrained(source, dtype)
        return cls(model.to(device=device, dtype=dtype), num_codebooks=num_codebooks)

    @classmethod
    def from_moshi(
        cls,
        source: str | Path | Mapping[str, torch.Tensor],
        config: MimiConfig | dict | None = None,
        num_codebooks: int = 32,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> MimiCodec:
        """kyutai's own Mimi weights in moshi's format: the file the reference MisoTTS / CSM
        loads (``tokenizer-e351c8d8-checkpoint125.safetensors``), or its state dict. ``config``
        (a MimiConfig, or overrides of it as for :meth:`random`) is kyutai's Mimi unless given.
        See tts/miso/moshi_mimi.py."""
        if isinstance(config, dict):
            config = MimiConfig(**config)
        model = load_moshi_mimi(source, config, dtype)
        return cls(model.to(device=device, dtype=dtype), num_codebooks=num_codebooks)

    @classmethod
    def random(
        cls,
        config_overrides: dict | None = None,
        seed: int = 0,
        num_codebooks: int = 32,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> MimiCodec:
        """A Mimi with random weights: kyutai/mimi's architecture (``MimiConfig()`` defaults)
        with ``config_overrides`` applied. The same seed gives the same weights."""
        config = MimiConfig(**(config_overrides or {}))
        # A private RNG stream, so building a test codec neither depends on nor disturbs the
        # caller's global random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MimiModel(config)
            _randomize_codebooks(model)
        return cls(model.to(device=device, dtype=dtype), num_codebooks=num_codebooks)

    # ----------------------------------------------------------------------------------------
    # properties

    @property
    def model(self) -> MimiModel:
        return self._model

    @property
    def sample_rate(self) -> int:
        return int(self._model.config.sampling_rate)

    @property
    def samples_per_frame(self) -> int:
        return self._samples_per_frame

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.samples_per_frame

    @property
    def num_codebooks(self) -> int:
        return self._num_codebooks

    @property
    def codebook_size(self) -> int:
        return int(self._model.config.codebook_size)

    @property
    def device(self) -> torch.device:
        return next(self._model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self._model.parameters()).dtype

    # ----------------------------------------------------------------------------------------
    # encode / decode

    @torch.inference_mode()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """Codes ``(num_codebooks, frames)`` (int64) of a 1-D float waveform at ``sample_rate``
        in [-1, 1]; ``frames`` is ``ceil(len(audio) / samples_per_frame)`` (the last frame is
        zero-padded)."""
        waveform = self._checked_audio(audio)
        # As the reference (kyutai's moshi) does: zero-pad the waveform to a whole frame
        # first. transformers' encoder would otherwise pad inside each convolution, and the
        # last, partial frame of every captured user turn would get other codes.
        partial = waveform.shape[0] % self.samples_per_frame
        if partial:
            waveform = torch.nn.functional.pad(waveform, (0, self.samples_per_frame - partial))
        batch = waveform.to(device=self.device, dtype=self.dtype)[None, None, :]
        output = self._model.encode(batch, num_quantizers=self._num_codebooks)
        return output.audio_codes[0]

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """A 1-D waveform of ``frames * samples_per_frame`` samples from codes ``(K, frames)``.

        ``K`` may be below ``num_codebooks``: only the first K codebooks are summed, which is
        coarser audio for less work upstream (fewer codebooks to generate). Zero frames
        decode to an empty waveform.
        """
        codes = self._checked_codes(codes)
        if codes.shape[1] == 0:
            return torch.zeros(0, device=self.device, dtype=self.dtype)
        audio = self._model.decode(codes[None]).audio_values
        return audio[0, 0]

    def streaming_decoder(self) -> MimiStreamingDecoder:
        """A fresh decoder for one utterance, fed a few frames of codes at a time."""
        return MimiStreamingDecoder(self)

    # ----------------------------------------------------------------------------------------
    # input checks

    def _checked_audio(self, audio: torch.Tensor) -> torch.Tensor:
        if not isinstance(audio, torch.Tensor):
            audio = torch.as_tensor(audio)
        if audio.dim() != 1:
            raise ValueError(
                f"audio must be mono 1-D (samples,), got shape {tuple(audio.shape)}; "
                "mix stereo down to mono first"
            )
        if audio.numel() == 0:
            raise ValueError("audio is empty: there is nothing to encode")
        if not audio.is_floating_point():
            raise ValueError(
                f"audio must be a float waveform in [-1, 1], got dtype {audio.dtype}; "
                "divide int16 PCM by 32768 first"
            )
        if not bool(torch.isfinite(audio).all()):
            bad = int((~torch.isfinite(audio)).sum())
            raise ValueError(f"audio contains {bad} non-finite samples (NaN or inf)")
        return audio

    def _checked_codes(self, codes: torch.Tensor) -> torch.Tensor:
        if not isinstance(codes, torch.Tensor):
            codes = torch.as_tensor(codes)
        if codes.dim() != 2:
            raise ValueError(
                f"codes must be 2-D (codebooks, frames), got shape {tuple(codes.shape)}"
            )
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"codes must be an integer tensor, got dtype {codes.dtype}")
        num_books = codes.shape[0]
        if not 1 <= num_books <= self._num_codebooks:
            raise ValueError(
                f"codes have {num_books} codebooks; expected between 1 and {self._num_codebooks}"
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}), got values from "
                f"{int(codes.min())} to {int(codes.max())}"
            )
        return codes.to(device=self.device, dtype=torch.long)


class MimiStreamingDecoder:
    """Decodes one utterance's codes chunk by chunk, any chunk size, with no added latency.

    Each :meth:`decode` call returns exactly ``frames * samples_per_frame`` samples, and the
    concatenated outputs equal ``MimiCodec.decode`` of all the codes at once. Mimi's decoder is
    causal, so every sample is final once its frame is in; the state carried between calls is:

    * the key/value cache of the decoder transformer (bounded by its sliding window),
    * the last ``(kernel - 1) * dilation`` inputs of every causal conv (its left context),
    * the overlapping tail of every transposed conv's output (overlap-add).
    """

    def __init__(self, codec: MimiCodec):
        self._codec = codec
        decoder = codec.model.decoder
        if decoder.upsample is not None:
            self._upsample = _StreamingConvTranspose1d(decoder.upsample)
        else:
            self._upsample = None
        self._transformer = _StreamingTransformer(decoder.decoder_transformer)
        self._seanet = [_streaming_step(layer) for layer in decoder.decoder_seanet.layers]
        self._frames_decoded = 0

    @property
    def frames_decoded(self) -> int:
        return self._frames_decoded

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """The next ``frames * samples_per_frame`` samples (1-D) for codes ``(K, frames)``."""
        codes = self._codec._checked_codes(codes)
        if codes.shape[1] == 0:
            return torch.zeros(0, device=self._codec.device, dtype=self._codec.dtype)
        # Dequantizing is per frame, so it needs no state.
        hidden = self._codec.model.quantizer.decode(codes[None])
        if self._upsample is not None:
            hidden = self._upsample(hidden)
        hidden = self._transformer(hidden)
        for step in self._seanet:
            hidden = step(hidden)
        self._frames_decoded += codes.shape[1]
        return hidden[0, 0]


# --------------------------------------------------------------------------------------------
# streaming building blocks: each wraps one module of the shared model, reads its weights and
# keeps its own state, so the model itself is never modified.


class _StreamingCausalConv1d:
    """A stride-1 causal ``MimiConv1d`` fed in pieces.

    The one-shot path left-pads the whole signal by ``kernel - 1`` (dilated) samples; here that
    left context is the tail of the previous pieces, starting from the same padding.
    """

    def __init__(self, module: MimiConv1d):
        conv = module.conv
        if not module.causal or conv.stride[0] != 1 or conv.padding[0] != 0:
            raise NotImplementedError(
                "streaming supports causal, stride-1, unpadded MimiConv1d layers only"
            )
        if module.pad_mode not in ("constant", "replicate"):
            raise NotImplementedError(f"streaming does not support pad_mode={module.pad_mode!r}")
        self._conv = conv
        self._pad_mode = module.pad_mode
        self._context_size = conv.dilation[0] * (conv.kernel_size[0] - 1)
        self._context: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._context is None:
            # What the one-shot path pads with: zeros, or the first sample repeated.
            if self._pad_mode == "constant":
                self._context = x.new_zeros(*x.shape[:-1], self._context_size)
            else:
                self._context = x[..., :1].expand(*x.shape[:-1], self._context_size)
        padded = torch.cat([self._context, x], dim=-1)
        self._context = padded[..., padded.shape[-1] - self._context_size :]
        return self._conv(padded)


class _StreamingConvTranspose1d:
    """A causal ``MimiConvTranspose1d`` fed in pieces, by overlap-add.

    n inputs give ``(n - 1) * stride + kernel`` outputs; the first ``n * stride`` are final, the
    last ``kernel - stride`` still miss the contribution of the next inputs. Those are kept as a
    partial and added to the head of the next piece's output. The one-shot path trims exactly
    those ``kernel - stride`` samples off the end of the signal, so the pieces line up with it.
    The bias is added once, to the final samples only, so overlapped samples do not get it twice.
    """

    def __init__(self, module: MimiConvTranspose1d):
        conv = module.conv
        stride, kernel = conv.stride[0], conv.kernel_size[0]
        trimmed_right = module.padding_right
        if (
            module.padding_left != 0
            or trimmed_right != kernel - stride
            or conv.padding[0] != 0
            or conv.output_padding[0] != 0
            or conv.dilation[0] != 1
        ):
            # Trimming on the left (trim_right_ratio < 1, or a non-causal codec) would make
            # the first samples depend on later frames: not streamable without added latency.
            raise NotImplementedError(
                "streaming needs a causal MimiConvTranspose1d that trims only on the right"
            )
        self._conv = conv
        self._stride = stride
        self._overlap = kernel - stride
        self._partial: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        conv = self._conv
        full = F.conv_transpose1d(x, conv.weight, None, conv.stride, groups=conv.groups)
        if self._partial is not None:
            full[..., : self._overlap] += self._partial
        final_length = x.shape[-1] * self._stride
        self._partial = full[..., final_length:]
        final = full[..., :final_length]
        if conv.bias is not None:
            final = final + conv.bias[:, None]
        return final


class _StreamingResnetBlock:
    """A ``MimiResnetBlock`` whose convs keep their own left context."""

    def __init__(self, module: MimiResnetBlock):
        self._branch = [_streaming_step(layer) for layer in module.block]
        self._shortcut = _streaming_step(module.shortcut)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        branch = x
        for step in self._branch:
            branch = step(branch)
        return self._shortcut(x) + branch


class _Pointwise:
    """A layer that looks at one time step at a time (activation, identity): no state."""

    def __init__(self, module: nn.Module):
        self._module = module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._module(x)


_POINTWISE_LAYERS = (nn.ELU, nn.Identity)


def _streaming_step(module: nn.Module):
    if isinstance(module, MimiConv1d):
        return _StreamingCausalConv1d(module)
    if isinstance(module, MimiConvTranspose1d):
        return _StreamingConvTranspose1d(module)
    if isinstance(module, MimiResnetBlock):
        return _StreamingResnetBlock(module)
    if isinstance(module, _POINTWISE_LAYERS):
        return _Pointwise(module)
    raise NotImplementedError(f"no streaming version of {type(module).__name__}")


class _StreamingTransformer:
    """The decoder transformer with a key/value cache carried across pieces.

    The cache is built from the transformer's config, so it keeps only the sliding window
    (``sliding_window - 1`` past steps), which is all the one-shot causal mask lets a step see.
    Positions are counted here and passed explicitly so the rotary embeddings match the
    one-shot path's ``0 .. T-1``.
    """

    def __init__(self, module: MimiTransformerModel):
        self._module = module
        self._cache = DynamicCache(config=module.config)
        self._steps_seen = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        steps = x.shape[-1]
        positions = torch.arange(self._steps_seen, self._steps_seen + steps, device=x.device)
        output = self._module(
            x.transpose(1, 2),
            cache=self._cache,
            use_cache=True,
            position_ids=positions[None],
        )
        self._steps_seen += steps
        return output.last_hidden_state.transpose(1, 2)


# --------------------------------------------------------------------------------------------
# helpers


def _samples_per_frame(model: MimiModel) -> int:
    """Audio samples the decoder makes per frame of codes: the product of its upsampling
    strides (the frame-rate upsample, then each SEANet transposed conv)."""
    decoder = model.decoder
    strides = [
        layer.conv.stride[0]
        for layer in decoder.decoder_seanet.layers
        if isinstance(layer, MimiConvTranspose1d)
    ]
    if decoder.upsample is not None:
        strides.append(decoder.upsample.conv.stride[0])
    return math.prod(strides)


def _randomize_codebooks(model: MimiModel) -> None:
    """Give every RVQ codebook random centroids.

    transformers initializes them to zeros, which would decode every code to the same latent
    and encode everything to code 0, making a random codec useless for tests.
    """
    for codebook_module in model.quantizer.modules():
        if hasattr(codebook_module, "embed_sum") and hasattr(codebook_module, "cluster_usage"):
            with torch.no_grad():
                codebook_module.embed_sum.normal_()
                codebook_module.cluster_usage.fill_(1.0)
            # The centroids are cached lazily from embed_sum; drop any stale copy.
            codebook_module._embed = None


def _looks_like_path(source: str | Path) -> bool:
    if isinstance(source, Path):
        return True
    text = str(source)
    # Hub ids are "name" or "owner/name"; anything else slash-bearing or rooted is a path.
    return (
        text.startswith(("/", "./", "../", "~", "\\"))
        or text.count("/") > 1
        or "\\" in text
        or (len(text) > 1 and text[1] == ":")  # Windows drive letter
    )


def _load_pretrained(source: str | Path, dtype: torch.dtype) -> MimiModel:
    """``MimiModel.from_pretrained`` of a local directory or hub id, with a CodecNotFoundError
    that says what to do when neither holds the model."""
    local = Path(source).expanduser()
    if local.is_file() and local.suffix == ".safetensors":
        return load_moshi_mimi(local, dtype=dtype)
    if local.is_dir():
        if not (local / _CONFIG_FILE).is_file():
            raise CodecNotFoundError(
                f"Mimi codec directory {str(local)!r} has no {_CONFIG_FILE}; it must hold a "
                f"transformers-format Mimi (config.json + model.safetensors), e.g. a download "
                f"of {DEFAULT_HUB_ID}"
            )
        if not any((local / name).is_file() for name in _WEIGHT_FILES):
            raise CodecNotFoundError(
                f"Mimi codec directory {str(local)!r} has {_CONFIG_FILE} but no weights "
                f"(expected one of {', '.join(_WEIGHT_FILES)})"
            )
        # A broken checkpoint here is not "not found": let transformers' own error through.
        return MimiModel.from_pretrained(str(local), dtype=dtype)
    if local.exists() or _looks_like_path(source):
        raise CodecNotFoundError(
            f"Mimi codec not found: {str(source)!r} is neither a directory nor a moshi-format "
            f".safetensors file. Download {DEFAULT_HUB_ID} (e.g. `hf download "
            f"{DEFAULT_HUB_ID} --local-dir <dir>`) and pass that directory"
        )
    hub_id = str(source)
    try:
        return MimiModel.from_pretrained(hub_id, dtype=dtype)
    except OSError as exc:
        # transformers reports every way of not getting the files (offline and not cached,
        # no such repo, malformed id, network down) as an OSError.
        raise CodecNotFoundError(
            f"Mimi codec {hub_id!r} could not be loaded from the Hugging Face hub or its local "
            f"cache (offline, or no such repo). Download {DEFAULT_HUB_ID} while online "
            f"(e.g. `hf download {DEFAULT_HUB_ID}`), or pass the path of a local directory "
            f"holding it. Cause: {exc}"
        ) from exc
