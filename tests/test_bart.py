"""Pure-JAX tests of the Flax BART (xray_gen.nn.bart); transformers conformance is in
test_bart_conformance.py."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_gen.nn.bart import POSITION_OFFSET, REPORT_TOKENIZER_IDS, Bart, BartConfig, bart_config, shift_right

CFG = bart_config("tiny", vocab_size=40, d_model=32, max_position_embeddings=16, dropout=0.1,
                  **REPORT_TOKENIZER_IDS)


def random_params(model, *args, seed=0):
    """Random params of the right shapes without compiling `init` (slow on a busy 2-core machine):
    kernels ~ N(0, 1/fan_in), embeddings ~ N(0, 0.3), 1-d params (biases, LayerNorm affines) perturbed
    around their defaults so tests do not pass by accident of a zero bias or unit scale."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), *args)["params"]

    def fill(path, x):
        name = jax.tree_util.keystr(path)
        if x.ndim == 1:
            return (1.0 if "scale" in name else 0.0) + 0.3 * rng.standard_normal(x.shape).astype(np.float32)
        std = 0.3 if "embed" in name else 1.0 / np.sqrt(x.shape[0])
        return (std * rng.standard_normal(x.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _setup(cfg=CFG, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, cfg.vocab_size, (2, 7)).astype(np.int32)
    mask = np.ones((2, 7), np.float32)
    mask[0, 4:] = 0
    ids[0, 4:] = cfg.pad_token_id
    dec = rng.integers(4, cfg.vocab_size, (2, 5)).astype(np.int32)
    model = Bart(cfg)
    return model, random_params(model, ids, mask, dec, seed=seed), ids, mask, dec


def test_named_configs_and_validation():
    base, large = bart_config("bart-base"), bart_config("bart-large")
    assert (base.d_model, base.encoder_layers, base.encoder_attention_heads) == (768, 6, 12)
    assert (large.d_model, large.decoder_layers, large.decoder_ffn_dim) == (1024, 12, 4096)
    assert base.vocab_size == 50265 and not base.normalize_before
    with pytest.raises(ValueError, match="unknown BART size"):
        bart_config("bart-huge")
    with pytest.raises(ValueError, match="d_model=30 is not divisible"):
        bart_config("tiny", d_model=30)
    with pytest.raises(ValueError, match="activation_function"):
        BartConfig(activation_function="mish")
    with pytest.raises(ValueError, match="eos_token_id=50"):
        bart_config("tiny", vocab_size=50, eos_token_id=50)


def test_shapes_and_tied_lm_head():
    model, params, ids, mask, dec = _setup()
    memory = model.apply({"params": params}, ids, mask, method=model.encode)
    assert memory.shape == (2, 7, CFG.d_model)
    logits = model.apply({"params": params}, ids, mask, dec)
    assert logits.shape == (2, 5, CFG.vocab_size) and logits.dtype == jnp.float32
    states = model.apply({"params": params}, dec, memory, mask, method=model.decoder_states)
    manual = np.asarray(states) @ np.asarray(params["shared"]["embedding"]).T + np.asarray(params["final_logits_bias"])
    np.testing.assert_allclose(logits, manual, rtol=1e-5, atol=1e-5)
    # BART's learned positions have two extra rows (offset 2) that are never read.
    assert params["encoder"]["embed_positions"]["embedding"].shape == (16 + POSITION_OFFSET, CFG.d_model)

    def loss(p):
        return jnp.sum(model.apply({"params": p}, ids, mask, dec) ** 2)

    g = jax.jit(jax.grad(loss))(params)
    for stack in ("encoder", "decoder"):
        rows = np.abs(np.asarray(g[stack]["embed_positions"]["embedding"])).sum(-1)
        assert np.all(rows[:POSITION_OFFSET] == 0) and np.all(rows[POSITION_OFFSET:POSITION_OFFSET + 5] > 0)


def test_encoder_padding_is_ignored():
    model, params, ids, mask, dec = _setup()
    other = ids.copy()
    other[0, 4:] = [5, 6, 7]
    for a, b in ((ids, other),):
        ea = model.apply({"params": params}, a, mask, method=model.encode)
        eb = model.apply({"params": params}, b, mask, method=model.encode)
        np.testing.assert_allclose(ea[0, :4], eb[0, :4], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(model.apply({"params": params}, a, mask, dec),
                                   model.apply({"params": params}, b, mask, dec), rtol=1e-5, atol=1e-6)
    # Without the mask the padded tokens do matter (the test above is not vacuous).
    ea = model.apply({"params": params}, ids, None, method=model.encode)
    eb = model.apply({"params": params}, other, None, method=model.encode)
    assert np.max(np.abs(ea[0, :4] - eb[0, :4])) > 1e-3


def test_decoder_is_causal_and_uses_memory():
    model, params, ids, mask, dec = _setup()
    memory = model.apply({"params": params}, ids, mask, method=model.encode)
    run = lambda d, m: np.asarray(model.apply({"params": params}, d, m, mask, method=model.decode))
    base = run(dec, memory)
    changed = dec.copy()
    changed[:, 3] = (changed[:, 3] + 1) % CFG.vocab_size
    out = run(changed, memory)
    np.testing.assert_allclose(out[:, :3], base[:, :3], rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(out[:, 3:] - base[:, 3:])) > 1e-3
    assert np.max(np.abs(run(dec, memory + 1.0) - base)) > 1e-3


@pytest.mark.parametrize("pre_ln", [False, True], ids=["post_ln", "pre_ln"])
def test_layer_norm_placement(pre_ln):
    cfg = dataclasses.replace(CFG, normalize_before=pre_ln, add_final_layer_norm=pre_ln, scale_embedding=pre_ln)
    model, params, ids, mask, dec = _setup(cfg)
    assert ("layer_norm" in params["encoder"]) == pre_ln and ("layer_norm" in params["decoder"]) == pre_ln
    enc = model.apply({"params": params}, ids, mask, method=model.encode)
    if not pre_ln:  # post-LN: the encoder output is a LayerNorm output (per-token mean ~ its bias mean)
        ln = params["encoder"]["layers_1"]["final_layer_norm"]
        normed = (np.asarray(enc) - np.asarray(ln["bias"])) / np.asarray(ln["scale"])
        np.testing.assert_allclose(normed.mean(-1), 0, atol=1e-4)
        np.testing.assert_allclose(normed.std(-1), 1, atol=1e-2)


def test_dropout_and_bf16():
    model, params, ids, mask, dec = _setup()
    det = model.apply({"params": params}, ids, mask, dec)
    drop = jax.jit(lambda k: model.apply({"params": params}, ids, mask, dec, deterministic=False,
                                         rngs={"dropout": k}))
    assert np.max(np.abs(drop(jax.random.key(1)) - det)) > 1e-3
    np.testing.assert_array_equal(drop(jax.random.key(1)), drop(jax.random.key(1)))
    bf16 = jax.jit(Bart(CFG, dtype=jnp.bfloat16).apply)({"params": params}, ids, mask, dec)
    assert bf16.dtype == jnp.float32
    assert np.max(np.abs(bf16 - det)) / np.max(np.abs(det)) < 5e-2


def test_too_long_and_shift_right():
    model, params, _, _, _ = _setup()
    long = jnp.zeros((1, 17), jnp.int32)
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        model.apply({"params": params}, long, None, method=model.encode)
    np.testing.assert_array_equal(shift_right(jnp.array([[2, 7, 8, 3, 0]]), 3), [[3, 2, 7, 8, 3]])
