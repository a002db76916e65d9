"""BART-family encoder-decoder transformer (Lewis et al. 2019) in Flax linen.

Used by CXR-IRGen's language module (`xray_gen.models.cxr_irgen.language`), which keeps the
encoder and decoder but replaces the decoder's memory (all encoder states) by their masked mean.
This module itself is plain BART, so imported weights (`xray_gen.models.cxr_irgen.bart_weights`)
reproduce `transformers`' BartForConditionalGeneration / BartModel:

  tokens -> shared embedding (x sqrt(d_model) if scale_embedding) + learned positions (index
  offset 2, BART's convention) -> layernorm_embedding -> dropout -> layers -> [layer_norm]
  encoder layer: self-attention (padding masked), feed-forward (fc1 -> activation -> fc2)
  decoder layer: causal self-attention, cross-attention to `memory`, feed-forward
  logits = decoder states @ shared^T + final_logits_bias   (LM head tied to the embedding)

Each sub-block is residual; `normalize_before=False` (BART) applies LayerNorm after the residual
add, `True` (mBART) before the sub-block, with a final `layer_norm` per stack when
`add_final_layer_norm`. Parameter names mirror the transformers state dict
(`encoder.layers.0.self_attn.q_proj` -> `encoder/layers_0/self_attn/to_q`: the attention block is
`xray_gen.nn.autoencoder_kl.Attention`, whose projections are named as in diffusers).

There is no key/value cache: decoding (`language.py`) recomputes the decoder over a fixed-length
buffer each step, which keeps every step one jitted call of fixed shape and beams a plain gather.

Usage::

    cfg = bart_config("tiny", vocab_size=1000)
    model = Bart(cfg)
    params = model.init(rng, ids, mask, dec_ids)["params"]
    memory = model.apply({"params": params}, ids, mask, method=model.encode)          # (B, S, D)
    logits = model.apply({"params": params}, dec_ids, memory, mask, method=model.decode)  # (B, T, V)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from xray_gen.nn.autoencoder_kl import Attention

Dtype = Any

#: BART's learned positional embeddings are indexed from 2 (fairseq's padding-offset convention).
POSITION_OFFSET = 2

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: nn.gelu(x, approximate=False),  # transformers' "gelu" is the exact erf form
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
    "silu": nn.silu,
    "swish": nn.silu,
    "tanh": jnp.tanh,
}


@dataclasses.dataclass(frozen=True)
class BartConfig:
    """Architecture and special token ids (defaults: facebook/bart-base with its tokenizer's ids).

    For a model trained here with `ReportTokenizer`, use `bart_config(name, vocab_size=...,
    **REPORT_TOKENIZER_IDS)` so PAD/BOS/EOS match the tokenizer (PAD=0, BOS=2, EOS=3).
    """

    vocab_size: int = 50265
    d_model: int = 768
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 12
    decoder_attention_heads: int = 12
    encoder_ffn_dim: int = 3072
    decoder_ffn_dim: int = 3072
    max_position_embeddings: int = 1024
    activation_function: str = "gelu"
    scale_embedding: bool = False
    normalize_before: bool = False  # False: BART's post-LN; True: mBART's pre-LN
    layernorm_embedding: bool = True
    add_final_layer_norm: bool = False  # mBART: LayerNorm after each stack (pre-LN models)
    layer_norm_eps: float = 1e-5
    dropout: float = 0.1  # residual/embedding dropout (training only)
    activation_dropout: float = 0.0
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    decoder_start_token_id: int = 2

    def __post_init__(self):
        for field in ("vocab_size", "d_model", "encoder_attention_heads", "decoder_attention_heads",
                      "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"BartConfig.{field}={getattr(self, field)} must be >= 1")
        for field in ("encoder_layers", "decoder_layers"):
            if int(getattr(self, field)) < 0:
                raise ValueError(f"BartConfig.{field}={getattr(self, field)} must be >= 0")
        for field in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % getattr(self, field):
                raise ValueError(f"BartConfig.d_model={self.d_model} is not divisible by "
                                 f"{field}={getattr(self, field)}")
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"BartConfig.activation_function={self.activation_function!r} is not supported "
                             f"(supported: {sorted(ACTIVATIONS)})")
        for field in ("dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise ValueError(f"BartConfig.{field}={getattr(self, field)} must be in [0, 1)")
        for field in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
            if not 0 <= getattr(self, field) < self.vocab_size:
                raise ValueError(f"BartConfig.{field}={getattr(self, field)} is outside the vocabulary "
                                 f"(vocab_size={self.vocab_size})")


#: Special ids of `xray_gen.data.tokenizer.ReportTokenizer` as BartConfig fields. The decoder
#: starts from EOS, as BART's does; the first target is then BOS (`encode_flat` starts with it).
REPORT_TOKENIZER_IDS = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3, decoder_start_token_id=3)

_NAMED = {
    # CPU-sized, for tests and the phantom.
    "tiny": dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                 max_position_embeddings=256),
    "small": dict(d_model=256, encoder_layers=4, decoder_layers=4, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024,
                  max_position_embeddings=512),
    "bart-base": dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                      decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072),
    "bart-large": dict(d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
                       decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096),
}


def bart_config(name: str, **overrides: Any) -> BartConfig:
    """A named size ('tiny', 'small', 'bart-base', 'bart-large') with field overrides."""
    if name not in _NAMED:
        raise ValueError(f"unknown BART size {name!r} (known: {sorted(_NAMED)})")
    return BartConfig(**{**_NAMED[name], **overrides})


def causal_mask(length: int) -> jax.Array:
    """Boolean (1, 1, T, T): query t sees keys <= t."""
    return jnp.tril(jnp.ones((length, length), bool))[None, None]


def key_mask(mask: Optional[jax.Array]) -> Optional[jax.Array]:
    """(B, S) 1 = real token -> boolean (B, 1, 1, S) for attention over those keys."""
    return None if mask is None else (mask > 0)[:, None, None, :]


class BartLayer(nn.Module):
    """One transformer layer: self-attention, optional cross-attention to `memory`, feed-forward.

    Names follow transformers' BartEncoderLayer / BartDecoderLayer. Also the ViT block of the
    CXR-IRGen prior (pre-LN, no cross-attention).
    """

    heads: int
    ffn_dim: int
    cross_attention: bool = False
    normalize_before: bool = False
    activation: str = "gelu"
    eps: float = 1e-5
    dropout: float = 0.0
    activation_dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, self_mask: Optional[jax.Array] = None, memory: Optional[jax.Array] = None,
                 memory_mask: Optional[jax.Array] = None, deterministic: bool = True) -> jax.Array:
        d = x.shape[-1]
        ln = lambda name: nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name=name)
        drop = lambda h, rate=self.dropout: nn.Dropout(rate)(h, deterministic=deterministic)

        def residual(h, block, norm_name):
            y = block(ln(norm_name)(h) if self.normalize_before else h)
            h = h + drop(y)
            return h if self.normalize_before else ln(norm_name)(h)

        attn = lambda name: Attention(self.heads, d // self.heads, qkv_bias=True, dtype=self.dtype, name=name)
        x = residual(x, lambda h: attn("self_attn")(h, mask=self_mask), "self_attn_layer_norm")
        if self.cross_attention:
            if memory is None:
                raise ValueError("BartLayer with cross_attention needs `memory` (encoder states)")
            x = residual(x, lambda h: attn("encoder_attn")(h, memory, memory_mask), "encoder_attn_layer_norm")

        def ffn(h):
            h = ACTIVATIONS[self.activation](nn.Dense(self.ffn_dim, dtype=self.dtype, name="fc1")(h))
            return nn.Dense(d, dtype=self.dtype, name="fc2")(drop(h, self.activation_dropout))

        return residual(x, ffn, "final_layer_norm")


class BartStack(nn.Module):
    """Encoder (`decoder=False`) or decoder stack over already-embedded tokens (token embedding is
    shared and lives in `Bart`); adds positions, layernorm_embedding, layers, final layer_norm."""

    config: BartConfig
    decoder: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tok_emb: jax.Array, self_mask: Optional[jax.Array], memory: Optional[jax.Array] = None,
                 memory_mask: Optional[jax.Array] = None, deterministic: bool = True) -> jax.Array:
        cfg = self.config
        t = tok_emb.shape[1]
        if t > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {t} exceeds BartConfig.max_position_embeddings="
                             f"{cfg.max_position_embeddings}")
        pos = nn.Embed(cfg.max_position_embeddings + POSITION_OFFSET, cfg.d_model, dtype=self.dtype,
                       embedding_init=nn.initializers.normal(0.02), name="embed_positions")
        h = tok_emb + pos(jnp.arange(t) + POSITION_OFFSET)[None]
        if cfg.layernorm_embedding:
            h = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="layernorm_embedding")(h)
        h = nn.Dropout(cfg.dropout)(h, deterministic=deterministic)
        n, heads, ffn = ((cfg.decoder_layers, cfg.decoder_attention_heads, cfg.decoder_ffn_dim) if self.decoder
                         else (cfg.encoder_layers, cfg.encoder_attention_heads, cfg.encoder_ffn_dim))
        for i in range(n):
            h = BartLayer(heads, ffn, cross_attention=self.decoder, normalize_before=cfg.normalize_before,
                          activation=cfg.activation_function, eps=cfg.layer_norm_eps, dropout=cfg.dropout,
                          activation_dropout=cfg.activation_dropout, dtype=self.dtype, name=f"layers_{i}")(
                h, self_mask, memory, memory_mask, deterministic)
        if cfg.add_final_layer_norm:
            h = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="layer_norm")(h)
        return h


class Bart(nn.Module):
    """BART encoder-decoder with tied LM head. Masks are (B, L), 1 = real token; ids int (B, L).

    `encode(ids, mask) -> (B, S, D)`; `decode(dec_ids, memory, memory_mask) -> logits (B, T, V)`
    (float32), with `decoder_states` / `logits` as its two halves; `__call__` runs both (the standard
    full cross-attention path). The memory can be anything of width d_model, e.g. the language
    module's single pooled vector (B, 1, D).
    """

    config: BartConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        cfg = self.config
        self.shared = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=self.dtype,
                               embedding_init=nn.initializers.normal(0.02), name="shared")
        self.encoder = BartStack(cfg, decoder=False, dtype=self.dtype)
        self.decoder = BartStack(cfg, decoder=True, dtype=self.dtype)
        self.final_logits_bias = self.param("final_logits_bias", nn.initializers.zeros, (cfg.vocab_size,))

    def _embed(self, ids: jax.Array) -> jax.Array:
        if ids.ndim != 2:
            raise ValueError(f"Bart: token ids must be (B, L), got shape {ids.shape}")
        scale = math.sqrt(self.config.d_model) if self.config.scale_embedding else 1.0
        return self.shared(ids) * scale

    def encode(self, ids: jax.Array, mask: Optional[jax.Array] = None, deterministic: bool = True) -> jax.Array:
        """Encoder states (B, S, D); padded positions (mask 0) are never attended to."""
        return self.encoder(self._embed(ids), key_mask(mask), deterministic=deterministic)

    def decoder_states(self, dec_ids: jax.Array, memory: jax.Array, memory_mask: Optional[jax.Array] = None,
                       deterministic: bool = True) -> jax.Array:
        """Decoder states (B, T, D): causal self-attention, cross-attention to memory (B, S, D)."""
        return self.decoder(self._embed(dec_ids), causal_mask(dec_ids.shape[1]), memory.astype(self.dtype),
                            key_mask(memory_mask), deterministic)

    def logits(self, states: jax.Array) -> jax.Array:
        """Tied LM head: states (..., D) -> float32 logits (..., V)."""
        return self.shared.attend(states).astype(jnp.float32) + self.final_logits_bias

    def decode(self, dec_ids: jax.Array, memory: jax.Array, memory_mask: Optional[jax.Array] = None,
               deterministic: bool = True) -> jax.Array:
        return self.logits(self.decoder_states(dec_ids, memory, memory_mask, deterministic))

    def __call__(self, ids: jax.Array, mask: Optional[jax.Array], dec_ids: jax.Array,
                 deterministic: bool = True) -> jax.Array:
        return self.decode(dec_ids, self.encode(ids, mask, deterministic), mask, deterministic)


def shift_right(ids: jax.Array, start_id: int) -> jax.Array:
    """Teacher-forcing decoder inputs: [start, ids[:-1]] along the last axis (BART's convention)."""
    start = jnp.full(ids.shape[:-1] + (1,), start_id, ids.dtype)
    return jnp.concatenate([start, ids[..., :-1]], axis=-1)
