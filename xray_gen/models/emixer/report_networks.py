"""EMIXER report networks (paper §3.2.2-3.2.3): report generator F and the report / joint discriminators.

Report layout is the tokenizer's hierarchical encoding (`ReportTokenizer.encode_hierarchical`):
ids (B, S, W) int32, mask (B, S, W) 1 on real tokens (EOS included), PAD=0 elsewhere; a sentence
is real iff any of its tokens is.

`ReportGenerator` F(image -> report):
  image -> DenseNet (submodule "encoder", the foundation classifier's network, so its params can be
  loaded from a trained classifier) -> pooled features (+ with `label_tags` its 14 finding
  probabilities, Jing et al.'s semantic tags) -> Dense+ReLU -> v (feature_dim);
  sentence LSTM fed v at every step (+ with `sentence_feedback` the mean word embedding of the
  previous sentence, teacher-forced in training, F's own when decoding) -> h_i -> stop logit
  (CONTINUE=0 / STOP=1: "sentence i is the last") and topic t_i (an MLP of `topic_layers` layers);
  word LSTM (`word_layers` stacked cells) fed t_i, then BOS, then the previous word; the last
  layer's state predicts the next word (sentence i's word w from the step after word w-1).
  The paper's F is the plain form (both options off): its sentence LSTM cannot know what it has
  written, so greedy decoding repeats the likeliest sentence.

Decoding (all jittable, fixed S and W), sentence by sentence: `greedy`, `beam_search` (beams per
sentence; the best one is what the next sentence sees), and `decode_soft`, the differentiable path
for adversarial training: per-step distributions (softmax, or Gumbel-softmax with optional
straight-through) fed back as soft embeddings.

Report discriminators take `tokens` as either ids (B, S, W) int or distributions (B, S, W, V)
float and embed both through `tokens @ E` (ids as one-hot), so real and generated reports share
one embedding path and gradients reach F (and G through F's image input).

Freezing the encoder: `encoder_trainable=False` runs the DenseNet with its running BN statistics;
the *task* must additionally leave its parameters out of the optimiser (`encoder_param_mask`).
Do not use stop_gradient on features for that: G needs gradients through F's image input.
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from xray_gen.data.schema import NUM_LABELS
from xray_gen.data.tokenizer import ReportTokenizer
from xray_gen.nn.densenet import DENSENET121_BLOCKS, DenseNet
from xray_gen.nn.text import EMBED_INIT, compact
from xray_gen.models.emixer.image_networks import d_architecture, down_stack

PAD, BOS, EOS = ReportTokenizer.PAD, ReportTokenizer.BOS, ReportTokenizer.EOS
_NEG = -1e9


def sentence_mask_from_stop(stop_logits, threshold: float = 0.5):
    """(B, S) float: sentence i is generated iff no earlier sentence had p(STOP) > threshold.

    p(STOP)_i is "sentence i is the last", so the sentence that stops is itself included.
    """
    stop = jax.nn.sigmoid(stop_logits) > threshold
    earlier = jnp.cumsum(stop.astype(jnp.int32), axis=-1) - stop.astype(jnp.int32)
    return (earlier == 0).astype(jnp.float32)


def word_mask_from_ids(ids):
    """(…, W) float: 1 up to and including the first EOS (all W positions when there is none)."""
    is_eos = (ids == EOS).astype(jnp.int32)
    before = jnp.cumsum(is_eos, axis=-1) - is_eos
    return (before == 0).astype(jnp.float32)


def _finish(ids, sent_mask):
    """ids with PAD after each sentence's EOS and in dropped sentences, plus mask and lengths."""
    mask = word_mask_from_ids(ids) * sent_mask[..., None]
    ids = jnp.where(mask > 0, ids, PAD).astype(jnp.int32)
    return {
        "ids": ids,
        "mask": mask,
        "word_lengths": mask.sum(-1).astype(jnp.int32),
        "num_sentences": sent_mask.sum(-1).astype(jnp.int32),
    }


