"""CLIP-style dual encoder: shapes, causal and padding masks, EOS pooling, contrastive loss."""

import dataclasses
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from xray_gen.data.tokenizer import ReportTokenizer
from xray_gen.nn import clip
from xray_gen.nn.clip import CLIP, clip_logits, clip_loss, clip_pixels, text_config, vision_config

# One layer per tower keeps compile times low on CPU (2-layer stacks are matched against
# transformers in test_clip_conformance.py). The image tower has 3 channels: grey input is tiled.
TEXT = text_config("tiny", vocab_size=50, max_length=12, width=32, layers=1, heads=4, mlp_dim=64, projection_dim=16)
VISION = vision_config("tiny", image_size=16, patch_size=8, num_channels=3, width=32, layers=1, heads=4, mlp_dim=64,
                       projection_dim=16)
EOS = TEXT.eos_token_id


@pytest.fixture(scope="module")
def model_params():
    model = CLIP(text=TEXT, vision=VISION)
    ids = jnp.ones((1, 4), jnp.int32)
    params = _init(model, ids=ids, images=jnp.zeros((2, 16, 16, 1)))
    return model, params


@functools.partial(jax.jit, static_argnums=(0, 5))
def _jit_text(model, params, ids, mask, eos_position, project):
    return model.apply({"params": params}, ids, mask, eos_position, project, method=CLIP.encode_text)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _jit_image(model, params, images, project):
    return model.apply({"params": params}, images, project, method=CLIP.encode_image)


def _image(model, params, images, project=True):
    return _jit_image(model, params, jnp.asarray(images), project)


def _init(model, seed=0, **inputs):
    return jax.jit(lambda rng: model.init(rng, **inputs)["params"])(jax.random.key(seed))


def _text(model, params, ids, mask=None, eos_position=None, project=True):
    """Jitted `encode_text` (one compile per shape instead of op-by-op dispatch)."""
    return _jit_text(model, params, jnp.asarray(ids), None if mask is None else jnp.asarray(mask),
                     eos_position, project)


def test_named_configs_and_errors():
    assert clip.TEXT_CONFIGS["vit-l-14"].width == 768 and clip.VISION_CONFIGS["vit-b-32"].patch_size == 32
    assert clip.TEXT_CONFIGS["tiny"].eos_token_id == ReportTokenizer.EOS  # pools at the project tokenizer's EOS
    with pytest.raises(ValueError, match="unknown CLIP text config 'huge'"):
        text_config("huge")
    with pytest.raises(ValueError, match="act='relu'"):
        text_config("tiny", act="relu")
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        vision_config("tiny", image_size=20)


def test_shapes_and_params(model_params):
    model, params = model_params
    assert set(params) == {"text_model", "text_projection", "vision_model", "visual_projection", "logit_scale"}
    np.testing.assert_allclose(params["logit_scale"], math.log(1 / 0.07), rtol=1e-6)
    ids = np.array([[4, 7, 9, EOS, 0, 0], [5, EOS, 0, 0, 0, 0]])
    tokens, pooled = _text(model, params, ids, ids > 0)
    assert tokens.shape == (2, 6, 32) and pooled.shape == (2, 16)
    tokens, pooled = _image(model, params, jnp.zeros((2, 16, 16, 1)))
    assert tokens.shape == (2, 1 + 4, 32) and pooled.shape == (2, 16)
    # A text-only tower without projection: no projection, no logit scale; pooled has the width.
    text_only = CLIP(text=text_config("tiny", projection_dim=None))
    p = _init(text_only, 1, ids=jnp.asarray(ids))
    assert set(p) == {"text_model"}
    assert _text(text_only, p, ids)[1].shape == (2, 64)
    with pytest.raises(ValueError, match="no vision tower"):
        text_only.apply({"params": p}, jnp.zeros((1, 64, 64, 1)), method=text_only.encode_image)
    with pytest.raises(ValueError, match="exceeds max_length=12"):
        _text(model, params, np.ones((1, 13), np.int32))


def test_causal_mask(model_params):
    model, params = model_params
    ids = np.array([[4, 7, 9, 11, 13, EOS]])
    changed = ids.copy()
    changed[0, 3] = 21
    a, _ = _text(model, params, ids)
    b, _ = _text(model, params, changed)
    np.testing.assert_allclose(a[:, :3], b[:, :3], atol=1e-6)  # earlier positions never see later tokens
    assert np.abs(np.asarray(a[:, 3:] - b[:, 3:])).min(axis=-1).max() > 1e-4


