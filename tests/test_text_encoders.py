"""Report encoders: padding must never matter, sections must be told apart, gradients must be clean."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_gen.nn.text import (
    BiLSTM,
    FlatReportEncoder,
    HierarchicalEncoder,
    HierarchicalReportEncoder,
    MaskedAttentionPool,
    _section_inputs,
    compact,
)

B, S, W, V = 3, 4, 6, 50
SMALL = dict(embed_dim=16, hidden=16, out_dim=32)  # compile time, not width, is what the tests pay for
PAD_ONLY = 2  # a token id placed only at padded positions


def make_section(seed, empty_rows=()):
    """ids/mask (B, S, W) with ragged prefix masks; PAD_ONLY is written into some padding."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((B, S, W), np.int32)
    mask = np.zeros((B, S, W), np.float32)
    for b in range(B):
        if b in empty_rows:
            continue
        n_sent = [S, 2, 1][b % 3]
        for s in range(n_sent):
            n = [W, 3, 1, 5][(b + s) % 4]
            ids[b, s, :n] = rng.integers(3, V, n)
            mask[b, s, :n] = 1.0
    ids[:, -1, -1] = np.where(mask[:, -1, -1] > 0, ids[:, -1, -1], PAD_ONLY)
    return ids, mask


def pad_more(ids, mask, extra_s=2, extra_w=3, fill=0):
    """Append padding sentences and words (ids `fill`, mask 0)."""
    ids = np.pad(ids, ((0, 0), (0, extra_s), (0, extra_w)), constant_values=fill)
    mask = np.pad(mask, ((0, 0), (0, extra_s), (0, extra_w)))
    return ids, mask


# ------------------------------------------------------------------------------- attention pool
def test_attention_pool_ignores_padding_and_handles_empty_rows():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(3, 5, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], np.float32)
    pool = MaskedAttentionPool()
    params = jax.jit(pool.init)(jax.random.key(0), h, mask)
    apply = jax.jit(pool.apply)
    out, w = apply(params, h, mask)

    # Softmax over real positions only, weights exactly 0 on padding.
    np.testing.assert_allclose(np.asarray(w).sum(-1), [1.0, 1.0, 0.0], atol=1e-6)
    assert np.all(np.asarray(w)[mask == 0] == 0.0)
    np.testing.assert_allclose(np.asarray(w)[1, 0], 1.0, atol=1e-6)
    # Against a hand-written reference for row 0.
    p = params["params"]
    e = np.tanh(h[0, :3] @ p["proj"]["kernel"] + p["proj"]["bias"]) @ p["score"]["kernel"][:, 0]
    ref_w = np.exp(e - e.max()) / np.exp(e - e.max()).sum()
    np.testing.assert_allclose(np.asarray(w)[0, :3], ref_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out)[0], ref_w @ h[0, :3], rtol=1e-5, atol=1e-6)
    # Empty row: zeros, not NaN.
    assert np.all(np.asarray(out)[2] == 0.0)

    # Changing padded values (even to huge numbers or NaN) changes nothing.
    h2 = h.copy()
    h2[mask == 0] = 1e6
    h2[2, 0] = np.nan
    out2, w2 = apply(params, h2, mask)
    np.testing.assert_array_equal(np.asarray(out2), np.asarray(out))
    np.testing.assert_array_equal(np.asarray(w2), np.asarray(w))

    # Gradients are finite, and zero w.r.t. padded values.
    g = jax.grad(lambda x: apply(params, x, mask)[0].sum())(h)
    assert np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.asarray(g)[mask == 0] == 0.0)


# ----------------------------------------------------------------------------------------- LSTM
@pytest.fixture(scope="module")
def bilstm():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 6, 5)).astype(np.float32)
    mask = (np.arange(6)[None] < np.array([[6], [3], [1]])).astype(np.float32)
    mod = BiLSTM(hidden=7)
    params = jax.jit(mod.init)(jax.random.key(1), x, mask)
    return jax.jit(mod.apply), params, x, mask


