"""Report encoders for XRayGAN: the hierarchical attentional encoder (HAE) and its flat ablation.

Inputs are what `data.pipeline.ReportInputs` produces per section: ids int32 (B, S, W) and
mask float32 (B, S, W), 1 exactly on real tokens (EOS included), PAD id 0 elsewhere.

Padding never influences a result: attention softmaxes over real positions only (the official
code softmaxes over padding too; DESIGN §6 says not to copy that), and the backward LSTM starts at
each row's last real token. Masks need not be prefixes: `BiLSTM` moves real positions to the front
(stable order) before running and puts them back after, so a row with holes behaves like the
same tokens without holes.

Shapes (defaults: embed 128, hidden 128 per direction as in the paper §3.2):
  HierarchicalEncoder          (B, S, W) -> (B, 2*hidden) = (B, 256)
  HierarchicalReportEncoder    findings + impression -> concat (B, 512) -> Dense(out_dim) -> LeakyReLU(0.2)
  FlatReportEncoder            same inputs, one BiLSTM over all real tokens -> (B, out_dim)
`out_dim` defaults to 512, the official code's `D_CHANNEL_SIZE` (the width its generator takes);
the paper does not give it.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

SECTIONS = ("findings", "impression")
# Small embeddings keep the LSTM gates out of saturation at init (flax's default Embed init has std 1).
EMBED_INIT = nn.initializers.normal(stddev=0.1)


def compact(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(perm (B, T) int32, lengths (B,) int32): gather with `perm` to move real positions to the front.

    A stable argsort keeps the real positions in their original order, so jitted code can turn
    a ragged layout (words spread over sentence rows, two sections) into one packed sequence.
    """
    real = mask > 0
    perm = jnp.argsort(jnp.where(real, 0, 1).astype(jnp.int32), axis=-1, stable=True).astype(jnp.int32)
    return perm, real.sum(axis=-1).astype(jnp.int32)