class _WordCore(nn.Module):
    """One step of the stacked word LSTM: (carry, input embedding) -> (carry, vocabulary logits)."""

    vocab_size: int
    embed_dim: int
    hidden: int
    num_layers: int

    def setup(self):
        self.embed = nn.Embed(self.vocab_size, self.embed_dim, embedding_init=EMBED_INIT)
        self.cells = [nn.OptimizedLSTMCell(self.hidden) for _ in range(self.num_layers)]
        self.out = nn.Dense(self.vocab_size)

    def initial_carry(self, n):
        z = jnp.zeros((n, self.hidden), jnp.float32)
        return tuple((z, z) for _ in range(self.num_layers))

    def embed_ids(self, ids):
        return self.embed(ids)

    def embed_dist(self, dist):
        """Soft embedding of a distribution over the vocabulary: dist @ E."""
        return dist @ self.embed.embedding

    def __call__(self, carry, x):
        new, h = [], x
        for cell, c in zip(self.cells, carry):
            c, h = cell(c, h)
            new.append(c)
        return tuple(new), self.out(h)


def _scan(fn, length=None, in_axes=1):
    """Lift `fn(core, carry, x)` over time with the core's params shared across steps."""
    return nn.scan(fn, variable_broadcast="params", split_rngs={"params": False}, in_axes=in_axes,
                   out_axes=1, length=length)


