"""A deliberately plain MisoTTS forward pass for checking tts.miso against.

Reads parameters straight from a release checkpoint's tensors (by their release names),
recomputes the whole sequence for every prediction (no caches), and does each step the
textbook way: rotary embedding through complex numbers on adjacent pairs (Meta's Llama
formulation), per-frequency Llama-3 scaling in a Python loop (torchtune's formulation),
attention as an explicit softmax over a causal mask, grouped keys by repeat_interleave.
"""

from __future__ import annotations

import math

import torch


def scaled_frequencies(head_dim: int, base: float, scale_factor: float) -> torch.Tensor:
    low_freq_factor, high_freq_factor, old_context_len = 1, 4, 8192
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_context_len / high_freq_factor:
            out.append(freq)
        elif wavelen > old_context_len / low_freq_factor:
            out.append(freq / scale_factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (
                high_freq_factor - low_freq_factor)
            out.append((1 - smooth) * freq / scale_factor + smooth * freq)
    return torch.tensor(out, dtype=freqs.dtype)


def rotate(x: torch.Tensor, positions: torch.Tensor, sizes) -> torch.Tensor:
    """x: (seq, heads, head_dim)."""
    theta = scaled_frequencies(sizes.head_dim, sizes.rope_base, sizes.scale_factor)
    angles = torch.outer(positions.float(), theta)
    rot = torch.polar(torch.ones_like(angles), angles)[:, None, :]
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(xc * rot).flatten(-2)


def rms(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * scale


def transformer(w: dict, prefix: str, sizes, h: torch.Tensor) -> torch.Tensor:
    """h: (seq, dim) -> (seq, dim), causal, positions 0..seq-1."""
    seq = h.shape[0]
    positions = torch.arange(seq)
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    group = sizes.num_heads // sizes.num_kv_heads
    for i in range(sizes.num_layers):
        p = f"{prefix}.layers.{i}"
        x = rms(h, w[f"{p}.sa_norm.scale"], sizes.norm_eps)
        q = (x @ w[f"{p}.attn.q_proj.weight"].T).view(seq, sizes.num_heads, -1)
        k = (x @ w[f"{p}.attn.k_proj.weight"].T).view(seq, sizes.num_kv_heads, -1)
        v = (x @ w[f"{p}.attn.v_proj.weight"].T).view(seq, sizes.num_kv_heads, -1)
        q, k = rotate(q, positions, sizes), rotate(k, positions, sizes)
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(sizes.head_dim)
        scores = scores.masked_fill(~causal, float("-inf"))
        attn = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(seq, -1)
        h = h + attn @ w[f"{p}.attn.output_proj.weight"].T
        x = rms(h, w[f"{p}.mlp_norm.scale"], sizes.norm_eps)
        gate = torch.nn.functional.silu(x @ w[f"{p}.mlp.w1.weight"].T)
        h = h + (gate * (x @ w[f"{p}.mlp.w3.weight"].T)) @ w[f"{p}.mlp.w2.weight"].T
    return rms(h, w[f"{prefix}.norm.scale"], sizes.norm_eps)


def embed_frames(w: dict, config, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """tokens, mask: (seq, N+1) -> (seq, dim)."""
    n, vocab = config.audio_num_codebooks, config.audio_vocab_size
    out = w["text_embeddings.weight"][tokens[:, -1]] * mask[:, -1:].float()
    for k in range(n):
        out = out + w["audio_embeddings.weight"][tokens[:, k] + k * vocab] * mask[:, k:k + 1]
    return out


def greedy_frame(w: dict, config, tokens: torch.Tensor, mask: torch.Tensor):
    """The next frame by argmax given the whole history; also every logit vector used."""
    h = transformer(w, "backbone", config.backbone, embed_frames(w, config, tokens, mask))
    last = h[-1]
    logits = [last @ w["codebook0_head.weight"].T]
    codes = [int(logits[0].argmax())]
    vocab = config.audio_vocab_size
    decoder_in = [last, w["audio_embeddings.weight"][codes[0]]]
    for i in range(1, config.audio_num_codebooks):
        projected = torch.stack(decoder_in) @ w["projection.weight"].T
        out = transformer(w, "decoder", config.decoder, projected)
        logits.append(out[-1] @ w["audio_head"][i - 1])
        codes.append(int(logits[-1].argmax()))
        decoder_in.append(w["audio_embeddings.weight"][codes[-1] + i * vocab])
    return codes, logits
