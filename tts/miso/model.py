"""The MisoTTS network: a backbone over time and a depth decoder over RVQ codebooks.

Same architecture and numerics as the public MisoTTS / Sesame CSM reference (which builds
on torchtune); written on plain torch so it needs neither torchtune nor Pipecat.

A frame of input has ``audio_num_codebooks + 1`` columns: one token per codebook and a
text token last. Each column is embedded (audio codebook ``k`` uses rows
``k * audio_vocab_size ...`` of one shared table), masked, and the columns are summed into
one backbone position. The backbone predicts codebook 0 of the next audio frame from its
last position; the depth decoder then runs over codebooks 1..N-1 of that frame, starting
from the backbone state and codebook 0's embedding.

Module and parameter names follow the reference's state dict (``backbone.layers.N.attn.
q_proj.weight``, ``...sa_norm.scale``, ``...mlp.w1.weight``...) so release checkpoints
load as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tts.miso.flavors import TransformerSizes


@dataclass(frozen=True)
class MisoConfig:
    backbone: TransformerSizes
    decoder: TransformerSizes
    text_vocab_size: int = 128_256
    audio_vocab_size: int = 2051
    audio_num_codebooks: int = 32


# ---------------------------------------------------------------------------------------
# Transformer pieces (torchtune conventions)


def llama3_scaled_frequencies(
    head_dim: int,
    base: float,
    scale_factor: float,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
    old_context_len: int = 8192,
) -> torch.Tensor:
    """Rotary frequencies with Llama-3's long-context scaling: low frequencies are divided
    by ``scale_factor``, high ones kept, the band between blended. float32, as torchtune
    computes them (the same float32 operations in the same order, so results are bit-equal).
    """
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / freqs
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * freqs / scale_factor + smooth * freqs
    scaled = torch.where(wavelen > low_freq_wavelen, freqs / scale_factor, blended)
    return torch.where(wavelen < high_freq_wavelen, freqs, scaled)


def rope_table(sizes: TransformerSizes, device: torch.device, dtype: torch.dtype,
               length: int | None = None) -> torch.Tensor:
    """(length, head_dim/2, 2) cos/sin per position (``max_seq_len`` of them by default),
    computed in float32.

    The values are rounded to the model's dtype (then used in float32): the reference's
    table is a buffer that ``model.to(bfloat16)`` rounds, so a bf16 model was run, and
    presumably trained, with bf16-rounded angles. Rounding the same way keeps bf16 outputs
    identical to the reference's; in float32 it changes nothing."""
    theta = llama3_scaled_frequencies(sizes.head_dim, sizes.rope_base, sizes.scale_factor)
    positions = torch.arange(sizes.max_seq_len if length is None else length, dtype=theta.dtype)
    angles = torch.einsum("i,j->ij", positions, theta).float()
    table = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    return table.to(dtype).float().to(device)


