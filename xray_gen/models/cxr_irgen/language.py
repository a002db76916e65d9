"""CXR-IRGen language module (paper §3.2): report autoencoder, latent prior, report decoding.

Stage 1, `ReportAutoencoder` ("text autoencoder"): a BART encoder turns a report into states; their
MASKED MEAN over real tokens is the report's single text vector (B, D); the BART decoder
cross-attends to that one vector (a length-1 memory) and reconstructs the report by teacher
forcing. `reconstruction_loss` is cross-entropy averaged over real target tokens only (the official
code also scores padding; DESIGN §6). Ablation: `pooling="bos"` / `"eos"` takes the state of the
first / last real token instead (BOS / EOS for `ReportTokenizer.encode_flat` and BART tokenizers).

Stage 2, `LatentPrior`: a ViT over the autoencoder latents (32x32x4, patch 2 -> 256 tokens; the
ablation feeds pixels, e.g. 256x256x1 with patch 16) predicting the stage-1 text vector, trained
with `prior_loss` = MSE + 0.01 * (1 - cos) (ablations "mse", "cosine").

Decoding from text vectors: `generate(model, params, vectors, method=...)` with greedy, beam search
(HF-style length penalty) or nucleus (top-p) sampling. Every method stops a sequence at EOS (the
official code keeps generating past it; DESIGN §6): the returned ids are (B, max_len), tokens
after EOS are PAD, and `lengths` counts the tokens up to and including EOS (max_len if none came).
All are jittable with a static `max_len` (≤ max_position_embeddings). The generic
`greedy_decode`, `beam_search` and `nucleus_sample` take any `logits_fn(memory, ids, t)`.

Token ids come from `BartConfig`: for models trained here use `bart_config(..., vocab_size=
tokenizer.vocab_size, **REPORT_TOKENIZER_IDS)` and `ReportTokenizer.encode_flat` / `decode_flat`
(returned ids start with BOS, as encode_flat's do, so `(ids, arange(L) < lengths)` feeds
`encode_report` again). Imported BART weights (`bart_weights.load_bart`, loaded into
`params["bart"]`) go with `bart_weights.bart_config_from_transformers` (their special ids) and
their own tokenizer (`bart_weights.load_bart_tokenizer`: same `encode_flat` / `decode_flat` API),
as `cxr_irgen.language.pretrained` uses them.

Training step sketch (stage 1)::

    model = ReportAutoencoder(cfg)
    logits = model.apply({"params": p}, ids, mask, deterministic=False, rngs={"dropout": key})
    loss = reconstruction_loss(logits, ids, mask)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from xray_gen.nn.bart import Bart, BartConfig, BartLayer, shift_right

Dtype = Any
POOLINGS = ("mean", "bos", "eos")
PRIOR_LOSSES = ("mse+cosine", "mse", "cosine")
METHODS = ("greedy", "beam", "nucleus")

#: logits_fn(memory, ids (N, L) int32, t) -> float logits (N, V) for the token after position t.
LogitsFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


# ------------------------------------------------------------------------------------------------
# Stage 1: pooled-vector text autoencoder
# ------------------------------------------------------------------------------------------------


def masked_mean(states: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of states (B, L, D) over positions with mask (B, L) > 0 -> float32 (B, D); 0 if none."""
    w = (mask > 0).astype(jnp.float32)[..., None]
    return jnp.sum(states.astype(jnp.float32) * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)


def pool_states(states: jax.Array, mask: jax.Array, pooling: str = "mean") -> jax.Array:
    """The report's text vector (B, D): masked mean, or the first ("bos") / last ("eos") real state."""
    if pooling == "mean":
        return masked_mean(states, mask)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}")
    real = mask > 0
    if pooling == "bos":
        idx = jnp.argmax(real, axis=1)
    else:
        idx = real.shape[1] - 1 - jnp.argmax(real[:, ::-1], axis=1)
    return jnp.take_along_axis(states, idx[:, None, None], axis=1)[:, 0].astype(jnp.float32)