def test_padding_mask(model_params):
    model, params = model_params
    ids = np.array([[0, 0, 4, 7, 9, EOS]])  # left padding: masked keys must be ignored by later queries
    mask = np.array([[0, 0, 1, 1, 1, 1]])
    changed = ids.copy()
    changed[0, :2] = [30, 31]
    a, pa = _text(model, params, ids, mask)
    b, pb = _text(model, params, changed, mask)
    np.testing.assert_allclose(a[:, 2:], b[:, 2:], atol=1e-6)
    np.testing.assert_allclose(pa, pb, atol=1e-6)
    c, _ = _text(model, params, changed)  # without the mask the padding is attended to
    assert np.abs(np.asarray(a[:, 2:] - c[:, 2:])).max() > 1e-4


def test_eos_pooling(model_params):
    model, params = model_params
    ids = np.array([[4, 7, EOS, 0, 0, 0], [4, 7, 9, 11, EOS, EOS]])  # first EOS counts
    tokens, pooled = _text(model, params, ids, ids > 0, project=False)
    np.testing.assert_allclose(pooled, tokens[np.arange(2), [2, 4]], atol=1e-6)
    _, projected = _text(model, params, ids, ids > 0)
    np.testing.assert_allclose(projected, pooled @ params["text_projection"]["kernel"], rtol=1e-5, atol=1e-6)
    _, explicit = _text(model, params, ids, ids > 0, eos_position=jnp.array([1, 3]), project=False)
    np.testing.assert_allclose(explicit, tokens[np.arange(2), [1, 3]], atol=1e-6)
    # Original CLIP convention (no eos id in the config): the highest token id is the EOS.
    argmax_model = CLIP(text=dataclasses.replace(TEXT, eos_token_id=None, projection_dim=None))
    p = {"text_model": params["text_model"]}
    ids = np.array([[2, 40, 7, 3, 0], [2, 5, 41, 0, 0]])
    tokens, pooled = _text(argmax_model, p, ids)
    np.testing.assert_allclose(pooled, tokens[np.arange(2), [1, 2]], atol=1e-6)


def test_image_tower_grey_tiling_and_errors(model_params):
    model, params = model_params
    x = jax.random.normal(jax.random.key(2), (2, 16, 16, 1))
    grey = _image(model, params, x)
    rgb = _image(model, params, jnp.tile(x, (1, 1, 1, 3)))
    np.testing.assert_allclose(grey[1], rgb[1], atol=1e-6)
    # The pooled output is the post-LN class token: rows are normalised when the LN is the identity.
    plain = jax.tree_util.tree_map(lambda a: a, params)
    plain["vision_model"]["post_layernorm"] = {"scale": jnp.ones(32), "bias": jnp.zeros(32)}
    _, pooled = _image(model, plain, x, project=False)
    np.testing.assert_allclose(np.asarray(pooled).mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(pooled).std(-1), 1, atol=1e-3)
    with pytest.raises(ValueError, match=r"\(B, 16, 16, C\)"):
        model.apply({"params": params}, jnp.zeros((1, 32, 32, 3)), method=model.encode_image)
    with pytest.raises(ValueError, match="2 channels"):
        model.apply({"params": params}, jnp.zeros((1, 16, 16, 2)), method=model.encode_image)


def test_clip_loss_hand_computed():
    t = jnp.array([[3.0, 4.0], [1.0, 0.0]])  # normalised: (0.6, 0.8), (1, 0)
    i = jnp.array([[0.0, 2.0], [5.0, 0.0]])  # normalised: (0, 1), (1, 0)
    scale = 2.0
    cos = np.array([[0.8, 0.6], [0.0, 1.0]])
    logits = scale * cos
    np.testing.assert_allclose(clip_logits(t, i, math.log(scale)), logits, rtol=1e-6)
    lse_rows = np.log(np.exp(logits).sum(1))
    lse_cols = np.log(np.exp(logits).sum(0))
    t2i = lse_rows - np.diag(logits)
    i2t = lse_cols - np.diag(logits)
    expected = 0.5 * (t2i.mean() + i2t.mean())
    np.testing.assert_allclose(clip_loss(t, i, math.log(scale)), expected, rtol=1e-6)
    # The scale is capped at 100, and the cap stops the gradient pulling it further.
    np.testing.assert_allclose(clip_loss(t, i, math.log(1000.0)), clip_loss(t, i, math.log(100.0)), rtol=1e-6)
    assert jax.grad(lambda s: clip_loss(t, i, s))(math.log(1000.0)) == 0.0
    assert jax.grad(lambda s: clip_loss(t, i, s))(0.0) != 0.0


def test_clip_loss_groups():
    t = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # two identical prompts
    i = jnp.array([[1.0, 0.2], [1.0, -0.2], [0.0, 1.0]])
    logits = np.asarray(clip_logits(t, i, 0.0))
    target = np.array([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1]])
    ce = lambda lg: -(target * (lg - np.log(np.exp(lg).sum(1, keepdims=True)))).sum(1).mean()
    np.testing.assert_allclose(clip_loss(t, i, 0.0, groups=jnp.array([7, 7, 2])),
                               0.5 * (ce(logits) + ce(logits.T)), rtol=1e-6)
    with pytest.raises(ValueError, match="3 texts vs 2 images"):
        clip_loss(t, i[:2], 0.0)


