"""EMIXER networks: spectral norm, conditional BN, G shapes, projection D, gradient paths, decoding."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_gen.models.emixer import image_networks as im
from xray_gen.models.emixer import report_networks as rn
from xray_gen.models.emixer.report_networks import BOS, EOS, PAD

V, S, W = 9, 3, 3
TINY_F = dict(vocab_size=V, max_sentences=S, max_words=W, feature_dim=8, sentence_hidden=8, topic_layers=2,
              embed_dim=8, word_hidden=8, word_layers=3, encoder_blocks=(1, 1), encoder_growth_rate=4,
              encoder_init_features=4, encoder_small_input=True)
MUTABLE = ["batch_stats", im.SPECTRAL_STATS]
F = rn.ReportGenerator(**TINY_F)
# Module-level jitted decoders: each compiles once for the whole file (shapes repeat across tests).
GREEDY = jax.jit(lambda v, images: F.apply(v, images, method=F.greedy))
BEAM = jax.jit(lambda v, images, k: F.apply(v, images, beam_size=k, method=F.beam_search), static_argnums=2)


def _key(seed):
    # rbg keys: flax init under threefry compiles ~3x slower on CPU
    return jax.random.key(seed, impl="rbg")


def _params_like(module, *args, seed=0, **kwargs):
    """Random variables with the structure `module.init` gives, without compiling init.

    On CPU a compiled flax init costs ~3x a forward pass; `eval_shape` only traces it. Kernels
    ~ N(0, 1/fan_in), biases 0, BN running mean 0 / var 1, attention gamma 0.5 (so attention acts),
    spectral-norm vectors random unit vectors.
    """
    shapes = jax.eval_shape(lambda: module.init(_key(0), *args, **kwargs))
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if name in ("mean", "bias"):
            return np.zeros(s.shape, np.float32)
        if name in ("var", "scale"):
            return np.ones(s.shape, np.float32)
        if name == "gamma":
            return np.float32(0.5)
        x = rng.standard_normal(s.shape).astype(np.float32)
        return x / np.linalg.norm(x) if name == "u" else x / np.sqrt(max(int(np.prod(s.shape[:-1])), 1))

    return jax.tree_util.tree_map_with_path(lambda path, s: jnp.asarray(leaf(path, s)), shapes)


def _labels(b, seed=0):
    return (jax.random.uniform(jax.random.key(seed), (b, 14)) > 0.7).astype(jnp.float32)


def test_spectral_norm_top_singular_value_and_frozen_eval():
    layer = im.SNDense(5, use_bias=False)
    kernel = 7.0 * jax.random.normal(jax.random.key(0), (6, 5))
    variables = layer.init(_key(1), jnp.zeros((1, 6)))
    variables = {"params": {"kernel": kernel}, im.SPECTRAL_STATS: variables[im.SPECTRAL_STATS]}
    eye = jnp.eye(6)
    step = jax.jit(lambda v: layer.apply(v, eye, update_stats=True, mutable=[im.SPECTRAL_STATS]))
    for _ in range(30):
        w_sn, stats = step(variables)
        variables = {**variables, **stats}
    np.testing.assert_allclose(np.linalg.svd(np.asarray(w_sn), compute_uv=False)[0], 1.0, atol=1e-3)
    # the normalised layer is the plain matmul by W / sigma_max(W)
    sigma = np.linalg.svd(np.asarray(kernel), compute_uv=False)[0]
    np.testing.assert_allclose(w_sn, kernel / sigma, rtol=1e-3, atol=1e-5)
    # eval: u is read, never written
    _, frozen = layer.apply(variables, eye, update_stats=False, mutable=[im.SPECTRAL_STATS])
    np.testing.assert_array_equal(frozen[im.SPECTRAL_STATS]["u"], variables[im.SPECTRAL_STATS]["u"])


def test_conditional_batch_norm_gain_one_at_zero_condition_and_depends_on_condition():
    cbn = im.ConditionalBatchNorm()
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (4, 3, 3, 5))
    cond = jax.random.normal(jax.random.key(1), (4, 6))
    variables = _params_like(cbn, x, cond)
    apply = lambda c, train=True: cbn.apply(variables, x, c, train=train, mutable=MUTABLE)
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    plain = (x - mean) / jnp.sqrt(var + 1e-5)
    # zero condition: gain exactly 1 and bias 0, i.e. plain batch normalisation
    np.testing.assert_allclose(apply(jnp.zeros_like(cond))[0], plain, atol=1e-4)
    out, stats = apply(cond)
    assert not np.allclose(out, plain, atol=1e-2)
    # per-sample modulation: changing one row's condition changes only that row
    out2, _ = apply(cond.at[0].set(-cond[0]))
    assert not np.allclose(out2[0], out[0], atol=1e-3)
    np.testing.assert_allclose(out2[1:], out[1:], atol=1e-5)
    # train: batch statistics, tracked (momentum 0.9); eval: the running ones (mean 0, var 1 here), frozen
    np.testing.assert_allclose(stats["batch_stats"]["bn"]["mean"], 0.1 * mean, rtol=1e-4)
    out_eval, frozen = apply(jnp.zeros_like(cond), train=False)
    np.testing.assert_allclose(out_eval, x / np.sqrt(1 + 1e-5), rtol=1e-5)
    np.testing.assert_array_equal(frozen["batch_stats"]["bn"]["mean"], 0.0)


def test_self_attention_is_identity_at_init_and_mixes_positions_after():
    att = im.SelfAttention()
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    variables = jax.jit(att.init)(_key(1), x)
    assert float(variables["params"]["gamma"]) == 0.0  # BigGAN/SAGAN: starts as the identity
    apply = jax.jit(lambda gamma, x: att.apply({**variables, "params": {**variables["params"], "gamma": gamma}}, x))
    np.testing.assert_array_equal(apply(jnp.float32(0.0), x), x)
    y = apply(jnp.float32(1.0), x)
    # non-local: changing one pixel changes the output at other pixels too
    y2 = apply(jnp.float32(1.0), x.at[:, 0, 0].add(3.0))
    assert not np.allclose(y2[:, 3, 3], y[:, 3, 3], atol=1e-5)


def _changed(a, b):
    return any(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_generator_32_shapes_range_conditioning_and_stats():
    g = im.Generator(resolution=32, ch=4, channel_multipliers=(2, 2, 2, 2), attention_resolution=16, label_embed_dim=8)
    z, y = jax.random.normal(jax.random.key(0), (3, 120)), _labels(3)
    variables = _params_like(g, z, y)
    assert g.z_chunk == 30  # 4 chunks: the input + 3 up-blocks
    train = jax.jit(lambda y: g.apply(variables, z, y, train=True, mutable=MUTABLE))
    out, new = train(y)
    assert out.shape == (3, 32, 32, 1)
    assert np.all(np.isfinite(out)) and float(jnp.max(jnp.abs(out))) <= 1.0
    assert float(jnp.std(out)) > 1e-3
    # both collections move in training
    assert _changed(new["batch_stats"], variables["batch_stats"])
    assert _changed(new[im.SPECTRAL_STATS], variables[im.SPECTRAL_STATS])
    # the labels condition the image (through the conditional BNs of every block)
    out_y, _ = train(y.at[0].set(1.0 - y[0]))
    assert not np.allclose(out_y[0], out[0], atol=1e-4)
    assert {"attention", "block0", "block1", "block2", "shared", "linear", "out_conv"} <= set(variables["params"])
    with pytest.raises(ValueError, match="z_dim=120"):
        g.apply(variables, z[:, :100], y)


def test_generator_128_shape_range_and_layout():
    g = im.Generator(resolution=128, ch=2, channel_multipliers=(4, 4, 2, 2, 1, 1), attention_resolution=64,
                     label_embed_dim=4)
    z, y = jax.random.normal(jax.random.key(0), (2, 120)), _labels(2)
    variables = _params_like(g, z, y)
    out, _ = jax.jit(lambda v: g.apply(v, z, y, train=True, mutable=MUTABLE))(variables)
    assert g.z_chunk == 20  # the paper's 20-d chunks: 120 = 6 x 20
    assert out.shape == (2, 128, 128, 1)
    assert np.all(np.isfinite(out)) and float(jnp.max(jnp.abs(out))) <= 1.0 and float(jnp.std(out)) > 1e-3
    p = variables["params"]
    # 5 up-blocks; attention after the one that outputs 64 px (block3, ch*1 channels); cond = [y_emb, z_i]
    assert sorted(k for k in p if k.startswith("block")) == [f"block{i}" for i in range(5)]
    assert p["attention"]["theta"]["kernel"].shape == (1, 1, 2 * 1, 1)
    assert p["block3"]["bn1"]["gain"]["kernel"].shape == (4 + 20, 2 * 2)  # normalises block2's 2*2 channels
    assert p["linear"]["kernel"].shape == (20, 4 * 4 * 2 * 4)
    rgb = im.Generator(resolution=128, ch=2, channel_multipliers=(4, 4, 2, 2, 1, 1), out_channels=3)
    assert jax.eval_shape(rgb.init_with_output, _key(1), z, y)[0].shape == (2, 128, 128, 3)


def test_generator_config_errors_name_the_field():
    z, y = jnp.zeros((1, 120)), jnp.zeros((1, 14))
    with pytest.raises(ValueError, match="attention_resolution=48"):
        im.Generator(resolution=32, ch=2, attention_resolution=48).init(_key(0), z, y)
    with pytest.raises(ValueError, match="resolution=64"):
        im.Generator(resolution=64, ch=2, channel_multipliers=(1, 1, 1)).init(_key(0), z, y)
    with pytest.raises(ValueError, match="z_dim=110"):
        im.Generator(resolution=32, ch=2, z_dim=110, attention_resolution=None).init(_key(0), jnp.zeros((1, 110)), y)


def test_projection_term_by_hand_and_absent_without_label():
    d = im.Discriminator(ch=4, channel_multipliers=(1, 2), downsample=(True, False), attention_resolution=8)
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
    y = _labels(3, seed=1).at[:, 0].set(1.0)
    has = jnp.array([1.0, 0.0, 1.0])
    variables = _params_like(d, x, y)
    # by hand on raw weights (spectral norm off: the same parameters, used unnormalised)
    out = d.clone(spectral_norm=False).apply({"params": variables["params"]}, x, y, has_label=has)
    p = variables["params"]
    h = out.features
    uncond = h @ p["linear"]["kernel"][:, 0] + p["linear"]["bias"][0]
    proj = jnp.sum((y @ p["embed"]["kernel"]) * h, axis=-1)
    np.testing.assert_allclose(out.projection, proj * has, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.score, uncond + proj * has, rtol=1e-4, atol=1e-4)
    assert abs(float(proj[1])) > 1e-3  # row 1 had a label term to drop
    np.testing.assert_allclose(out.rotation_logits, h @ p["rotation"]["kernel"] + p["rotation"]["bias"], rtol=1e-4,
                               atol=1e-4)
    # with spectral norm: an unlabeled row scores exactly like the label-free (unconditional) D
    a = d.apply(variables, x, y, has_label=has)
    b = d.apply(variables, x)
    np.testing.assert_allclose(a.score[1], b.score[1], rtol=1e-5)
    assert not np.allclose(a.score[0], b.score[0])
    assert a.rotation_logits.shape == (3, 4)
    with pytest.raises(ValueError, match="y of shape"):
        d.apply(variables, x, y[:, :5])


@pytest.fixture(scope="module")
def report_model():
    images = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
    ids = jax.random.randint(jax.random.key(1), (2, S, W), 4, V)
    return F, images, _params_like(F, images, ids)


def test_gradients_reach_g_and_f_through_soft_decoding(report_model):
    f, _, f_vars = report_model
    g = im.Generator(resolution=8, ch=2, channel_multipliers=(2, 2), attention_resolution=None, label_embed_dim=4)
    z, y = jax.random.normal(jax.random.key(3), (2, 120)), _labels(2)
    g_vars = _params_like(g, z, y)
    d_rep = rn.ReportDiscriminator(V, embed_dim=4, hidden=6)
    d_joint = rn.JointDiscriminator(V, ch=2, channel_multipliers=(1, 2), embed_dim=4, hidden=6, report_dim=4)
    ids = jax.random.randint(jax.random.key(5), (2, S, W), 4, V)
    mask = jnp.ones((2, S, W))
    rep_vars = _params_like(d_rep, ids, mask)
    joint_vars = _params_like(d_joint, jnp.zeros((2, 8, 8, 1)), ids, mask)
    # real reports: ids take the same embedding path as one-hot distributions
    np.testing.assert_allclose(d_rep.apply(rep_vars, ids, mask), d_rep.apply(rep_vars, jax.nn.one_hot(ids, V), mask),
                               rtol=1e-6)

    def adversarial(gp, fp, report_weight, joint_weight):
        fake = g.apply({**g_vars, "params": gp}, z, y, train=True, mutable=MUTABLE)[0]
        rep = f.apply({**f_vars, "params": fp}, fake, method=f.decode_soft)
        return -(report_weight * jnp.sum(d_rep.apply(rep_vars, rep["dist"], rep["mask"]))
                 + joint_weight * jnp.sum(d_joint.apply(joint_vars, fake, rep["dist"], rep["mask"])))

    grads = jax.jit(jax.grad(adversarial, argnums=(0, 1)))
    norm = lambda tree: float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)))
    for which, weights in [("report", (1.0, 0.0)), ("joint", (0.0, 1.0))]:
        gg, gf = grads(g_vars["params"], f_vars["params"], *weights)
        # on the report path G is reached only through F's image input: a real end-to-end path
        assert norm(gg["linear"]) > 0 and norm(gg["out_conv"]) > 0, which
        assert norm(gf["word"]) > 0 and norm(gf["encoder"]["conv0"]) > 0, which
        assert norm(gf["stop_head"]) == 0, which  # the report mask is hard: no gradient to STOP


def _set(tree, path, fn):
    tree = jax.tree.map(lambda x: x, tree)  # copy
    node = tree
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = fn(node[path[-1]])
    return tree


def test_greedy_stops_at_stop_and_eos(report_model):
    f, images, variables = report_model
    greedy = lambda v: GREEDY(v, images)
    stop = _set(variables, ("params", "stop_head", "bias"), lambda b: b + 100.0)
    eos = _set(stop, ("params", "word", "out", "bias"), lambda b: b.at[EOS].add(100.0))
    out = greedy(eos)
    np.testing.assert_array_equal(out["num_sentences"], [1, 1])
    np.testing.assert_array_equal(out["word_lengths"], [[1, 0, 0], [1, 0, 0]])
    expected = np.full((2, S, W), PAD)
    expected[:, 0, 0] = EOS
    np.testing.assert_array_equal(out["ids"], expected)
    np.testing.assert_array_equal(out["mask"], expected == EOS)
    # never stopping, never ending a sentence: all S x W positions are real, and no EOS/PAD/BOS emitted
    go = _set(variables, ("params", "stop_head", "bias"), lambda b: b - 100.0)
    go = _set(go, ("params", "word", "out", "bias"), lambda b: b.at[jnp.array([PAD, BOS, EOS])].add(-100.0))
    out = greedy(go)
    np.testing.assert_array_equal(out["num_sentences"], [S, S])
    np.testing.assert_array_equal(out["word_lengths"], np.full((2, S), W))
    assert not np.isin(np.asarray(out["ids"]), [PAD, BOS, EOS]).any()
    # EOS ends a sentence mid-way: tokens after it are PAD and masked
    mid = _set(go, ("params", "word", "out", "bias"), lambda b: b.at[EOS].set(0.0))
    ids = np.asarray(greedy(mid)["ids"])
    for row in ids.reshape(-1, W):
        if EOS in row:
            first = list(row).index(EOS)
            assert np.all(row[first + 1:] == PAD)


def test_beam_search_beam1_is_greedy_and_wide_beam_is_exact(report_model):
    f, images, variables = report_model
    # make sentence lengths vary: a mild EOS preference
    variables = _set(variables, ("params", "word", "out", "bias"), lambda b: b.at[EOS].add(1.0))
    greedy = GREEDY(variables, images)
    beam1 = BEAM(variables, images, 1)
    for k in ("ids", "mask", "word_lengths", "num_sentences"):
        np.testing.assert_array_equal(beam1[k], greedy[k])
    # a beam as wide as all prefixes (V^(W-1)) is exhaustive: compare with brute force on image 0
    wide = BEAM(variables, images[:1], V ** (W - 1))
    seqs = jnp.array(list(itertools.product(range(V), repeat=W)), jnp.int32)  # (V^W, W)
    n = seqs.shape[0]
    batch_ids = jnp.broadcast_to(seqs[:, None, :], (n, S, W))
    logits = jax.jit(f.apply)(variables, jnp.repeat(images[:1], n, 0), batch_ids)["word_logits"]
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), batch_ids[..., None], -1)[..., 0]
    seq_scores = jnp.sum(logp * rn.word_mask_from_ids(batch_ids), axis=-1)  # (n, S)
    for s in range(int(wide["num_sentences"][0])):
        best = int(jnp.argmax(seq_scores[:, s]))
        np.testing.assert_allclose(wide["scores"][0, s], seq_scores[best, s], rtol=1e-4)
        got = np.asarray(wide["ids"][0, s])
        ref = np.asarray(seqs[best])
        length = int(rn.word_mask_from_ids(seqs[best]).sum())
        np.testing.assert_array_equal(got[:length], ref[:length])


def test_straight_through_soft_decoding_matches_greedy(report_model):
    f, images, variables = report_model
    greedy = GREEDY(variables, images)
    soft = jax.jit(lambda v: f.apply(v, images, straight_through=True, method=f.decode_soft))(variables)
    np.testing.assert_array_equal(soft["ids"], greedy["ids"])
    np.testing.assert_array_equal(soft["mask"], greedy["mask"])
    # forward values are exactly one-hot on real positions and zero on padding
    np.testing.assert_allclose(soft["dist"], jax.nn.one_hot(greedy["ids"], V) * greedy["mask"][..., None], atol=1e-6)
    # Gumbel straight-through samples: still one-hot forward values, different draws per rng
    sample = jax.jit(lambda rng: f.apply(variables, images, rng, gumbel=True, straight_through=True,
                                         method=f.decode_soft))
    draws = [sample(jax.random.key(i)) for i in range(3)]
    for d in draws:
        np.testing.assert_allclose(d["dist"], jax.nn.one_hot(d["ids"], V) * d["mask"][..., None], atol=1e-6)
    assert any(not np.array_equal(draws[0]["ids"], d["ids"]) for d in draws[1:])
    with pytest.raises(ValueError, match="rng"):
        f.apply(variables, images, gumbel=True, method=f.decode_soft)


def test_encoder_param_mask_selects_exactly_the_densenet(report_model):
    _, _, variables = report_model
    mask = rn.encoder_param_mask(variables["params"])
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    assert all(m == (path[0].key == "encoder") for path, m in flat)
    assert any(m for _, m in flat) and not all(m for _, m in flat)
    assert jax.tree.structure(mask) == jax.tree.structure(variables["params"])


F_FED = rn.ReportGenerator(**TINY_F, label_tags=True, sentence_feedback=True)
GREEDY_FED = jax.jit(lambda v, images: F_FED.apply(v, images, method=F_FED.greedy))


def _fed_model():
    images = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
    ids = jax.random.randint(jax.random.key(1), (2, S, W), 4, V)
    variables = _params_like(F_FED, images, ids, seed=3)
    # greedy must not emit PAD/BOS mid-sentence or stop early, so every sentence is compared
    variables = _set(variables, ("params", "word", "out", "bias"), lambda b: b.at[jnp.array([PAD, BOS])].add(-100.0))
    return images, ids, _set(variables, ("params", "stop_head", "bias"), lambda b: b - 100.0)


def test_sentence_feedback_decoding_matches_teacher_forcing_on_its_own_output():
    """With feedback, F's greedy report fed back as teacher-forcing targets reproduces its own argmax
    word by word: decoding summarises each written sentence exactly as training does."""
    images, _, variables = _fed_model()
    out = GREEDY_FED(variables, images)
    logits = jax.jit(F_FED.apply)(variables, images, out["ids"])["word_logits"]
    real = np.asarray(out["mask"]) > 0
    assert real[:, 1:].any()  # later sentences (the ones that see a summary) are compared
    np.testing.assert_array_equal(np.asarray(jnp.argmax(logits, -1))[real], np.asarray(out["ids"])[real])
    soft = jax.jit(lambda v: F_FED.apply(v, images, straight_through=True, method=F_FED.decode_soft))(variables)
    np.testing.assert_array_equal(soft["ids"], out["ids"])
    np.testing.assert_array_equal(BEAM_FED(variables, images, 1)["ids"], out["ids"])


BEAM_FED = jax.jit(lambda v, images, k: F_FED.apply(v, images, beam_size=k, method=F_FED.beam_search), static_argnums=2)


def test_sentence_feedback_makes_later_topics_depend_on_earlier_sentences():
    images, ids, fed = _fed_model()
    plain_vars = _params_like(F, images, ids, seed=3)
    other = ids.at[:, 0].set(jnp.roll(ids[:, 0], 1, axis=-1) % (V - 4) + 4)  # sentence 0 changed only
    for model, variables, depends in [(F_FED, fed, True), (F, plain_vars, False)]:
        a, b = (jax.jit(model.apply)(variables, images, x) for x in (ids, other))
        np.testing.assert_allclose(a["stop_logits"][:, 0], b["stop_logits"][:, 0], rtol=1e-6)
        changed = float(jnp.max(jnp.abs(a["stop_logits"][:, 1:] - b["stop_logits"][:, 1:])))
        assert (changed > 1e-4) == depends, (model.sentence_feedback, changed)


def test_label_tags_feed_the_encoder_finding_probabilities_into_the_features():
    images, ids, fed = _fed_model()
    plain_vars = _params_like(F, images, ids, seed=3)
    head = ("params", "encoder", "classifier", "bias")
    for model, variables, depends in [(F_FED, fed, True), (F, plain_vars, False)]:
        moved = _set(variables, head, lambda b: b + 3.0)
        encode = jax.jit(lambda v: model.apply(v, images, method=model.encode))
        changed = float(jnp.max(jnp.abs(encode(variables) - encode(moved))))
        assert (changed > 1e-4) == depends, (model.label_tags, changed)


def test_hierarchical_report_encoder_reads_words_then_sentences_and_ignores_padding():
    enc = rn.ReportLSTMEncoder(V, embed_dim=4, hidden=6, hierarchical=True)
    ids = jnp.array([[[5, 6, EOS], [7, EOS, PAD], [PAD] * 3], [[PAD] * 3] * 3])
    mask = (ids != PAD).astype(jnp.float32)
    variables = _params_like(enc, ids, mask)
    out = jax.jit(enc.apply)(variables, ids, mask)
    np.testing.assert_array_equal(out[1], 0.0)  # an empty report
    # by hand: the word LSTM over each sentence's real tokens, the sentence LSTM over their last states
    p = variables["params"]
    nn_cell = nn.OptimizedLSTMCell(6)
    table = p["embedding"]

    def run(cell_params, xs):
        c = (jnp.zeros((1, 6)), jnp.zeros((1, 6)))
        for x in xs:
            c, h = nn_cell.apply({"params": cell_params}, c, x[None])
        return h[0]

    sentences = [run(p["word_lstm"], [table[t] for t in sent]) for sent in ([5, 6, EOS], [7, EOS])]
    np.testing.assert_allclose(out[0], run(p["sentence_lstm"], sentences), rtol=1e-5, atol=1e-6)
    # an empty sentence slot between the two and padding inside the layout change nothing
    moved = jnp.array([[[5, 6, EOS], [PAD] * 3, [7, EOS, PAD]]])
    np.testing.assert_allclose(enc.apply(variables, moved, (moved != PAD).astype(jnp.float32))[0], out[0], rtol=1e-6)
    # distributions take the same path as ids
    np.testing.assert_allclose(enc.apply(variables, jax.nn.one_hot(ids, V), mask), out, rtol=1e-6)