class ReportAutoencoder(nn.Module):
    """BART encoder -> pooled text vector -> BART decoder cross-attending to that vector only.

    Params: {"bart": Bart params} (so `bart_weights.load_bart` output drops in). Inputs: ids int
    (B, L) and mask (B, L), 1 on real tokens, as `ReportTokenizer.encode_flat` gives them.
    """

    config: BartConfig
    pooling: str = "mean"
    dtype: Dtype = jnp.float32

    def setup(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"ReportAutoencoder.pooling={self.pooling!r} is not one of {POOLINGS}")
        self.bart = Bart(self.config, self.dtype)

    def encode_report(self, ids: jax.Array, mask: jax.Array, deterministic: bool = True) -> jax.Array:
        """Text vector (B, D) float32: pooled encoder states (padding excluded)."""
        return pool_states(self.bart.encode(ids, mask, deterministic), mask, self.pooling)

    def decode_from_vector(self, vector: jax.Array, dec_ids: jax.Array, deterministic: bool = True) -> jax.Array:
        """Logits (B, T, V) of the decoder whose only memory is `vector` (B, D)."""
        return self.bart.decode(dec_ids, vector[:, None, :], None, deterministic)

    def decode_from_states(self, states: jax.Array, mask: jax.Array, dec_ids: jax.Array,
                           deterministic: bool = True) -> jax.Array:
        """Pools encoder states (B, L, D) then decodes: the decoder sees nothing but the pooled vector."""
        return self.decode_from_vector(pool_states(states, mask, self.pooling), dec_ids, deterministic)

    def next_token_logits(self, vector: jax.Array, dec_ids: jax.Array, t: jax.Array) -> jax.Array:
        """Logits (B, V) at decoder position t (a `LogitsFn` for the decoding functions)."""
        states = self.bart.decoder_states(dec_ids, vector[:, None, :])
        return self.bart.logits(jax.lax.dynamic_index_in_dim(states, t, axis=1, keepdims=False))

    def __call__(self, ids: jax.Array, mask: jax.Array, deterministic: bool = True) -> jax.Array:
        """Teacher-forced reconstruction logits (B, L, V); targets are `ids` (decoder inputs shifted right)."""
        states = self.bart.encode(ids, mask, deterministic)
        dec_ids = shift_right(ids, self.config.decoder_start_token_id)
        return self.decode_from_states(states, mask, dec_ids, deterministic)


def reconstruction_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array,
                        label_smoothing: float = 0.0) -> jax.Array:
    """Cross-entropy averaged over real target tokens (mask > 0); padded positions contribute nothing."""
    if logits.shape[:-1] != targets.shape or targets.shape != mask.shape:
        raise ValueError(f"reconstruction_loss: logits {logits.shape}, targets {targets.shape} and mask "
                         f"{mask.shape} do not agree")
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
    w = (mask > 0).astype(jnp.float32)
    return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)