def test_clip_loss_minimised_by_matching_pairs():
    rng = np.random.default_rng(0)
    t = jnp.asarray(rng.normal(size=(6, 8)), jnp.float32)
    assert clip_loss(t, t, 2.0) < clip_loss(t, t[::-1], 2.0)
    # Free image embeddings trained against fixed texts line up with their own text.
    i = jnp.asarray(rng.normal(size=(6, 8)), jnp.float32)
    opt = optax.adam(0.05)
    state = opt.init(i)
    loss_fn = lambda i: clip_loss(t, i, 2.0)

    @jax.jit
    def step(i, state):
        updates, state = opt.update(jax.grad(loss_fn)(i), state)
        return optax.apply_updates(i, updates), state

    first = loss_fn(i)
    for _ in range(100):
        i, state = step(i, state)
    assert loss_fn(i) < 0.5 * first
    np.testing.assert_array_equal(np.argmax(clip_logits(t, i, 2.0), axis=1), np.arange(6))


def test_dual_encoder_trains_contrastively(model_params):
    """A few Adam steps on both towers separate two classes of (prompt, image) pairs."""
    model, params = model_params
    classes = np.array([0, 1, 0, 1, 0, 1, 1, 0])
    ids = np.where(classes[:, None] == 0, [[4, 7, EOS, 0]], [[5, 9, 11, EOS]])
    rng = np.random.default_rng(1)
    images = rng.normal(size=(8, 16, 16, 1)).astype(np.float32) * 0.1
    images[classes == 1, :8] += 1.0  # class 1: bright top half
    ids, mask, images = jnp.asarray(ids), jnp.asarray(ids > 0), jnp.asarray(images)
    groups = jnp.asarray(classes)

    def loss_fn(p):
        _, t = model.apply({"params": p}, ids, mask, method=model.encode_text)
        _, i = model.apply({"params": p}, images, method=model.encode_image)
        return clip_loss(t, i, p["logit_scale"], groups=groups)

    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss

    p = params
    losses = []
    for _ in range(25):
        p, state, loss = step(p, state)
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0]


def test_clip_pixels():
    x = jnp.array([[[[-1.0]], [[1.0]]]])  # (1, 2, 1, 1): black and white
    out = np.asarray(clip_pixels(x))
    assert out.shape == (1, 2, 1, 3)
    np.testing.assert_allclose(out[0, 0, 0], -np.array(clip.CLIP_MEAN) / np.array(clip.CLIP_STD), rtol=1e-6)
    np.testing.assert_allclose(out[0, 1, 0], (1 - np.array(clip.CLIP_MEAN)) / np.array(clip.CLIP_STD), rtol=1e-6)


def test_save_transformers_clip_round_trips_through_load_clip(model_params, tmp_path):
    """Export (transformers CLIPModel names and layouts) -> import is the identity; legacy argmax
    pooling (eos_token_id None) is written as transformers' marker 2 and read back as None."""
    from xray_gen.models.cxr_irgen import clip_weights

    model, params = model_params
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(7), p.shape), params)
    folder = clip_weights.save_transformers_clip(tmp_path / "clip", params, model)
    config = json.loads((tmp_path / "clip" / "config.json").read_text())
    assert config["model_type"] == "clip" and config["text_config"]["hidden_size"] == TEXT.width
    state, _, _ = clip_weights.read_clip_state_dict(folder)
    assert "text_model.encoder.layers.0.self_attn.out_proj.weight" in state and "vision_model.pre_layrnorm.weight" in state
    assert clip_weights.clip_model_of(folder) == model  # architecture from config.json + weight names
    loaded, back = clip_weights.load_clip(folder)
    assert loaded == model
    flat, flat_back = traverse_util.flatten_dict(params), traverse_util.flatten_dict(back)
    assert flat.keys() == flat_back.keys()
    for key in flat:
        np.testing.assert_allclose(flat_back[key], flat[key], rtol=1e-6, err_msg="/".join(key))
    legacy = CLIP(text=dataclasses.replace(TEXT, eos_token_id=None), vision=VISION)
    clip_weights.save_transformers_clip(tmp_path / "legacy", params, legacy)
    assert clip_weights.clip_model_of(tmp_path / "legacy").text.eos_token_id is None
    with pytest.raises(ValueError, match="both towers"):
        clip_weights.save_transformers_clip(tmp_path / "text", {"text_model": params["text_model"]}, CLIP(text=TEXT))
