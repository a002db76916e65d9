"""Conformance of the Flax BART with transformers (skipped without torch + transformers).

Tiny randomly initialised BartForConditionalGeneration / BartModel / MBartForConditionalGeneration
(pre-LN) models, with LayerNorm affines, biases and final_logits_bias perturbed so that a swapped or
dropped one shows up, are saved with `save_pretrained(safe_serialization=True)`, imported through
`xray_gen.models.cxr_irgen.bart_weights` from the folder alone, and run on the same padded inputs:
encoder states and decoder logits (standard full cross-attention) must agree to ~1e-4 relative.
Install the extra first: `pip install torch==2.13.0` then `pip install -e .[conformance]`.
"""

import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="conformance needs a CPU torch (pip install torch==2.13.0)")
transformers = pytest.importorskip("transformers", reason="conformance needs transformers (the 'conformance' extra)")

from xray_gen.models.cxr_irgen import bart_weights  # noqa: E402
from xray_gen.nn.bart import Bart  # noqa: E402

RTOL = 1e-4
SIZES = dict(vocab_size=61, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
             decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=24)


def _perturb(model, seed):
    """Random 1-d parameters and buffers: default LayerNorm (1, 0) and zero biases hide mis-mappings."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if p.ndim == 1 or name.endswith("final_logits_bias"):
                base = 1.0 if ("norm" in name and name.endswith("weight")) else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def _rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-12))


def _inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, SIZES["vocab_size"], (2, 9)).astype(np.int64)
    mask = np.ones((2, 9), np.int64)
    mask[0, 6:] = 0  # padded tail in row 0: must be ignored by both
    ids[0, 6:] = 1
    dec = rng.integers(3, SIZES["vocab_size"], (2, 7)).astype(np.int64)
    dec[:, 0] = 2
    return ids, mask, dec


def _check(name, got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    err = _rel_err(got, want)
    print(f"{name}: relative error {err:.2e}")
    assert err < RTOL, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("kind", ["bart", "mbart"])
def test_conditional_generation_matches_transformers(tmp_path, kind):
    torch.manual_seed(0)
    if kind == "bart":
        ref = transformers.BartForConditionalGeneration(transformers.BartConfig(**SIZES))
    else:  # pre-LN with final layer norms and scaled embeddings
        ref = transformers.MBartForConditionalGeneration(transformers.MBartConfig(scale_embedding=True, **SIZES))
    _perturb(ref, 1).save_pretrained(tmp_path, safe_serialization=True)

    cfg = bart_weights.bart_config_from_transformers(tmp_path)
    assert cfg.normalize_before == (kind == "mbart") and cfg.add_final_layer_norm == (kind == "mbart")
    params = bart_weights.load_bart(tmp_path)
    ids, mask, dec = _inputs()
    with torch.no_grad():
        out = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                  decoder_input_ids=torch.from_numpy(dec))
    model = Bart(cfg)
    enc = model.apply({"params": params}, ids, mask, method=model.encode)
    logits = model.apply({"params": params}, ids, mask, dec)
    real = mask.astype(bool)  # padded encoder positions are unconstrained (never attended to)
    _check(f"{kind} encoder states", np.asarray(enc)[real], out.encoder_last_hidden_state.numpy()[real])
    _check(f"{kind} decoder logits", logits, out.logits.numpy())
    # The padding mask matters in both implementations (not a vacuous match).
    unmasked = model.apply({"params": params}, ids, None, dec)
    assert _rel_err(unmasked, out.logits.numpy()) > 1e-3


def test_bart_model_without_lm_head(tmp_path):
    """BartModel files have no `model.` prefix and no final_logits_bias; the decoder states match."""
    torch.manual_seed(1)
    ref = _perturb(transformers.BartModel(transformers.BartConfig(**SIZES)), 2)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    params = bart_weights.load_bart(tmp_path)
    assert not np.any(np.asarray(params["final_logits_bias"]))
    cfg = bart_weights.bart_config_from_transformers(tmp_path)
    ids, mask, dec = _inputs()
    with torch.no_grad():
        out = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                  decoder_input_ids=torch.from_numpy(dec))
    model = Bart(cfg)
    memory = model.apply({"params": params}, ids, mask, method=model.encode)
    states = model.apply({"params": params}, dec, memory, mask, method=model.decoder_states)
    _check("bart model decoder states", states, out.last_hidden_state.numpy())


def test_half_precision_file_and_errors(tmp_path):
    """An fp16 export imports as float32; a mismatching config fails naming the key; no pickles."""
    torch.manual_seed(2)
    ref = transformers.BartForConditionalGeneration(transformers.BartConfig(**SIZES))
    ref.half().save_pretrained(tmp_path, safe_serialization=True)
    params = bart_weights.load_bart(tmp_path, dtype=jnp.float32)
    assert params["shared"]["embedding"].dtype == jnp.float32
    wrong = bart_weights.bart_config_from_transformers({**SIZES, "vocab_size": 60})
    with pytest.raises(ValueError, match="shared.weight"):
        bart_weights.load_bart(tmp_path, wrong)
    fewer = bart_weights.bart_config_from_transformers({**SIZES, "decoder_layers": 1})
    with pytest.raises(ValueError, match="unexpected key"):
        bart_weights.load_bart(tmp_path, fewer)
    os.remove(tmp_path / bart_weights.WEIGHTS_NAME)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match="only safetensors"):
        bart_weights.load_bart(tmp_path)


def test_pooled_vector_decoding_matches_transformers_generate(tmp_path):
    """Imported BART as the language module: greedy and beam decoding from the pooled text vector equal
    transformers' generate() given that vector as a length-1 encoder output (forced BOS, stop at EOS,
    PAD never generated, no forced EOS at max length)."""
    from transformers.modeling_outputs import BaseModelOutput

    from xray_gen.models.cxr_irgen import language

    torch.manual_seed(3)
    ref = _perturb(transformers.BartForConditionalGeneration(transformers.BartConfig(**SIZES)), 4)
    with torch.no_grad():  # larger weights so the vector matters; EOS bias so rows end at varied lengths
        for p in ref.parameters():
            if p.ndim == 2:
                p.mul_(10.0)
        ref.final_logits_bias[0, 2] += 4.0
    ref.save_pretrained(tmp_path, safe_serialization=True)
    cfg = bart_weights.bart_config_from_transformers(tmp_path)
    params = {"bart": bart_weights.load_bart(tmp_path)}
    model = language.ReportAutoencoder(cfg)
    ids, mask, _ = _inputs()
    vec = np.asarray(model.apply({"params": params}, ids, mask, method=model.encode_report))
    noise = 2.0 * np.random.default_rng(5).standard_normal((4, SIZES["d_model"]))
    vec = np.concatenate([vec, noise]).astype(np.float32)
    max_len = 12
    common = dict(encoder_outputs=BaseModelOutput(last_hidden_state=torch.from_numpy(vec[:, None])),
                  attention_mask=torch.ones((len(vec), 1), dtype=torch.long), do_sample=False,
                  max_length=max_len + 1, min_length=0, forced_bos_token_id=cfg.bos_token_id, forced_eos_token_id=None,
                  suppress_tokens=[cfg.pad_token_id], no_repeat_ngram_size=0)
    # transformers' exact beam search is early_stopping="never" (its default stops on a heuristic).
    for method, hf in (("greedy", dict(num_beams=1)),
                       ("beam", dict(num_beams=3, length_penalty=1.0, early_stopping="never"))):
        got_ids, got_len = language.generate(model, params, vec, method=method, max_len=max_len, beam_size=3,
                                             length_penalty=1.0)
        with torch.no_grad():
            want = ref.generate(**common, **hf).numpy()[:, 1:]  # drop the decoder start token
        want = np.pad(want, ((0, 0), (0, max_len - want.shape[1])), constant_values=cfg.pad_token_id)
        np.testing.assert_array_equal(np.asarray(got_ids), want, err_msg=method)
        np.testing.assert_array_equal(got_len, np.sum(want != cfg.pad_token_id, axis=1), err_msg=method)
        lengths = np.asarray(got_len)  # some rows stop early, others run to max_len: both paths are compared
        assert lengths.min() < max_len and lengths.max() == max_len, (method, lengths)


def test_export_loads_in_transformers_and_back(tmp_path):
    """`save_transformers_bart` (our params -> a transformers folder, as the pretrained-BART pipeline
    test builds one) is read by BartForConditionalGeneration / BartModel.from_pretrained with nothing
    missing, and gives the same logits; `load_bart` of it is the identity."""
    import jax

    cfg = bart_weights.bart_config_from_transformers(SIZES)
    ids, mask, dec = _inputs()
    params = Bart(cfg).init(jax.random.PRNGKey(0), ids, mask, dec)["params"]
    params = {**params, "final_logits_bias": 0.1 * jax.random.normal(jax.random.PRNGKey(1), (cfg.vocab_size,))}
    bart_weights.save_transformers_bart(tmp_path, params, cfg)
    assert bart_weights.bart_config_of(tmp_path) == cfg
    back = bart_weights.load_bart(tmp_path)
    for (path, a), (_, b) in zip(*(sorted(jax.tree_util.tree_leaves_with_path(t), key=lambda x: str(x[0]))
                                   for t in (params, back))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
    ref, info = transformers.BartForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        out = ref.eval()(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                         decoder_input_ids=torch.from_numpy(dec))
    _check("exported bart logits", Bart(cfg).apply({"params": params}, ids, mask, dec), out.logits.numpy())
    base, info = transformers.BartModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"], info


def test_bart_tokenizer_matches_transformers(tmp_path):
    """xray_gen.data.bart_tokenizer (plain Python) against transformers' BartTokenizer built from the
    same vocab.json + merges.txt: GPT-2 pre-tokenisation (contractions, digits, punctuation, case,
    Unicode spaces, accents), merges, <s> ... </s> rows truncated and padded, and decoding."""
    from test_bart_tokenizer import CHEST, write_bart_tokenizer  # tests/ is on sys.path

    from xray_gen.data.bart_tokenizer import BartTokenizer

    merges = CHEST + [("e", "d"), ("i", "t"), ("'", "s"), ("1", "2"), ("Ġ", "1"), ("Ġ1", "2"), ("Ġ", "H"),
                      ("ĠH", "e"), ("a", "r"), ("ar", "t"), ("ĠHe", "art")]
    write_bart_tokenizer(tmp_path, merges)
    ref = transformers.BartTokenizer(vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt"))
    ours = BartTokenizer(tmp_path, max_length=16)
    odd = ["  MULTIPLE   spaces\tand\nnewlines\n\n", "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00bd \u00b2",
           "a\u3000b \u00a0c\u2028d\x1ce\x85f", "it's IT'S x-ray's 'quoted' 12.5cm 1,000", "\U0001f600 \u4e2d\u6587"]
    clean = ["A chest X-ray, 2 views: cardiomegaly (mild); no edema.", "Heart 12.5 cm! It's x-ray's #3", "",
             "X ray", "The heart is normal. No effusion."]
    for text in odd + clean:
        want = ref(text, add_special_tokens=False)["input_ids"]
        assert ours.encode(text) == want, text
        assert ref.convert_ids_to_tokens(want) == ours.tokenize(text), text
        assert ours.decode(want) == ref.decode(want, skip_special_tokens=True) == text, text
    ids, mask = ours(clean)  # encode_flat only collapses whitespace, which these texts have none of
    expected = ref(clean, padding="max_length", max_length=16, truncation=True, return_tensors="np")
    np.testing.assert_array_equal(ids, expected["input_ids"])
    np.testing.assert_array_equal(mask, expected["attention_mask"])
    assert ids[0, -1] == ours.eos_id and mask[0].all()  # truncated, </s> kept
    assert (ours.bos_id, ours.pad_id, ours.eos_id, ours.unk_id) == (ref.bos_token_id, ref.pad_token_id,
                                                                    ref.eos_token_id, ref.unk_token_id)