def test_bilstm_padding_changes_nothing(bilstm):
    apply, params, x, mask = bilstm
    y = np.asarray(apply(params, x, mask))
    assert y.shape == (3, 6, 14)
    assert np.all(y[mask == 0] == 0.0)
    # Different padding values.
    x2 = x.copy()
    x2[mask == 0] = 100.0
    np.testing.assert_array_equal(np.asarray(apply(params, x2, mask)), y)
    # Longer padding (T 6 -> 10): the backward direction must still start at the last real token.
    x3 = np.pad(x, ((0, 0), (0, 4), (0, 0)), constant_values=3.0)
    m3 = np.pad(mask, ((0, 0), (0, 4)))
    y3 = np.asarray(apply(params, x3, m3))
    np.testing.assert_allclose(y3[:, :6], y, atol=1e-6)
    assert np.all(y3[:, 6:] == 0.0)


def test_bilstm_backward_sees_later_tokens(bilstm):
    apply, params, x, mask = bilstm
    y = np.asarray(apply(params, x, mask))
    x2 = x.copy()
    x2[1, 2] += 1.0  # last real token of row 1 (length 3)
    y2 = np.asarray(apply(params, x2, mask))
    h = y.shape[-1] // 2
    np.testing.assert_array_equal(y2[1, 0, :h], y[1, 0, :h])  # forward at t=0 cannot see t=2
    assert np.abs(y2[1, 0, h:] - y[1, 0, h:]).max() > 1e-4  # backward at t=0 must
    np.testing.assert_array_equal(y2[[0, 2]], y[[0, 2]])  # other rows untouched


def test_bilstm_mask_with_holes_equals_packed(bilstm):
    apply, params, x, mask = bilstm
    # Row 0 with its real tokens spread out by holes == the same tokens packed at the front.
    holes = np.array([1, 0, 1, 1, 0, 0], np.float32)
    xh = np.zeros_like(x[:1])
    xh[0, holes > 0] = x[0, :3]
    packed = np.asarray(apply(params, x[:1, :3], np.ones((1, 3), np.float32)))
    yh = np.asarray(apply(params, xh, holes[None]))
    np.testing.assert_allclose(yh[0, holes > 0], packed[0], atol=1e-6)
    assert np.all(yh[0, holes == 0] == 0.0)
    perm, lengths = compact(jnp.asarray(holes[None]))
    np.testing.assert_array_equal(np.asarray(perm)[0], [0, 2, 3, 1, 4, 5])
    assert int(lengths[0]) == 3


# ------------------------------------------------------------------------------------------ HAE
@pytest.fixture(scope="module")
def hae():
    f_ids, f_mask = make_section(2)
    i_ids, i_mask = make_section(3, empty_rows=(1,))  # row 1: empty impression
    mod = HierarchicalReportEncoder(vocab_size=V, **SMALL)
    params = jax.jit(mod.init)(jax.random.key(2), f_ids, f_mask, i_ids, i_mask)
    return mod, jax.jit(mod.apply), params, (f_ids, f_mask, i_ids, i_mask)


@pytest.fixture(scope="module")
def section_apply():
    return jax.jit(HierarchicalEncoder(vocab_size=V, embed_dim=16, hidden=16).apply)