def apply_rope(x: torch.Tensor, table: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (batch, seq, heads, head_dim) by position. Like torchtune (and Meta's
    Llama) the rotated pairs are adjacent elements (0,1), (2,3)..., not the two halves."""
    cos_sin = table[input_pos].unsqueeze(2)  # (batch, seq, 1, head_dim/2, 2)
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos, sin = cos_sin[..., 0], cos_sin[..., 1]
    rotated = torch.stack(
        [pairs[..., 0] * cos - pairs[..., 1] * sin, pairs[..., 1] * cos + pairs[..., 0] * sin],
        dim=-1,
    )
    return rotated.flatten(3).type_as(x)


# Rows up to which a CPU linear layer multiplies weight-first (see Linear).
_WEIGHT_FIRST_MAX_ROWS = 16


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict names) that, on the CPU and for a few
    rows, computes ``weight @ x.T``: a frame step of a few callers is a few rows, and MKL's
    small-row product against a transposed weight runs 2-5x slower than reading the weight
    once, weight-first (measured here: 4 rows x 2048->8192 26 ms vs 7 ms; 1 row 6 ms)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if x.device.type != "cpu" or rows > _WEIGHT_FIRST_MAX_ROWS:
            return F.linear(x, self.weight, self.bias)
        out = (self.weight @ x.reshape(rows, -1).T).T
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], -1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 even for bf16 weights, then scale, as the reference does.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.scale).type_as(x)


class KVCache(nn.Module):
    """Fixed-size key/value store, one row per sequence, each written at its own positions:
    shapes never change, so a step has no host synchronisation and compiles to one graph."""

    def __init__(self, batch_size: int, num_kv_heads: int, max_seq_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        super().__init__()
        shape = (batch_size, num_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def reset(self) -> None:
        self.k.zero_()
        self.v.zero_()

    def update(self, rows: slice, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write ``k``/``v`` (b, kv_heads, s, head_dim) into cache rows ``rows`` (b of them),
        row i at its positions ``input_pos[i]`` (b, s); those rows' caches (views)."""
        cache_k, cache_v = self.k[rows], self.v[rows]
        row = torch.arange(k.shape[0], device=k.device)[:, None]  # (b, 1)
        # Indexing (row, :, pos) addresses (b, s, heads, head_dim).
        cache_k[row, :, input_pos] = k.transpose(1, 2)
        cache_v[row, :, input_pos] = v.transpose(1, 2)
        return cache_k, cache_v


class Attention(nn.Module):
    def __init__(self, sizes: TransformerSizes):
        super().__init__()
        self.num_heads = sizes.num_heads
        self.num_kv_heads = sizes.num_kv_heads
        self.head_dim = sizes.head_dim
        self.q_proj = Linear(sizes.embed_dim, sizes.num_heads * sizes.head_dim, bias=False)
        self.k_proj = Linear(sizes.embed_dim, sizes.num_kv_heads * sizes.head_dim, bias=False)
        self.v_proj = Linear(sizes.embed_dim, sizes.num_kv_heads * sizes.head_dim, bias=False)
        self.output_proj = Linear(sizes.num_heads * sizes.head_dim, sizes.embed_dim,
                                     bias=False)
        self.kv_cache: KVCache | None = None

    def forward(self, x, rope, input_pos, mask, rows: slice):
        b, s, _ = x.shape
        q = apply_rope(self.q_proj(x).view(b, s, self.num_heads, self.head_dim), rope, input_pos)
        k = apply_rope(self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim), rope,
                       input_pos)
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(rows, input_pos, k, v)
        # Query head h reads key/value head h // group. The group's query heads are laid
        # along the query axis of their key/value head, (b, kv_heads, group * s, head_dim),
        # so the cache is read as it is, never copied out per query head.
        group = self.num_heads // self.num_kv_heads
        q = q.reshape(b, self.num_kv_heads, group * s, self.head_dim)
        mask = mask[:, None, None, :, :].expand(-1, -1, group, -1, -1).flatten(2, 3)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.view(b, self.num_heads, s, self.head_dim)
        return self.output_proj(out.transpose(1, 2).contiguous().view(b, s, -1))