def token_accuracy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Fraction of real target tokens predicted by argmax (a training metric)."""
    w = (mask > 0).astype(jnp.float32)
    hit = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return jnp.sum(hit * w) / jnp.maximum(jnp.sum(w), 1.0)


# ------------------------------------------------------------------------------------------------
# Stage 2: ViT prior image (latents) -> text vector
# ------------------------------------------------------------------------------------------------

#: Input geometries: SD latents (32x32x4, patch 2) and the pixel ablation (256x256x1, patch 16);
#: both give 256 tokens.
PRIOR_INPUTS = {"latents": dict(input_size=32, in_channels=4, patch_size=2),
                "pixels": dict(input_size=256, in_channels=1, patch_size=16)}
_PRIOR_SIZES = {"tiny": dict(width=64, depth=2, heads=4, mlp_dim=128),
                "small": dict(width=256, depth=6, heads=8, mlp_dim=1024),
                "base": dict(width=768, depth=12, heads=12, mlp_dim=3072)}


@dataclasses.dataclass(frozen=True)
class PriorConfig:
    """ViT prior (defaults: ViT-Base over SD latents, projecting to bart-base's 768-d vector)."""

    out_dim: int = 768  # the text vector's width (BartConfig.d_model)
    input_size: int = 32
    in_channels: int = 4
    patch_size: int = 2
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    pooling: str = "cls"  # "cls" token (ViT) or "mean" over patch tokens
    dropout: float = 0.0

    def __post_init__(self):
        if self.input_size % self.patch_size:
            raise ValueError(f"PriorConfig.input_size={self.input_size} is not divisible by "
                             f"patch_size={self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"PriorConfig.width={self.width} is not divisible by heads={self.heads}")
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"PriorConfig.pooling={self.pooling!r} is not 'cls' or 'mean'")

    @property
    def num_patches(self) -> int:
        return (self.input_size // self.patch_size) ** 2


def prior_config(size: str = "base", inputs: str = "latents", **overrides: Any) -> PriorConfig:
    """Named ViT size ('tiny', 'small', 'base') over 'latents' or 'pixels', with field overrides."""
    if size not in _PRIOR_SIZES:
        raise ValueError(f"unknown prior size {size!r} (known: {sorted(_PRIOR_SIZES)})")
    if inputs not in PRIOR_INPUTS:
        raise ValueError(f"unknown prior inputs {inputs!r} (known: {sorted(PRIOR_INPUTS)})")
    return PriorConfig(**{**_PRIOR_SIZES[size], **PRIOR_INPUTS[inputs], **overrides})


class LatentPrior(nn.Module):
    """ViT: patches -> [CLS] + tokens + learned positions -> pre-LN blocks -> LayerNorm -> pool ->
    Dense(out_dim). Input NHWC (B, input_size, input_size, in_channels); output float32 (B, out_dim)."""

    config: PriorConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.config
        want = (cfg.input_size, cfg.input_size, cfg.in_channels)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"LatentPrior: expected input (B, {', '.join(map(str, want))}), got {x.shape}")
        p = cfg.patch_size
        h = nn.Conv(cfg.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="patch_embed")(
            x.astype(self.dtype))
        h = h.reshape(h.shape[0], -1, cfg.width)
        init = nn.initializers.normal(0.02)
        if cfg.pooling == "cls":
            cls = self.param("cls_token", init, (1, 1, cfg.width))
            h = jnp.concatenate([jnp.broadcast_to(cls, (h.shape[0], 1, cfg.width)).astype(h.dtype), h], axis=1)
        h = h + self.param("pos_embedding", init, (1, h.shape[1], cfg.width)).astype(h.dtype)
        h = nn.Dropout(cfg.dropout)(h, deterministic=deterministic)
        for i in range(cfg.depth):
            h = BartLayer(cfg.heads, cfg.mlp_dim, normalize_before=True, eps=1e-6, dropout=cfg.dropout,
                          dtype=self.dtype, name=f"layers_{i}")(h, deterministic=deterministic)
        h = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(h)
        pooled = h[:, 0] if cfg.pooling == "cls" else jnp.mean(h, axis=1)
        return nn.Dense(cfg.out_dim, dtype=self.dtype, name="head")(pooled).astype(jnp.float32)


def cosine_similarity(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Row-wise cosine similarity of (B, D) arrays -> (B,)."""
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    dot = jnp.sum(a * b, axis=-1)
    return dot / jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), eps)


def prior_loss(pred: jax.Array, target: jax.Array, kind: str = "mse+cosine", cosine_weight: float = 0.01) -> jax.Array:
    """Paper Eq. (5): mean_b [ mean_d (pred - target)^2 + lambda * (1 - cos(pred, target)) ].

    kind "mse" / "cosine" are the ablations (the latter is 1 - cos alone, unweighted). Eq. (5) prints
    the cosine's denominator without square roots; the standard cosine is meant and used.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prior_loss: pred {pred.shape} and target {target.shape} differ")
    mse = jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)))
    cos = jnp.mean(1.0 - cosine_similarity(pred, target))
    if kind == "mse+cosine":
        return mse + cosine_weight * cos
    if kind == "mse":
        return mse
    if kind == "cosine":
        return cos
    raise ValueError(f"prior_loss kind={kind!r} is not one of {PRIOR_LOSSES}")


# ------------------------------------------------------------------------------------------------
# Decoding
# ------------------------------------------------------------------------------------------------


def _prepare(logits: jax.Array, t: jax.Array, pad_id: int, bos_id: Optional[int]) -> jax.Array:
    """float32 logits (or log-probs) with PAD never generated and, if `bos_id` is given, BOS forced
    at step 0 with log-probability 0 (a forced token costs nothing, so it does not shift beam scores)."""
    logits = logits.astype(jnp.float32)
    vocab = jnp.arange(logits.shape[-1])
    logits = jnp.where(vocab == pad_id, -jnp.inf, logits)
    if bos_id is not None:
        logits = jnp.where(t == 0, jnp.where(vocab == bos_id, 0.0, -jnp.inf), logits)
    return logits


def _buffer(n: int, max_len: int, start_id: int, pad_id: int) -> jax.Array:
    """(n, max_len + 1): the decoder start token, then PAD; column t+1 receives generated token t."""
    return jnp.full((n, max_len + 1), pad_id, jnp.int32).at[:, 0].set(start_id)