def test_hae_shapes_and_separate_sections(hae, section_apply):
    mod, apply, params, (f_ids, f_mask, i_ids, i_mask) = hae
    p = params["params"]
    assert set(p) == {"findings", "impression", "fc"}
    assert p["findings"]["embed"]["embedding"].shape == (V, 16)
    assert p["fc"]["kernel"].shape == (4 * 16, 32)
    out = np.asarray(apply(params, f_ids, f_mask, i_ids, i_mask))
    assert out.shape == (B, 32) and out.dtype == np.float32 and np.all(np.isfinite(out))
    # The dict form (what the pipeline yields) unpacks to the same four arrays, in order.
    batch = dict(findings_ids=f_ids, findings_mask=f_mask, impression_ids=i_ids, impression_mask=i_mask)
    assert all(x is y for x, y in zip(_section_inputs(batch, None, None, None), (f_ids, f_mask, i_ids, i_mask)))
    with pytest.raises(KeyError, match="impression_mask"):
        _section_inputs({k: v for k, v in batch.items() if k != "impression_mask"}, None, None, None)

    # Perturbing findings changes the output.
    f2 = f_ids.copy()
    f2[0, 0, 0] = (f2[0, 0, 0] + 1) % V or 3
    assert np.abs(np.asarray(apply(params, f2, f_mask, i_ids, i_mask))[0] - out[0]).max() > 1e-6
    # Swapping the sections changes the output (rows where they differ).
    swapped = np.asarray(apply(params, i_ids, i_mask, f_ids, f_mask))
    assert np.abs(swapped - out).max(axis=-1).min() > 1e-6
    # The two hierarchies hold different weights: the same section through each gives different vectors.
    vf = np.asarray(section_apply({"params": p["findings"]}, f_ids, f_mask))
    vi = np.asarray(section_apply({"params": p["impression"]}, f_ids, f_mask))
    assert np.abs(vf - vi).max() > 1e-4


def test_hae_empty_section_is_zero_vector(hae, section_apply):
    mod, apply, params, (f_ids, f_mask, i_ids, i_mask) = hae
    vec = np.asarray(section_apply({"params": params["params"]["impression"]}, i_ids, i_mask))
    assert vec.shape == (B, 32)
    assert np.all(vec[1] == 0.0) and np.abs(vec[0]).max() > 0
    # The empty impression's ids do not matter.
    i2 = i_ids.copy()
    i2[1] = 7
    np.testing.assert_array_equal(
        np.asarray(apply(params, f_ids, f_mask, i2, i_mask)), np.asarray(apply(params, f_ids, f_mask, i_ids, i_mask))
    )


def test_hae_padding_invariance(hae):
    mod, apply, params, (f_ids, f_mask, i_ids, i_mask) = hae
    out = np.asarray(apply(params, f_ids, f_mask, i_ids, i_mask))
    # More padding sentences and words, padded with a non-PAD id to also vary padded values.
    fp, fmp = pad_more(f_ids, f_mask, 2, 3, fill=PAD_ONLY)
    ip, imp = pad_more(i_ids, i_mask, 1, 2, fill=0)
    out2 = np.asarray(apply(params, fp, fmp, ip, imp))
    np.testing.assert_allclose(out2, out, atol=1e-5)


def test_hae_embedding_gradient_only_for_real_tokens(hae):
    mod, apply, params, (f_ids, f_mask, i_ids, i_mask) = hae

    def loss(p):
        return jnp.sum(jnp.sin(apply(p, f_ids, f_mask, i_ids, i_mask)))

    g = jax.grad(loss)(params)["params"]
    for sec, ids, mask in (("findings", f_ids, f_mask), ("impression", i_ids, i_mask)):
        grad = np.asarray(g[sec]["embed"]["embedding"])
        used = np.unique(ids[mask > 0])
        unused = np.setdiff1d(np.arange(V), used)
        assert 0 in unused and PAD_ONLY in unused and PAD_ONLY in ids[mask == 0]
        assert np.all(grad[unused] == 0.0), f"{sec}: padding-only tokens got gradient"
        assert np.all(np.abs(grad[used]).max(axis=-1) > 0), f"{sec}: a used token got no gradient"