def _gather_beams(x, parent):
    """x (N, K, ...) reordered along K by parent (N, K)."""
    idx = parent.reshape(parent.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


class ReportGenerator(nn.Module):
    """F: images (B, H, W, C) -> hierarchical report. See the module docstring for the layout.

    `__call__(images, ids, train)` is teacher forcing: returns {"word_logits" (B, S, W, V),
    "stop_logits" (B, S), "features" (B, feature_dim)}. `ids` (B, S, W) are the targets; inputs are
    shifted inside (topic, BOS, ids[:, :, :-1]).
    """

    vocab_size: int
    max_sentences: int = 8
    max_words: int = 24
    feature_dim: int = 512
    sentence_hidden: int = 512
    topic_layers: int = 3
    embed_dim: int = 512
    word_hidden: int = 512
    word_layers: int = 3
    encoder_blocks: Sequence[int] = DENSENET121_BLOCKS
    encoder_growth_rate: int = 32
    encoder_init_features: int = 64
    encoder_small_input: bool = False
    encoder_trainable: bool = True
    label_tags: bool = False
    sentence_feedback: bool = False

    def setup(self):
        self.encoder = DenseNet(
            num_classes=NUM_LABELS, block_sizes=tuple(self.encoder_blocks), growth_rate=self.encoder_growth_rate,
            init_features=self.encoder_init_features, small_input=self.encoder_small_input,
        )
        self.feature_proj = nn.Dense(self.feature_dim)
        self.sentence_cell = nn.OptimizedLSTMCell(self.sentence_hidden)
        self.stop_head = nn.Dense(1)
        hidden = [nn.Dense(self.sentence_hidden) for _ in range(self.topic_layers - 1)]
        self.topic_mlp = hidden + [nn.Dense(self.embed_dim)]  # the last layer is linear, sized for the word LSTM
        self.word = _WordCore(self.vocab_size, self.embed_dim, self.word_hidden, self.word_layers)

    # ------------------------------------------------------------------------------ image side
    def encode(self, images, train: bool = False):
        """v (B, feature_dim): DenseNet pooled features (+ its label probabilities) -> Dense -> ReLU."""
        logits, feats = self.encoder(images, train=train and self.encoder_trainable)
        if self.label_tags:  # Jing et al.'s semantic tags: the encoder's own 14 finding probabilities
            feats = jnp.concatenate([feats, jax.nn.sigmoid(logits)], axis=-1)
        return nn.relu(self.feature_proj(feats))

    def _sentence_step(self, c, v, previous):
        """One sentence-LSTM step -> (carry, topic (B, embed_dim), stop logit (B,)).

        `previous` (B, embed_dim) summarises the sentence before (zeros for the first); it is an
        input only with `sentence_feedback`, so F knows what it has said (no repeated sentences).
        """
        x = jnp.concatenate([v, previous], axis=-1) if self.sentence_feedback else v
        c, h = self.sentence_cell(c, x)
        t = h
        for i, layer in enumerate(self.topic_mlp):
            t = layer(t)
            if i < len(self.topic_mlp) - 1:
                t = nn.relu(t)
        return c, t, self.stop_head(h)[:, 0]

    def _sentence_summary(self, ids, dist=None):
        """Mean word embedding of one sentence's ids (B, W) up to its first EOS, PAD left out; with
        `dist` (B, W, V) the soft embeddings of those positions (decode_soft's gradient path)."""
        mask = word_mask_from_ids(ids) * (ids != PAD)
        emb = self.word.embed_ids(ids) if dist is None else self.word.embed_dist(dist)
        return (emb * mask[..., None]).sum(1) / jnp.maximum(mask.sum(1, keepdims=True), 1.0)

    def _initial(self, v):
        return (jnp.zeros((v.shape[0], self.sentence_hidden)),) * 2, jnp.zeros((v.shape[0], self.embed_dim))

    def _start(self, topics):
        """Word-LSTM carry after the topic step, for the N rows of `topics` (N, embed_dim)."""
        carry, _ = self.word(self.word.initial_carry(topics.shape[0]), topics)
        return carry

    # --------------------------------------------------------------------------- teacher forcing
    def __call__(self, images, ids, train: bool = False):
        b, s, w = ids.shape
        if s != self.max_sentences or w != self.max_words:
            raise ValueError(f"ReportGenerator: ids shape {ids.shape} does not match (B, max_sentences="
                             f"{self.max_sentences}, max_words={self.max_words})")
        ids = ids.astype(jnp.int32)
        v = self.encode(images, train)
        c, previous = self._initial(v)
        topics, stops = [], []
        for i in range(s):  # sentence feedback is teacher-forced too: the true previous sentence
            c, t, stop = self._sentence_step(c, v, previous)
            topics.append(t)
            stops.append(stop)
            previous = self._sentence_summary(ids[:, i])
        carry = self._start(jnp.stack(topics, 1).reshape(b * s, -1))
        flat = ids.reshape(b * s, w)
        inputs = jnp.concatenate([jnp.full((b * s, 1), BOS, jnp.int32), flat[:, :-1]], axis=1)

        def body(core, c, tok):
            return core(c, core.embed_ids(tok))

        _, logits = _scan(body)(self.word, carry, inputs)
        return {"word_logits": logits.reshape(b, s, w, -1), "stop_logits": jnp.stack(stops, 1), "features": v}

    # --------------------------------------------------------------------------------- decoding
    def _decode(self, v, decode_sentence):
        """Sentence by sentence: topic -> `decode_sentence(word carry, index)` -> (outputs, summary).

        Returns (per-sentence outputs stacked on axis 1, stop_logits (B, S)). Sentences are decoded
        in order so that, with `sentence_feedback`, each topic sees the sentence F actually wrote.
        """
        c, previous = self._initial(v)
        outs, stops = [], []
        for i in range(self.max_sentences):
            c, t, stop = self._sentence_step(c, v, previous)
            out, previous = decode_sentence(self._start(t), i)
            outs.append(out)
            stops.append(stop)
        return jax.tree_util.tree_map(lambda *x: jnp.stack(x, 1), *outs), jnp.stack(stops, 1)

    def greedy(self, images, stop_threshold: float = 0.5):
        """Greedy report: {"ids", "mask" (B, S, W), "word_lengths" (B, S), "num_sentences" (B,)}.

        A sentence ends at its first EOS (kept, as in the tokenizer's encoding); the report ends
        after the first sentence whose p(STOP) exceeds `stop_threshold`.
        """
        v = self.encode(images, False)
        n = v.shape[0]

        def body(core, state, _):
            c, emb = state
            c, logits = core(c, emb)
            tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            return (c, core.embed_ids(tok)), tok

        def sentence(carry, _):
            bos = self.word.embed_ids(jnp.full((n,), BOS, jnp.int32))
            _, toks = _scan(body, length=self.max_words, in_axes=0)(self.word, (carry, bos), None)
            return toks, self._sentence_summary(toks)

        ids, stop_logits = self._decode(v, sentence)
        return _finish(ids, sentence_mask_from_stop(stop_logits, stop_threshold))

    def beam_search(self, images, beam_size: int = 4, length_penalty: float = 0.0, stop_threshold: float = 0.5):
        """Beam search over each sentence's words; same outputs as `greedy` (plus "scores" (B, S)).

        Finished beams (EOS emitted) only extend with PAD at no cost. The best beam maximises
        log p / length**length_penalty (0: plain log-probability). Beam 1 reproduces `greedy`.
        """
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        v = self.encode(images, False)
        n, k, w, vocab = v.shape[0], beam_size, self.max_words, self.vocab_size
        tile = lambda x: jnp.repeat(x, k, axis=0)  # (N, ...) -> (N*K, ...), beams of a sentence adjacent
        pad_only = jnp.where(jnp.arange(vocab) == PAD, 0.0, _NEG)

        def body(core, state, t):
            c, emb, scores, finished, tokens = state
            c, logits = core(c, emb)
            logp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(n, k, vocab)
            logp = jnp.where(finished[..., None], pad_only, logp)
            top, idx = jax.lax.top_k((scores[..., None] + logp).reshape(n, k * vocab), k)
            parent, tok = idx // vocab, (idx % vocab).astype(jnp.int32)
            c = jax.tree_util.tree_map(lambda x: _gather_beams(x.reshape(n, k, -1), parent).reshape(n * k, -1), c)
            tokens = _gather_beams(tokens, parent)
            tokens = jnp.where(jnp.arange(w) == t, tok[..., None], tokens)
            finished = _gather_beams(finished, parent) | (tok == EOS)
            return (c, core.embed_ids(tok.reshape(-1)), top, finished, tokens), None

        def sentence(carry, _):
            carry = jax.tree_util.tree_map(tile, carry)
            emb = self.word.embed_ids(jnp.full((n * k,), BOS, jnp.int32))
            # Only beam 0 is alive at first; dead beams (also those left when K > V) keep a ~-1e9 score.
            scores = jnp.where(jnp.arange(k) == 0, 0.0, _NEG)[None].repeat(n, 0)
            state = (carry, emb, scores, jnp.zeros((n, k), bool), jnp.full((n, k, w), PAD, jnp.int32))
            state, _ = _scan(body, in_axes=0)(self.word, state, jnp.arange(w))
            _, _, scores, _, tokens = state
            lengths = word_mask_from_ids(tokens).sum(-1)
            ranked = scores / lengths ** length_penalty if length_penalty else scores
            best = jnp.argmax(ranked, axis=-1)
            ids = jnp.take_along_axis(tokens, best[:, None, None], axis=1)[:, 0]
            score = jnp.take_along_axis(scores, best[:, None], axis=1)[:, 0]
            return (ids, score), self._sentence_summary(ids)

        (ids, scores), stop_logits = self._decode(v, sentence)
        out = _finish(ids, sentence_mask_from_stop(stop_logits, stop_threshold))
        out["scores"] = scores
        return out

    def decode_soft(self, images, rng=None, temperature: float = 1.0, gumbel: bool = False,
                    straight_through: bool = False, train: bool = False, stop_threshold: float = 0.5):
        """Differentiable free-running decoding for the adversarial losses.

        Each step's distribution p = softmax((logits [+ Gumbel noise]) / temperature) (B, S, W, V) is
        fed back as the soft embedding p @ E. With `straight_through` the forward value is the
        one-hot of argmax p, the gradient that of p. Returns {"dist", "ids" (argmax), "mask",
        "word_lengths", "num_sentences", "stop_logits", "features"}; the mask is hard (from the ids
        and stop probabilities) and carries no gradient. `rng` is required when `gumbel`.
        """
        if gumbel and rng is None:
            raise ValueError("decode_soft(gumbel=True) needs an rng")
        v_feat = self.encode(images, train)
        n, w, v = v_feat.shape[0], self.max_words, self.vocab_size

        def body(core, state, g):
            c, emb = state
            c, logits = core(c, emb)
            p = jax.nn.softmax((logits.astype(jnp.float32) + g) / temperature, axis=-1)
            if straight_through:
                hard = jax.nn.one_hot(jnp.argmax(p, axis=-1), v, dtype=p.dtype)
                p = hard + p - jax.lax.stop_gradient(p)
            return (c, core.embed_dist(p)), p

        def sentence(carry, i):
            if gumbel:
                noise = jax.random.gumbel(jax.random.fold_in(rng, i), (n, w, v), jnp.float32)
            else:
                noise = jnp.zeros((n, w, 1), jnp.float32)
            bos = self.word.embed_ids(jnp.full((n,), BOS, jnp.int32))
            _, dist = _scan(body)(self.word, (carry, bos), noise)
            return dist, self._sentence_summary(jnp.argmax(dist, axis=-1), dist)

        dist, stop_logits = self._decode(v_feat, sentence)
        out = _finish(jnp.argmax(dist, axis=-1), sentence_mask_from_stop(stop_logits, stop_threshold))
        out.update(dist=dist * out["mask"][..., None], stop_logits=stop_logits, features=v_feat)
        return out


def encoder_param_mask(params):
    """Pytree of bools over F's params: True for the image encoder (DenseNet) leaves.

    For `optax.masked` / `optax.multi_transform` when the encoder is frozen (`encoder_trainable=False`).
    """
    return {k: jax.tree_util.tree_map(lambda _: k == "encoder", v) for k, v in params.items()}


def embed_tokens(tokens, embedding):
    """(…, E) embeddings of ids (int, via one-hot) or distributions (float, (…, V)) by `tokens @ E`."""
    if jnp.issubdtype(tokens.dtype, jnp.integer):
        tokens = jax.nn.one_hot(tokens, embedding.shape[0], dtype=embedding.dtype)
    if tokens.shape[-1] != embedding.shape[0]:
        raise ValueError(f"token distributions have {tokens.shape[-1]} classes, vocabulary has {embedding.shape[0]}")
    return tokens @ embedding


class ReportLSTMEncoder(nn.Module):
    """Report (ids or distributions (B, S, W[, V]) + mask (B, S, W)) -> last LSTM hidden state (B, hidden).

    Flat (the default): real tokens of all sentences are packed, in order, into one sequence (the
    same stable packing as `xray_gen.nn.text.compact`), so padding never reaches the LSTM.
    `hierarchical`: a word LSTM reads each sentence (all sentences side by side) and a sentence
    LSTM reads their last states: W + S sequential steps instead of S * W, which is most of a
    joint step's time on a CPU (the critics read real and generated reports several times a step).
    An empty report gives zeros either way.
    """

    vocab_size: int
    embed_dim: int = 256
    hidden: int = 512
    hierarchical: bool = False

    def _last_state(self, x, m, name):
        """Last hidden state of an LSTM over the real steps of x (N, L, E) (m (N, L) marks them)."""
        perm, lengths = compact(m)
        x = jnp.take_along_axis(x, perm[..., None], axis=1)
        cell = nn.OptimizedLSTMCell(self.hidden, name=name)
        (_, h), _ = nn.RNN(cell, return_carry=True)(x, seq_lengths=lengths)
        return jnp.where((lengths > 0)[:, None], h, 0.0)

    @nn.compact
    def __call__(self, tokens, mask):
        table = self.param("embedding", EMBED_INIT, (self.vocab_size, self.embed_dim))
        x = embed_tokens(tokens, table)
        b, s, w = mask.shape
        if not self.hierarchical:
            return self._last_state(x.reshape(b, s * w, self.embed_dim), mask.reshape(b, s * w), "lstm")
        words = self._last_state(x.reshape(b * s, w, self.embed_dim), mask.reshape(b * s, w), "word_lstm")
        return self._last_state(words.reshape(b, s, self.hidden), (mask.sum(-1) > 0).astype(mask.dtype),
                                "sentence_lstm")


class ReportDiscriminator(nn.Module):
    """D_report(tokens, mask) -> score (B,): LSTM over report embeddings -> last hidden -> linear."""

    vocab_size: int
    embed_dim: int = 256
    hidden: int = 512
    hierarchical: bool = False

    @nn.compact
    def __call__(self, tokens, mask):
        h = ReportLSTMEncoder(self.vocab_size, self.embed_dim, self.hidden, self.hierarchical, name="encoder")(tokens, mask)
        return nn.Dense(1, name="score")(h)[:, 0]


class JointDiscriminator(nn.Module):
    """D_joint(images, tokens, mask, train) -> score (B,).

    Image features from a small spectrally normalised residual CNN (sum-pooled, like D_image's
    trunk) and the report's last LSTM state -> Dense(report_dim) are concatenated -> linear score.
    """

    vocab_size: int
    ch: int = 32
    channel_multipliers: Optional[Sequence[int]] = None
    downsample: Optional[Sequence[bool]] = None
    embed_dim: int = 256
    hidden: int = 512
    report_dim: int = 256
    spectral_norm: bool = True
    hierarchical: bool = False

    @nn.compact
    def __call__(self, images, tokens, mask, train: bool = False):
        mult, down = d_architecture(images.shape[1], self.channel_multipliers, self.downsample, "JointDiscriminator")
        img = down_stack(images.astype(jnp.float32), self.ch, mult, down, None, self.spectral_norm, train,
                         prefix="image")
        rep = ReportLSTMEncoder(self.vocab_size, self.embed_dim, self.hidden, self.hierarchical, name="encoder")(tokens,
                                                                                                          mask)
        rep = nn.Dense(self.report_dim, name="report_proj")(rep)
        return nn.Dense(1, name="score")(jnp.concatenate([img, rep], axis=-1))[:, 0]