def _sequential(logits_fn: LogitsFn, memory: Any, choose: Callable[[jax.Array, jax.Array], jax.Array], *,
                max_len: int, start_id: int, eos_id: int, pad_id: int, bos_id: Optional[int]):
    """One token per step for every row until all rows emitted EOS (or max_len); rows that are done
    receive PAD. Returns (ids (B, max_len) int32, lengths (B,) int32)."""
    n = jax.tree_util.tree_leaves(memory)[0].shape[0]

    def cond(state):
        t, _, done, _ = state
        return (t < max_len) & ~jnp.all(done)

    def body(state):
        t, buf, done, lengths = state
        logits = _prepare(logits_fn(memory, buf[:, :max_len], t), t, pad_id, bos_id)
        tok = jnp.where(done, pad_id, choose(logits, t).astype(jnp.int32))
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | (tok == eos_id)
        return t + 1, buf.at[:, t + 1].set(tok), done, lengths

    init = (jnp.int32(0), _buffer(n, max_len, start_id, pad_id), jnp.zeros((n,), bool), jnp.zeros((n,), jnp.int32))
    _, buf, _, lengths = jax.lax.while_loop(cond, body, init)
    return buf[:, 1:], lengths


def greedy_decode(logits_fn: LogitsFn, memory: Any, *, max_len: int, start_id: int, eos_id: int, pad_id: int,
                  bos_id: Optional[int] = None) -> Tuple[jax.Array, jax.Array]:
    """Argmax decoding; `memory` is a pytree of (B, ...) arrays passed to `logits_fn` unchanged."""
    return _sequential(logits_fn, memory, lambda logits, t: jnp.argmax(logits, axis=-1), max_len=max_len,
                       start_id=start_id, eos_id=eos_id, pad_id=pad_id, bos_id=bos_id)


def top_p_filter(logits: jax.Array, top_p: float) -> jax.Array:
    """Keeps the smallest set of most likely tokens whose probability reaches `top_p` (always the top
    one, so top_p -> 0 is greedy); the others get -inf."""
    sorted_logits = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability mass of strictly more likely tokens
    keep = (before < top_p).at[..., 0].set(True)
    kth = jnp.take_along_axis(sorted_logits, jnp.sum(keep, axis=-1, keepdims=True) - 1, axis=-1)
    return jnp.where(logits >= kth, logits, -jnp.inf)


def nucleus_sample(logits_fn: LogitsFn, memory: Any, rng: jax.Array, *, max_len: int, start_id: int, eos_id: int,
                   pad_id: int, bos_id: Optional[int] = None, top_p: float = 0.9,
                   temperature: float = 1.0) -> Tuple[jax.Array, jax.Array]:
    """Top-p sampling at `temperature`; step t draws with `fold_in(rng, t)`."""
    if not 0.0 <= top_p <= 1.0 or temperature <= 0:
        raise ValueError(f"nucleus_sample: need 0 <= top_p <= 1 and temperature > 0, got {top_p}, {temperature}")

    def choose(logits, t):
        return jax.random.categorical(jax.random.fold_in(rng, t), top_p_filter(logits / temperature, top_p))

    return _sequential(logits_fn, memory, choose, max_len=max_len, start_id=start_id, eos_id=eos_id,
                       pad_id=pad_id, bos_id=bos_id)