def test_default_sizes_and_shared_embedding_option():
    """Paper/official widths without compiling anything (eval_shape)."""
    f_ids, f_mask = make_section(4)
    args = (f_ids, f_mask, f_ids, f_mask)
    shapes = lambda m: jax.eval_shape(m.init, jax.random.key(0), *args)["params"]
    for cls in (HierarchicalReportEncoder, FlatReportEncoder):
        out = jax.eval_shape(lambda p, m=cls(vocab_size=V): m.apply({"params": p}, *args), shapes(cls(vocab_size=V)))
        assert out.shape == (B, 512)
    p = shapes(HierarchicalReportEncoder(vocab_size=V))
    assert p["findings"]["embed"]["embedding"].shape == (V, 128)
    assert p["findings"]["word_lstm"]["fwd"]["ii"]["kernel"].shape == (128, 128)
    assert p["impression"]["sent_lstm"]["bwd"]["ii"]["kernel"].shape == (256, 128)
    assert p["fc"]["kernel"].shape == (512, 512) and "bias" not in p["fc"]
    p = shapes(HierarchicalReportEncoder(vocab_size=V, share_embedding=True))
    assert "embed" in p and "embed" not in p["findings"] and "embed" not in p["impression"]
    assert "word_lstm" in p["findings"] and "word_lstm" in p["impression"]


# ----------------------------------------------------------------------------------------- flat
@pytest.fixture(scope="module")
def flat():
    f_ids, f_mask = make_section(5)
    i_ids, i_mask = make_section(6, empty_rows=(2,))
    mod = FlatReportEncoder(vocab_size=V, **SMALL)
    params = jax.jit(mod.init)(jax.random.key(4), f_ids, f_mask, i_ids, i_mask)
    return jax.jit(mod.apply), params, (f_ids, f_mask, i_ids, i_mask)


def test_flat_padding_invariance_and_shape(flat, hae):
    apply, params, (f_ids, f_mask, i_ids, i_mask) = flat
    out = np.asarray(apply(params, f_ids, f_mask, i_ids, i_mask))
    hae_out = hae[1](hae[2], f_ids, f_mask, i_ids, i_mask)
    assert out.shape == hae_out.shape == (B, 32) and np.all(np.isfinite(out))
    fp, fmp = pad_more(f_ids, f_mask, 1, 2, fill=PAD_ONLY)
    ip, imp = pad_more(i_ids, i_mask, 2, 1, fill=0)
    np.testing.assert_allclose(np.asarray(apply(params, fp, fmp, ip, imp)), out, atol=1e-5)


def test_flat_sees_one_token_sequence(flat):
    """Re-splitting the same tokens into other sentences/sections must not change the result."""
    apply, params, (f_ids, f_mask, i_ids, i_mask) = flat
    out = np.asarray(apply(params, f_ids, f_mask, i_ids, i_mask))

    def tokens(ids, mask, b):
        return list(ids[b][mask[b] > 0])

    f2, fm2 = np.zeros_like(f_ids), np.zeros_like(f_mask)
    i2, im2 = np.zeros_like(i_ids), np.zeros_like(i_mask)
    for b in range(B):
        seq = tokens(f_ids, f_mask, b) + tokens(i_ids, i_mask, b)
        cut = min(len(seq) // 3, 2 * S)  # another section boundary; findings as 2-word sentences
        for k, t in enumerate(seq[:cut]):
            f2[b, k // 2, k % 2], fm2[b, k // 2, k % 2] = t, 1
        rest = seq[cut:]
        assert len(rest) <= S * W
        i2[b].reshape(-1)[: len(rest)] = rest  # impression packed row-major (full sentences)
        im2[b].reshape(-1)[: len(rest)] = 1
    assert not np.array_equal(fm2, f_mask)
    # ...while reordering tokens does change it (the LSTM is order-sensitive).
    i3 = i2.copy()
    i3[0].reshape(-1)[: int(im2[0].sum())] = i2[0].reshape(-1)[: int(im2[0].sum())][::-1]
    assert np.abs(np.asarray(apply(params, f2, fm2, i3, im2))[0] - out[0]).max() > 1e-6


def test_bfloat16_bilstm(bilstm):
    apply, params, x, mask = bilstm
    y32 = np.asarray(apply(params, x, mask))
    y16 = BiLSTM(hidden=7, dtype=jnp.bfloat16).apply(params, x, mask)
    assert y16.dtype == jnp.bfloat16 and params["params"]["fwd"]["hi"]["kernel"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y16, np.float32), y32, atol=0.05)
    assert np.all(np.asarray(y16)[mask == 0] == 0)
