"""CXR-IRGen language module: pooled-vector autoencoder, masked losses, prior, decoding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xray_gen.data.tokenizer import ReportTokenizer
from xray_gen.models.cxr_irgen import language as lang
from xray_gen.nn.bart import REPORT_TOKENIZER_IDS, Bart, bart_config

from test_bart import random_params  # tests/ is on sys.path

# One layer per stack keeps compile times low (stacking is covered by test_bart.py).
CFG = bart_config("tiny", vocab_size=30, d_model=32, encoder_layers=1, decoder_layers=1, max_position_embeddings=16,
                  dropout=0.0, **REPORT_TOKENIZER_IDS)
PAD, BOS, EOS = ReportTokenizer.PAD, ReportTokenizer.BOS, ReportTokenizer.EOS
MAX_LEN = 10


def test_report_tokenizer_ids_match():
    assert (CFG.pad_token_id, CFG.bos_token_id, CFG.eos_token_id) == (PAD, BOS, EOS)


@pytest.fixture(scope="module")
def tiny():
    """ReportAutoencoder with perturbed 1-d params (an EOS-friendly final bias) and a padded batch."""
    rng = np.random.default_rng(0)
    ids = np.full((3, 8), PAD, np.int32)
    mask = np.zeros((3, 8), np.float32)
    for row, n in enumerate((8, 5, 3)):
        ids[row, :n] = [BOS] + list(rng.integers(4, CFG.vocab_size, n - 2)) + [EOS]
        mask[row, :n] = 1
    model = lang.ReportAutoencoder(CFG)
    params = random_params(model, ids, mask)
    params["bart"]["final_logits_bias"][EOS] += 4.5  # rows end at varied lengths (some never)
    return model, params, ids, mask


# ---------------------------------------------------------------------------------------- pooling


def test_masked_mean_and_pooling_ignore_padding():
    states = jnp.array([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]],
                        [[5.0, 6.0], [-50.0, 50.0], [7.0, 8.0]]])
    mask = jnp.array([[1, 1, 0], [1, 0, 1]])
    np.testing.assert_allclose(lang.masked_mean(states, mask), [[2.0, 3.0], [6.0, 7.0]])
    np.testing.assert_allclose(lang.masked_mean(states, jnp.zeros((2, 3))), 0.0)  # no NaN for empty rows
    np.testing.assert_allclose(lang.pool_states(states, mask, "bos"), [[1.0, 2.0], [5.0, 6.0]])
    np.testing.assert_allclose(lang.pool_states(states, mask, "eos"), [[3.0, 4.0], [7.0, 8.0]])
    with pytest.raises(ValueError, match="pooling='max'"):
        lang.pool_states(states, mask, "max")


# ----------------------------------------------------------------------------------------- losses


def test_cross_entropy_hand_computed_and_ignores_padding():
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]]))
    targets = jnp.array([[0, 1, 2]])
    mask = jnp.array([[1.0, 1.0, 0.0]])
    want = -(np.log(0.5) + np.log(0.8)) / 2
    np.testing.assert_allclose(lang.reconstruction_loss(logits, targets, mask), want, rtol=1e-6)
    np.testing.assert_allclose(lang.reconstruction_loss(logits, jnp.array([[0, 1, 0]]), mask), want, rtol=1e-6)
    np.testing.assert_allclose(lang.token_accuracy(logits, targets, mask), 1.0)
    with pytest.raises(ValueError, match="do not agree"):
        lang.reconstruction_loss(logits, targets[:, :2], mask[:, :2])


def test_autoencoder_loss_ignores_padded_tokens(tiny):
    """Whatever sits in padded positions (encoder input, decoder input, target) leaves the loss unchanged."""
    model, params, ids, mask = tiny
    loss = jax.jit(lambda i: lang.reconstruction_loss(model.apply({"params": params}, i, mask), i, mask))
    noisy = np.where(mask > 0, ids, np.random.default_rng(1).integers(4, CFG.vocab_size, ids.shape)).astype(np.int32)
    np.testing.assert_allclose(loss(noisy), loss(ids), rtol=1e-6)
    # ... while a real token does change it.
    changed = ids.copy()
    changed[2, 1] = (changed[2, 1] + 1 - 4) % (CFG.vocab_size - 4) + 4
    assert abs(float(loss(changed)) - float(loss(ids))) > 1e-4


def test_decoder_sees_only_the_pooled_vector(tiny):
    """Two different encoder-state sets with the same masked mean decode identically; the standard
    full cross-attention path tells them apart."""
    model, params, ids, mask = tiny
    encode = lambda m, i, k: m.bart.encode(i, k)
    states = jax.jit(lambda i: model.apply({"params": params}, i, mask, method=encode))(ids)
    rng = np.random.default_rng(2)
    delta = rng.standard_normal(states.shape).astype(np.float32) * mask[..., None]
    delta -= lang.masked_mean(delta, mask)[:, None, :] * mask[..., None]  # zero masked mean
    delta += rng.standard_normal(states.shape).astype(np.float32) * (1 - mask[..., None])  # padding noise
    other = states + delta
    np.testing.assert_allclose(lang.masked_mean(other, mask), lang.masked_mean(states, mask), atol=1e-5)
    dec = np.asarray(jax.vmap(lambda r: jnp.roll(r, 1))(ids)).astype(np.int32)
    pooled = jax.jit(lambda s: model.apply({"params": params}, s, mask, dec, method=model.decode_from_states))
    np.testing.assert_allclose(pooled(other), pooled(states), rtol=1e-5, atol=1e-5)
    full = jax.jit(lambda s: Bart(CFG).apply({"params": params["bart"]}, dec, s, mask, method=Bart.decode))
    assert np.max(np.abs(full(other) - full(states))) > 1e-3
    # encode_report is exactly that pooled vector.
    vec = model.apply({"params": params}, ids, mask, method=model.encode_report)
    np.testing.assert_allclose(vec, lang.masked_mean(states, mask), rtol=1e-5, atol=1e-6)


def test_stage1_learns_reconstruction(tiny):
    """A few Adam steps on a fixed batch cut the masked loss substantially (gradients reach both halves)."""
    model, params, ids, mask = tiny
    opt = optax.adam(3e-3)

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(lambda q: lang.reconstruction_loss(model.apply({"params": q}, ids, mask),
                                                                        ids, mask))(p)
        upd, s = opt.update(g, s)
        return optax.apply_updates(p, upd), s, loss, g

    p, s = params, opt.init(params)
    p, s, first, g = step(p, s)
    assert float(jnp.abs(g["bart"]["encoder"]["layers_0"]["fc1"]["kernel"]).sum()) > 0
    for _ in range(40):
        p, s, last, _ = step(p, s)
    assert float(last) < 0.5 * float(first)


# ------------------------------------------------------------------------------------------ prior


def test_prior_loss_hand_computed():
    pred = jnp.array([[1.0, 0.0], [1.0, 1.0]])
    target = jnp.array([[0.0, 1.0], [2.0, 2.0]])
    mse = ((1 + 1) / 2 + (1 + 1) / 2) / 2  # 1.0
    one_minus_cos = ((1 - 0.0) + (1 - 1.0)) / 2  # orthogonal, parallel -> 0.5
    np.testing.assert_allclose(lang.prior_loss(pred, target), mse + 0.01 * one_minus_cos, rtol=1e-6)
    np.testing.assert_allclose(lang.prior_loss(pred, target, "mse"), mse, rtol=1e-6)
    np.testing.assert_allclose(lang.prior_loss(pred, target, "cosine"), one_minus_cos, rtol=1e-6)
    np.testing.assert_allclose(lang.prior_loss(pred, target, cosine_weight=1.0), mse + one_minus_cos, rtol=1e-6)
    with pytest.raises(ValueError, match="kind='l1'"):
        lang.prior_loss(pred, target, "l1")


def test_prior_vit():
    cfg = lang.prior_config("tiny", "latents", out_dim=32)
    assert (cfg.input_size, cfg.in_channels, cfg.patch_size, cfg.num_patches) == (32, 4, 2, 256)
    prior = lang.LatentPrior(cfg)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 4))
    params = random_params(prior, x)
    assert params["pos_embedding"].shape == (1, 257, cfg.width)  # [CLS] + 16 x 16 patches
    out = jax.jit(prior.apply)({"params": params}, x)
    assert out.shape == (2, 32) and out.dtype == jnp.float32
    # The output depends on every patch (attention mixes them into [CLS]).
    moved = jax.jit(prior.apply)({"params": params}, x.at[:, 31, 31, :].add(1.0))
    assert np.max(np.abs(moved - out)) > 1e-5
    with pytest.raises(ValueError, match="expected input"):
        prior.apply({"params": params}, jnp.zeros((2, 32, 32, 1)))
    # Pixel ablation: the paper-size geometry gives 256 tokens too (shapes only: cheap).
    pix = lang.prior_config("tiny", "pixels", out_dim=32, pooling="mean")
    assert (pix.input_size, pix.in_channels, pix.num_patches) == (256, 1, 256)
    shapes = jax.eval_shape(lang.LatentPrior(pix).init, jax.random.key(0), jnp.zeros((1, 256, 256, 1)))
    assert shapes["params"]["pos_embedding"].shape == (1, 256, pix.width)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        lang.prior_config("tiny", "latents", input_size=30, patch_size=4)


# --------------------------------------------------------------------------------------- decoding


def _scripted_logits(k_per_row, vocab=12):
    """logits_fn whose argmax is token 4 + t until step k (per row), then EOS for sure, then junk again:
    a decoder that does not stop at EOS would keep emitting tokens."""
    k = jnp.asarray(k_per_row)

    def fn(memory, ids, t):
        tok = jnp.where(t == k, EOS, 4 + (t % (vocab - 4)))
        return 20.0 * jax.nn.one_hot(tok, vocab) + 0.01 * memory
    return fn


def test_greedy_stops_at_eos():
    memory = jnp.zeros((2, 12))
    ids, lengths = jax.jit(functools.partial(lang.greedy_decode, _scripted_logits([3, 5]), max_len=MAX_LEN,
                                             start_id=EOS, eos_id=EOS, pad_id=PAD))(memory)
    np.testing.assert_array_equal(lengths, [4, 6])
    np.testing.assert_array_equal(ids[0], [4, 5, 6, EOS] + [PAD] * 6)
    np.testing.assert_array_equal(ids[1], [4, 5, 6, 7, 8, EOS] + [PAD] * 4)
    # Forced BOS replaces the first token; a row that never ends fills max_len.
    ids, lengths = lang.greedy_decode(_scripted_logits([3, 99]), memory, max_len=MAX_LEN, start_id=EOS,
                                      eos_id=EOS, pad_id=PAD, bos_id=BOS)
    np.testing.assert_array_equal(ids[0, :4], [BOS, 5, 6, EOS])
    np.testing.assert_array_equal(lengths, [4, MAX_LEN])
    assert not np.any(np.asarray(ids[1]) == PAD)


def test_beam_finds_better_sequence_than_greedy():
    """Greedy takes A (p=.6) then a flat continuation; beam 2 finds B (p=.4) then a certain EOS."""
    a, b, v = 4, 5, 8

    def fn(memory, ids, t):
        prev = ids[jnp.arange(ids.shape[0]), t]
        first = jnp.log(jnp.array([1e-9] * 4 + [0.6, 0.4, 1e-9, 1e-9]))
        after_a = jnp.log(jnp.full((v,), 1.0 / v))
        after_b = jnp.log(jnp.array([1e-9] * EOS + [1.0] + [1e-9] * (v - EOS - 1)))
        out = jnp.where((prev == a)[:, None], after_a, jnp.where((prev == b)[:, None], after_b, after_a))
        return jnp.where(t == 0, first[None], out) + 0 * memory[:, :1]

    kw = dict(max_len=4, start_id=1, eos_id=EOS, pad_id=PAD)
    memory = jnp.zeros((1, 3))
    g_ids, _ = lang.greedy_decode(fn, memory, **kw)
    b_ids, b_len = lang.beam_search(fn, memory, beam_size=2, length_penalty=0.0, **kw)
    assert int(g_ids[0, 0]) == a
    np.testing.assert_array_equal(b_ids[0], [b, EOS, PAD, PAD])
    assert int(b_len[0]) == 2


def test_beam_one_and_nucleus_p0_equal_greedy(tiny):
    model, params, ids, mask = tiny
    vectors = model.apply({"params": params}, ids, mask, method=model.encode_report)
    vectors = jnp.concatenate([vectors, 3.0 * jax.random.normal(jax.random.key(3), (5, CFG.d_model))])
    run = lambda **kw: jax.jit(functools.partial(lang.generate, model, max_len=MAX_LEN, **kw))
    greedy = run(method="greedy")(params, vectors)
    beam1 = run(method="beam", beam_size=1, length_penalty=0.0)(params, vectors)
    nucleus0 = run(method="nucleus", top_p=1e-6)(params, vectors, rng=jax.random.key(4))
    for other in (beam1, nucleus0):
        np.testing.assert_array_equal(other[0], greedy[0])
        np.testing.assert_array_equal(other[1], greedy[1])
    lengths = np.asarray(greedy[1])
    assert lengths.min() < MAX_LEN, "the fixture should make some rows end early"
    assert np.all(np.asarray(greedy[0])[:, 0] == BOS)  # forced BOS, as training targets start with it


def test_generated_reports_are_well_formed(tiny):
    """Beam and nucleus: EOS at lengths-1 (when it came), PAD after, nothing before; sampling varies with rng."""
    model, params, ids, mask = tiny
    vectors = jax.random.normal(jax.random.key(5), (6, CFG.d_model))
    beam = lang.generate(model, params, vectors, method="beam", beam_size=3, max_len=MAX_LEN)
    sample = jax.jit(functools.partial(lang.generate, model, method="nucleus", top_p=1.0, max_len=MAX_LEN))
    outs = [beam, sample(params, vectors, rng=jax.random.key(6))]
    for out_ids, lengths in outs:
        out_ids, lengths = np.asarray(out_ids), np.asarray(lengths)
        for row, n in zip(out_ids, lengths):
            assert np.all(row[n:] == PAD) and not np.any(row[:n] == PAD)
            assert np.sum(row[:n] == EOS) == (1 if row[n - 1] == EOS else 0)
    again = sample(params, vectors, rng=jax.random.key(7))
    assert np.any(np.asarray(again[0]) != outs[1][0])
    with pytest.raises(ValueError, match="needs an rng"):
        lang.generate(model, params, vectors, method="nucleus", max_len=MAX_LEN)
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        lang.generate(model, params, vectors, max_len=17)
    with pytest.raises(ValueError, match="method='topk'"):
        lang.generate(model, params, vectors, method="topk", max_len=MAX_LEN)


def test_top_p_filter():
    logits = jnp.log(jnp.array([0.2, 0.5, 0.3]))
    keep = lambda p: np.isfinite(np.asarray(lang.top_p_filter(logits, p)))
    np.testing.assert_array_equal(keep(0.5), [False, True, False])
    np.testing.assert_array_equal(keep(0.6), [False, True, True])
    np.testing.assert_array_equal(keep(0.0), [False, True, False])
    np.testing.assert_array_equal(keep(1.0), [True, True, True])