def beam_search(logits_fn: LogitsFn, memory: Any, *, beam_size: int, max_len: int, start_id: int, eos_id: int,
                pad_id: int, bos_id: Optional[int] = None, length_penalty: float = 1.0) -> Tuple[jax.Array, jax.Array]:
    """Beam search returning the best hypothesis per row, ranked by sum log p / length ** length_penalty
    (HF's convention; 0 ranks by total log-probability; length counts generated tokens incl. EOS).

    Alive beams and finished hypotheses are kept apart: each step takes the 2K best extensions;
    an EOS among the first K finishes a hypothesis, the best K non-EOS ones stay alive (so K=1 with
    length_penalty=0 is greedy decoding). The loop stops when no alive beam can still beat the worst
    kept hypothesis; beams still alive at max_len compete as unfinished hypotheses.
    """
    k, neg = int(beam_size), -jnp.inf
    if k < 1:
        raise ValueError(f"beam_search: beam_size={beam_size} must be >= 1")
    b = jax.tree_util.tree_leaves(memory)[0].shape[0]
    mem = jax.tree_util.tree_map(lambda x: jnp.repeat(x, k, axis=0), memory)
    alpha = float(length_penalty)
    norm = lambda score, length: score / jnp.power(length.astype(jnp.float32), alpha)
    take = lambda x, idx: jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

    def cond(state):
        t, _, alive_score, _, fin_score, _ = state
        # alive scores only fall; for a future length l in [t+1, max_len] the normalised value is at most
        # score / max(l ** alpha) since scores are <= 0.
        lmax = jnp.maximum(jnp.power(jnp.float32(t + 1), alpha), jnp.power(jnp.float32(max_len), alpha))
        can_improve = jnp.max(alive_score, axis=1) / lmax > jnp.min(fin_score, axis=1)
        return (t < max_len) & jnp.any(can_improve)

    def body(state):
        t, alive_seq, alive_score, fin_seq, fin_score, fin_len = state
        logits = logits_fn(mem, alive_seq.reshape(b * k, -1)[:, :max_len], t)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        logp = _prepare(logp, t, pad_id, bos_id).reshape(b, k, -1)
        v = logp.shape[-1]
        cand = (alive_score[..., None] + logp).reshape(b, k * v)
        score, idx = jax.lax.top_k(cand, 2 * k)
        seq = take(alive_seq, idx // v).at[:, :, t + 1].set((idx % v).astype(jnp.int32))
        is_eos = (idx % v) == eos_id
        # Alive: the best K extensions that did not end.
        a_score, a_idx = jax.lax.top_k(jnp.where(is_eos, neg, score), k)
        alive_seq, alive_score = take(seq, a_idx), a_score
        # Finished: EOS extensions ranked within the top K, merged with those kept so far.
        ended = is_eos & (jnp.arange(2 * k) < k)[None]
        length = jnp.full((b, 2 * k), t + 1, jnp.int32)
        all_score = jnp.concatenate([fin_score, jnp.where(ended, norm(score, length), neg)], axis=1)
        all_seq = jnp.concatenate([fin_seq, seq], axis=1)
        all_len = jnp.concatenate([fin_len, length], axis=1)
        fin_score, f_idx = jax.lax.top_k(all_score, k)
        return t + 1, alive_seq, alive_score, take(all_seq, f_idx), fin_score, take(all_len, f_idx)

    buf = _buffer(b * k, max_len, start_id, pad_id).reshape(b, k, max_len + 1)
    first = jnp.concatenate([jnp.zeros((b, 1)), jnp.full((b, k - 1), neg)], axis=1)  # identical beams: expand one
    init = (jnp.int32(0), buf, first, buf, jnp.full((b, k), neg), jnp.zeros((b, k), jnp.int32))
    _, alive_seq, alive_score, fin_seq, fin_score, fin_len = jax.lax.while_loop(cond, body, init)
    # Beams that never ended compete at length max_len.
    scores = jnp.concatenate([fin_score, norm(alive_score, jnp.full((b, k), max_len))], axis=1)
    seqs = jnp.concatenate([fin_seq, alive_seq], axis=1)
    lengths = jnp.concatenate([fin_len, jnp.full((b, k), max_len, jnp.int32)], axis=1)
    best = jnp.argmax(scores, axis=1)
    return take(seqs, best[:, None])[:, 0, 1:], take(lengths, best[:, None])[:, 0]


def generate(model: ReportAutoencoder, params: Any, vectors: jax.Array, *, method: str = "greedy",
             max_len: int = 64, rng: Optional[jax.Array] = None, beam_size: int = 4, length_penalty: float = 1.0,
             top_p: float = 0.9, temperature: float = 1.0, forced_bos: bool = True) -> Tuple[jax.Array, jax.Array]:
    """Reports from text vectors (B, D) -> (ids (B, max_len) int32, lengths (B,) int32).

    `params` is the ReportAutoencoder's "params" collection. Special ids come from `model.config`;
    `forced_bos` makes the first token BOS (as training targets start with it). Jit with `method`,
    `max_len` and `beam_size` static, e.g. `jax.jit(functools.partial(generate, model, method="beam"))`.
    """
    cfg = model.config
    if max_len > cfg.max_position_embeddings:
        raise ValueError(f"generate: max_len={max_len} exceeds max_position_embeddings={cfg.max_position_embeddings}")

    def logits_fn(vec, ids, t):
        return model.apply({"params": params}, vec, ids, t, method=ReportAutoencoder.next_token_logits)

    ids = dict(max_len=max_len, start_id=cfg.decoder_start_token_id, eos_id=cfg.eos_token_id,
               pad_id=cfg.pad_token_id, bos_id=cfg.bos_token_id if forced_bos else None)
    if method == "greedy":
        return greedy_decode(logits_fn, vectors, **ids)
    if method == "beam":
        return beam_search(logits_fn, vectors, beam_size=beam_size, length_penalty=length_penalty, **ids)
    if method == "nucleus":
        if rng is None:
            raise ValueError("generate(method='nucleus') needs an rng")
        return nucleus_sample(logits_fn, vectors, rng, top_p=top_p, temperature=temperature, **ids)
    raise ValueError(f"generate: method={method!r} is not one of {METHODS}")