def _gather_time(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x (B, T, ...) gathered along axis 1 by idx (B, T)."""
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


class MaskedAttentionPool(nn.Module):
    """e = v·tanh(W h + b), softmax over real positions only, output sum_t a_t h_t.

    Returns (pooled (..., D), weights (..., T)). A row with no real position gives a zero vector
    and zero weights (no NaN, in values or gradients). `attn_dim` defaults to D, as in the
    official attention (Linear(D, D) -> tanh -> Linear(D, 1, no bias)).
    """

    attn_dim: int | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = h.astype(self.dtype)
        real = mask > 0
        u = jnp.tanh(nn.Dense(self.attn_dim or h.shape[-1], dtype=self.dtype, name="proj")(h))
        e = nn.Dense(1, use_bias=False, dtype=self.dtype, name="score")(u)[..., 0].astype(jnp.float32)
        # Softmax in float32 with padding pushed to a large negative; the max is over real
        # positions when there are any, and multiplying by `real` zeroes padding exactly.
        e = jnp.where(real, e, -1e9)
        e = e - jax.lax.stop_gradient(jnp.max(e, axis=-1, keepdims=True))
        w = jnp.exp(e) * real
        denom = jnp.sum(w, axis=-1, keepdims=True)
        w = w / jnp.where(denom > 0, denom, 1.0)
        h_real = jnp.where(real[..., None], h, 0)  # a NaN/inf in padding cannot leak through 0*h
        pooled = jnp.einsum("...t,...td->...d", w.astype(self.dtype), h_real)
        return pooled, w


class BiLSTM(nn.Module):
    """Bidirectional LSTM over (B, T, D) with mask (B, T) -> (B, T, 2*hidden), padding zeroed.

    Both directions see only real tokens: the forward one stops mattering at the last real token
    (later outputs are zeroed), and the backward one starts there (`flax.linen.RNN` with
    `seq_lengths`, `reverse=True, keep_order=True`). Real positions are first packed to the front,
    so masks with holes work too.
    """

    hidden: int = 128
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        perm, lengths = compact(mask)
        xc = _gather_time(x, perm)
        cell = lambda name: nn.OptimizedLSTMCell(self.hidden, dtype=self.dtype, name=name)
        # An explicit carry in `dtype`: flax's default carry is param_dtype and would promote bf16 to f32.
        zeros = jnp.zeros(x.shape[:1] + (self.hidden,), self.dtype)
        fwd = nn.RNN(cell("fwd"))(xc, initial_carry=(zeros, zeros), seq_lengths=lengths)
        bwd = nn.RNN(cell("bwd"), reverse=True, keep_order=True)(xc, initial_carry=(zeros, zeros), seq_lengths=lengths)
        y = jnp.concatenate([fwd, bwd], axis=-1)
        y = _gather_time(y, jnp.argsort(perm, axis=-1))  # back to the original positions
        return y * (mask > 0)[..., None].astype(y.dtype)


class HierarchicalEncoder(nn.Module):
    """One report section: words -> BiLSTM -> attention -> sentences -> BiLSTM -> attention.

    ids, mask (B, S, W) -> (B, 2*hidden). Sentence s is real iff any of its words is; an empty
    section gives a zero vector. `embedding` lets a parent share one `nn.Embed` between sections;
    without it the section owns its own table (the official layout). Attention weights are sown
    into the 'intermediates' collection for inspection.
    """

    vocab_size: int
    embed_dim: int = 128
    hidden: int = 128
    dtype: Any = jnp.float32
    embedding: nn.Module | None = None

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        if ids.ndim != 3 or mask.shape != ids.shape:
            raise ValueError(f"expected ids and mask of shape (B, S, W), got {ids.shape} and {mask.shape}")
        b, s, w = ids.shape
        embed = self.embedding if self.embedding is not None else nn.Embed(
            self.vocab_size, self.embed_dim, embedding_init=EMBED_INIT, dtype=self.dtype, name="embed"
        )
        word_mask = mask.reshape(b * s, w)
        words = BiLSTM(self.hidden, self.dtype, name="word_lstm")(embed(ids.reshape(b * s, w)), word_mask)
        sents, word_attn = MaskedAttentionPool(dtype=self.dtype, name="word_attn")(words, word_mask)
        sents = sents.reshape(b, s, -1)
        sent_mask = jnp.any(mask > 0, axis=-1)
        sents = BiLSTM(self.hidden, self.dtype, name="sent_lstm")(sents, sent_mask)
        section, sent_attn = MaskedAttentionPool(dtype=self.dtype, name="sent_attn")(sents, sent_mask)
        self.sow("intermediates", "word_attention", word_attn.reshape(b, s, w))
        self.sow("intermediates", "sentence_attention", sent_attn)
        return section


def _section_inputs(findings_ids, findings_mask, impression_ids, impression_mask):
    """Accepts either a batch dict (`<section>_ids`, `<section>_mask`) or the four arrays."""
    if isinstance(findings_ids, Mapping):
        batch = findings_ids
        try:
            return tuple(batch[f"{sec}_{kind}"] for sec in SECTIONS for kind in ("ids", "mask"))
        except KeyError as err:
            raise KeyError(f"report encoder needs {err} in the batch; it has {sorted(batch)}") from None
    args = (findings_ids, findings_mask, impression_ids, impression_mask)
    if any(a is None for a in args):
        raise ValueError("pass a batch dict, or all of findings_ids, findings_mask, impression_ids, impression_mask")
    return args


class HierarchicalReportEncoder(nn.Module):
    """XRayGAN's HAE: findings and impression hierarchies -> concat (B, 4*hidden) -> Dense -> LeakyReLU.

    Call with a batch dict or `(findings_ids, findings_mask, impression_ids, impression_mask)`,
    each (B, S, W) (the two sections may differ in S and W). Returns (B, out_dim) float32.
    Each section has its own parameters, embedding included (official: two separate word/sentence
    modules, each with its own table); `share_embedding=True` uses one table for both, which
    halves the embedding parameters for large vocabularies. `use_bias=False` matches the
    official final Linear.
    """

    vocab_size: int
    embed_dim: int = 128
    hidden: int = 128
    out_dim: int = 512
    use_bias: bool = False
    share_embedding: bool = False
    negative_slope: float = 0.2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, findings_ids, findings_mask=None, impression_ids=None, impression_mask=None) -> jax.Array:
        f_ids, f_mask, i_ids, i_mask = _section_inputs(findings_ids, findings_mask, impression_ids, impression_mask)
        shared = None
        if self.share_embedding:
            shared = nn.Embed(
                self.vocab_size, self.embed_dim, embedding_init=EMBED_INIT, dtype=self.dtype, name="embed"
            )
        enc = lambda name: HierarchicalEncoder(
            self.vocab_size, self.embed_dim, self.hidden, self.dtype, embedding=shared, name=name
        )
        h = jnp.concatenate([enc("findings")(f_ids, f_mask), enc("impression")(i_ids, i_mask)], axis=-1)
        h = nn.Dense(self.out_dim, use_bias=self.use_bias, dtype=self.dtype, name="fc")(h)
        return nn.leaky_relu(h, self.negative_slope).astype(jnp.float32)


class FlatReportEncoder(nn.Module):
    """The paper's `w/o HAE` ablation: one BiLSTM over the whole report as a flat token sequence.

    The real tokens of all findings sentences then all impression sentences are packed, in order,
    into one sequence of length S_f*W_f + S_i*W_i (a stable argsort of the mask, so it jits), run
    through one BiLSTM, attention-pooled over real tokens, then Dense(out_dim) -> LeakyReLU as in
    the HAE. Attention pooling (not the last states) keeps the hierarchy the only difference from
    the HAE; the official `plainEncoder` instead took the last outputs of two per-section RNNs.
    Same call signature and output shape as `HierarchicalReportEncoder`.
    """

    vocab_size: int
    embed_dim: int = 128
    hidden: int = 128
    out_dim: int = 512
    use_bias: bool = False
    negative_slope: float = 0.2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, findings_ids, findings_mask=None, impression_ids=None, impression_mask=None) -> jax.Array:
        f_ids, f_mask, i_ids, i_mask = _section_inputs(findings_ids, findings_mask, impression_ids, impression_mask)
        b = f_ids.shape[0]
        ids = jnp.concatenate([f_ids.reshape(b, -1), i_ids.reshape(b, -1)], axis=1)
        mask = jnp.concatenate([f_mask.reshape(b, -1), i_mask.reshape(b, -1)], axis=1)
        perm, _ = compact(mask)
        ids, mask = jnp.take_along_axis(ids, perm, axis=1), jnp.take_along_axis(mask, perm, axis=1)
        x = nn.Embed(self.vocab_size, self.embed_dim, embedding_init=EMBED_INIT, dtype=self.dtype, name="embed")(ids)
        h = BiLSTM(self.hidden, self.dtype, name="lstm")(x, mask)
        pooled, attn = MaskedAttentionPool(dtype=self.dtype, name="attn")(h, mask)
        self.sow("intermediates", "attention", attn)
        out = nn.Dense(self.out_dim, use_bias=self.use_bias, dtype=self.dtype, name="fc")(pooled)
        return nn.leaky_relu(out, self.negative_slope).astype(jnp.float32)