class FeedForward(nn.Module):
    def __init__(self, sizes: TransformerSizes):
        super().__init__()
        self.w1 = Linear(sizes.embed_dim, sizes.intermediate_dim, bias=False)
        self.w2 = Linear(sizes.intermediate_dim, sizes.embed_dim, bias=False)
        self.w3 = Linear(sizes.embed_dim, sizes.intermediate_dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerLayer(nn.Module):
    def __init__(self, sizes: TransformerSizes):
        super().__init__()
        self.sa_norm = RMSNorm(sizes.embed_dim, sizes.norm_eps)
        self.attn = Attention(sizes)
        self.mlp_norm = RMSNorm(sizes.embed_dim, sizes.norm_eps)
        self.mlp = FeedForward(sizes)

    def forward(self, x, rope, input_pos, mask, rows):
        h = x + self.attn(self.sa_norm(x), rope, input_pos, mask, rows)
        return h + self.mlp(self.mlp_norm(h))


class Transformer(nn.Module):
    """A Llama-3.2 decoder stack without token embedding or output projection (MisoTTS
    feeds it summed frame embeddings and reads its hidden states)."""

    def __init__(self, sizes: TransformerSizes):
        super().__init__()
        self.sizes = sizes
        self.layers = nn.ModuleList(TransformerLayer(sizes) for _ in range(sizes.num_layers))
        self.norm = RMSNorm(sizes.embed_dim, sizes.norm_eps)
        self.rope: torch.Tensor | None = None

    def setup_caches(self, batch_size: int, cache_len: int, dtype, device) -> None:
        self.rope = rope_table(self.sizes, device, dtype, length=cache_len)
        for layer in self.layers:
            layer.attn.kv_cache = KVCache(batch_size, self.sizes.num_kv_heads, cache_len,
                                          self.sizes.head_dim, dtype, device)

    def caches_are_enabled(self) -> bool:
        return self.rope is not None

    def reset_caches(self) -> None:
        for layer in self.layers:
            if layer.attn.kv_cache is not None:
                layer.attn.kv_cache.reset()

    def forward(self, h, input_pos, mask, rows: slice | None = None):
        """``h`` (b, seq, dim) at positions ``input_pos`` (b, seq) of cache rows ``rows``
        (the first b by default); ``mask`` (b, seq, cache_len): which cached positions each
        query may see."""
        rows = slice(0, h.shape[0]) if rows is None else rows
        for layer in self.layers:
            h = layer(h, self.rope, input_pos, mask, rows)
        return self.norm(h)


# ---------------------------------------------------------------------------------------
# Sampling


def sample_topk(logits: torch.Tensor, topk: int | torch.Tensor,
                temperature: float | torch.Tensor,
                generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row from the ``topk`` most likely at ``temperature``: (batch, 1) int.

    ``topk`` and ``temperature`` are numbers, or (batch, 1) tensors for a value per row.
    Drawn as argmax(p / Exp(1)) rather than torch.multinomial, which synchronises with the
    host on CUDA; same distribution, and topk=1 is exactly greedy. ``noise`` (batch, vocab)
    is the Exp(1) draw, when the caller makes it (one generator per row)."""
    logits = logits / temperature
    if isinstance(topk, torch.Tensor):
        kth_best = logits.sort(dim=-1, descending=True).values.gather(-1, topk - 1)
    else:
        kth_best = torch.topk(logits, topk)[0][..., -1, None]
    logits = logits.masked_fill(logits < kth_best, -float("inf"))
    probs = F.softmax(F.log_softmax(logits, dim=-1), dim=-1)
    if noise is None:
        noise = torch.empty_like(probs).exponential_(1, generator=generator)
    return torch.argmax(probs / noise, dim=-1, keepdim=True).to(torch.int)


# ---------------------------------------------------------------------------------------
# The model


class MisoModel(nn.Module):
    def __init__(self, config: MisoConfig):
        super().__init__()
        self.config = config
        backbone_dim, decoder_dim = config.backbone.embed_dim, config.decoder.embed_dim
        self.backbone = Transformer(config.backbone)
        self.decoder = Transformer(config.decoder)
        self.text_embeddings = nn.Embedding(config.text_vocab_size, backbone_dim)
        self.audio_embeddings = nn.Embedding(
            config.audio_vocab_size * config.audio_num_codebooks, backbone_dim
        )
        self.projection = Linear(backbone_dim, decoder_dim, bias=False)
        self.codebook0_head = Linear(backbone_dim, config.audio_vocab_size, bias=False)
        self.audio_head = nn.Parameter(
            torch.empty(config.audio_num_codebooks - 1, decoder_dim, config.audio_vocab_size)
        )
        self._decoder_step = self._decoder_step_eager

    # -- caches ------------------------------------------------------------------------

    @property
    def parking_position(self) -> int:
        """A backbone cache position past every real one (``max_seq_len``): rows that take
        no part in a batched step are fed a dummy frame there, which no real query reads."""
        return self.config.backbone.max_seq_len

    def setup_caches(self, batch_size: int) -> None:
        """Allocate key/value caches (and rotary tables) for ``batch_size`` rows on the
        model's device and dtype. Call after the model is on its final device/dtype."""
        param = next(self.parameters())
        dtype, device = param.dtype, param.device
        num_codebooks = self.config.audio_num_codebooks
        cache_len = self.config.backbone.max_seq_len + 1  # + the parking position
        self.backbone.setup_caches(batch_size, cache_len, dtype, device)
        # The depth decoder only ever sees one frame: its state then codebooks 0..N-2.
        self.decoder.setup_caches(batch_size, num_codebooks, dtype, device)
        self.backbone_causal_mask = torch.tril(
            torch.ones(cache_len, cache_len, dtype=torch.bool, device=device)
        )
        self.decoder_causal_mask = torch.tril(
            torch.ones(num_codebooks, num_codebooks, dtype=torch.bool, device=device)
        )
        self._decoder_positions = torch.arange(num_codebooks, device=device)
        self.cache_rows = batch_size

    def reset_caches(self) -> None:
        self.backbone.reset_caches()
        self.decoder.reset_caches()

    def compile_decoder_step(self, **compile_options) -> None:
        """torch.compile the per-codebook decoder step, which runs N-1 times per frame and
        dominates small-batch generation. Shapes are static, so it compiles once per shape."""
        self._decoder_step = torch.compile(self._decoder_step_eager, **compile_options)

    # -- embeddings --------------------------------------------------------------------

    def _embed_audio(self, codebook: int, tokens: torch.Tensor) -> torch.Tensor:
        return self.audio_embeddings(tokens + codebook * self.config.audio_vocab_size)

    def _embed_frames(self, tokens: torch.Tensor, tokens_mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq, N+1) frames -> (batch, seq, dim): masked sum of column embeddings."""
        cfg = self.config
        b, s, _ = tokens.shape
        text = self.text_embeddings(tokens[:, :, -1]).unsqueeze(-2)
        offsets = cfg.audio_vocab_size * torch.arange(cfg.audio_num_codebooks,
                                                      device=tokens.device)
        audio = self.audio_embeddings((tokens[:, :, :-1] + offsets).view(-1))
        audio = audio.reshape(b, s, cfg.audio_num_codebooks, -1)
        embeds = torch.cat([audio, text], dim=-2)
        return (embeds * tokens_mask.unsqueeze(-1)).sum(dim=2)

    # -- generation --------------------------------------------------------------------

    def backbone_step(self, tokens, tokens_mask, input_pos,
                      rows: slice | None = None) -> torch.Tensor:
        """Run frames (b, seq, N+1) at ``input_pos`` (b, seq) through the backbone, into
        cache rows ``rows`` (the first b by default); the last position's state (b, dim)."""
        mask = self.backbone_causal_mask[input_pos]
        h = self.backbone(self._embed_frames(tokens, tokens_mask), input_pos, mask, rows)
        return h[:, -1, :]

    def _decoder_step_eager(self, h: torch.Tensor, positions: torch.Tensor,
                            head: torch.Tensor, rows: slice) -> torch.Tensor:
        """Feed decoder inputs ``h`` at ``positions`` into cache rows ``rows``; logits of
        the next codebook."""
        input_pos = positions.unsqueeze(0).expand(h.size(0), -1)
        mask = self.decoder_causal_mask[input_pos]
        out = self.decoder(self.projection(h), input_pos, mask, rows)
        return torch.mm(out[:, -1, :], head)

    def generate_frame(
        self,
        tokens: torch.Tensor,
        tokens_mask: torch.Tensor,
        input_pos: torch.Tensor,
        temperature: float | torch.Tensor,
        topk: int | torch.Tensor,
        generator: torch.Generator | None = None,
        num_codebooks: int | None = None,
        *,
        rows: slice | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Codes of the next audio frame, (batch, N) int.

        ``tokens``/``tokens_mask``: (b, seq, N+1); ``input_pos``: (b, seq), each row its
        own positions; ``rows``: the cache rows they use (the first b by default).
        ``temperature``/``topk``: numbers or (b, 1) tensors. ``noise`` (b, N, vocab): the
        Exp(1) draws for sampling (else drawn from ``generator``).
        ``num_codebooks`` < N samples only the first codebooks (the depth decoder is the
        per-frame cost) and leaves the rest 0: coarser audio, faster.
        """
        if not self.backbone.caches_are_enabled():
            raise RuntimeError("call setup_caches(batch_size) before generate_frame")
        n = self.config.audio_num_codebooks
        wanted = n if num_codebooks is None else num_codebooks
        if not 1 <= wanted <= n:
            raise ValueError(f"num_codebooks must be in 1..{n}, got {wanted}")
        rows = slice(0, tokens.shape[0]) if rows is None else rows
        last_h, c0 = self.backbone_frame(tokens, tokens_mask, input_pos, temperature, topk,
                                         generator, rows=rows, noise=noise)
        return self.decoder_frame(last_h, c0, temperature, topk, generator, wanted,
                                  rows=rows, noise=noise)

    def backbone_frame(self, tokens, tokens_mask, input_pos, temperature, topk,
                       generator=None, *, rows: slice, noise=None):
        """The backbone's half of a frame: its last state (b, dim) and codebook 0 (b, 1)."""
        last_h = self.backbone_step(tokens, tokens_mask, input_pos, rows)
        c0 = sample_topk(self.codebook0_head(last_h), topk, temperature, generator,
                         None if noise is None else noise[:, 0])
        return last_h, c0

    def decoder_frame(self, last_h, c0, temperature, topk, generator=None,
                      wanted: int | None = None, *, rows: slice, noise=None) -> torch.Tensor:
        """The depth decoder's half: codebooks 1..wanted-1 after ``c0``; the frame (b, N)."""
        n = self.config.audio_num_codebooks
        wanted = n if wanted is None else wanted
        samples = [c0]
        # The depth decoder starts afresh each frame: positions 0 and 1 take the backbone
        # state and codebook 0, then one position per codebook. Nothing needs clearing: the
        # causal mask hides the previous frame's entries until they are overwritten.
        decoder_in = torch.cat([last_h.unsqueeze(1), self._embed_audio(0, c0)], dim=1)
        for i in range(1, wanted):
            positions = self._decoder_positions[:2] if i == 1 else self._decoder_positions[i:i + 1]
            logits = self._decoder_step(decoder_in, positions, self.audio_head[i - 1], rows)
            sample_i = sample_topk(logits, topk, temperature, generator,
                                   None if noise is None else noise[:, i])
            samples.append(sample_i)
            decoder_in = self._embed_audio(i, sample_i)
        if wanted < n:
            samples.append(torch.zeros_like(c0).expand(-1, n - wanted))
        return torch.cat(samples, dim=1)
