"""Conformance of the Flax CLIP towers with transformers (skipped without torch + transformers).

Tiny randomly initialised transformers CLIP models (LayerNorm affines and biases perturbed, so a
swapped or dropped one shows up) are saved with `save_pretrained(safe_serialization=True)`,
imported through `xray_gen.models.cxr_irgen.clip_weights` from the folder alone, and run on the
same inputs; outputs must agree to ~1e-4 relative error. Covers flat (transformers >= 5) and
prefixed key layouts, projections, CLIPModel's logits, the legacy argmax-EOS config and errors;
also the export (`save_transformers_clip`, read by `CLIPModel.from_pretrained`) and the plain-Python
BPE tokenizer (`xray_gen.data.bpe`) against transformers' `CLIPTokenizer`.
Install the extra first: `pip install torch==2.13.0` then `pip install -e .[conformance]`.
"""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="conformance needs a CPU torch (pip install torch==2.13.0)")
transformers = pytest.importorskip("transformers", reason="conformance needs transformers (the 'conformance' extra)")

from safetensors.numpy import load_file, save_file  # noqa: E402

from xray_gen.models.cxr_irgen import clip_weights  # noqa: E402
from xray_gen.nn.clip import CLIP, clip_logits  # noqa: E402

RTOL = 1e-4
BOS, EOS = 97, 98
TEXT = dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=12, projection_dim=24, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=0)
VISION = dict(hidden_size=40, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8, projection_dim=24)
IDS = np.array([[BOS, 5, 17, 40, 96, EOS, 0, 0], [BOS, 9, EOS, 0, 0, 0, 0, 0]])
MASK = (np.arange(IDS.shape[1])[None] < np.array([[6], [3]])).astype(np.int64)


def _perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "class_embedding" not in name:
                base = 1.0 if ("norm" in name and name.endswith("weight")) else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def _save(model, tmp_path, name):
    path = os.fspath(tmp_path / name)
    model.save_pretrained(path, safe_serialization=True)
    return path


def _rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-12))


def _pixels(seed=0):
    return np.random.default_rng(seed).normal(size=(2, 3, 32, 32)).astype(np.float32)


def _encode_text(model, params, ids=IDS, mask=MASK, project=True):
    return model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), None, project,
                       method=CLIP.encode_text)


def _encode_image(model, params, x, project=True):
    return model.apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)), project, method=CLIP.encode_image)


@pytest.mark.parametrize("with_projection", [False, True])
def test_text_model(tmp_path, with_projection):
    torch.manual_seed(0)
    cls = transformers.CLIPTextModelWithProjection if with_projection else transformers.CLIPTextModel
    ref = _perturb(cls(transformers.CLIPTextConfig(**TEXT)), 1)
    path = _save(ref, tmp_path, "text")
    model, params = clip_weights.load_clip(path)
    assert model.vision is None and bool(model.text.projection_dim) == with_projection
    with torch.no_grad():
        out = ref(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK))
    tokens, pooled = _encode_text(model, params)
    real = MASK.astype(bool)  # padded positions are never read; compare real tokens
    assert _rel_err(np.asarray(tokens)[real], out.last_hidden_state.numpy()[real]) < RTOL
    ref_pooled = out.text_embeds if with_projection else out.pooler_output
    assert _rel_err(pooled, ref_pooled.numpy()) < RTOL


def test_text_model_legacy_eos_argmax(tmp_path):
    """eos_token_id=2 marks pre-2023 configs (SD-1.x's text encoder): pool at the highest id."""
    torch.manual_seed(1)
    ref = _perturb(transformers.CLIPTextModel(transformers.CLIPTextConfig(**{**TEXT, "eos_token_id": 2})), 2)
    model, params = clip_weights.load_clip(_save(ref, tmp_path, "legacy"))
    assert model.text.eos_token_id is None
    ids = np.array([[BOS, 98, 17, 60, 3, 0], [BOS, 9, 98, 40, 0, 0]])  # highest ids (98 > BOS): at 1 and 2
    with torch.no_grad():
        out = ref(input_ids=torch.tensor(ids))
    _, pooled = _encode_text(model, params, ids, np.ones_like(ids))
    assert _rel_err(pooled, out.pooler_output.numpy()) < RTOL


@pytest.mark.parametrize("with_projection", [False, True])
def test_vision_model(tmp_path, with_projection):
    torch.manual_seed(2)
    cls = transformers.CLIPVisionModelWithProjection if with_projection else transformers.CLIPVisionModel
    ref = _perturb(cls(transformers.CLIPVisionConfig(**VISION)), 3)
    model, params = clip_weights.load_clip(_save(ref, tmp_path, "vision"))
    x = _pixels()
    with torch.no_grad():
        out = ref(pixel_values=torch.tensor(x))
    tokens, pooled = _encode_image(model, params, x)
    assert _rel_err(tokens, out.last_hidden_state.numpy()) < RTOL
    ref_pooled = out.image_embeds if with_projection else out.pooler_output
    assert _rel_err(pooled, ref_pooled.numpy()) < RTOL


def test_clip_model_logits_and_dtype(tmp_path):
    torch.manual_seed(3)
    config = transformers.CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=24)
    ref = _perturb(transformers.CLIPModel(config), 4)
    with torch.no_grad():
        ref.logit_scale.fill_(1.7)
    path = _save(ref, tmp_path, "clip")
    model, params = clip_weights.load_clip(path)
    np.testing.assert_allclose(params["logit_scale"], 1.7, rtol=1e-6)
    x = _pixels(1)
    with torch.no_grad():
        out = ref(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK), pixel_values=torch.tensor(x))
    _, t = _encode_text(model, params)
    _, i = _encode_image(model, params, x)
    assert _rel_err(clip_logits(t, i, params["logit_scale"]), out.logits_per_text.numpy()) < RTOL
    # A safetensors file alone with the config given; parameters cast on import.
    _, half = clip_weights.load_clip(os.path.join(path, "model.safetensors"), config=os.path.join(path, "config.json"),
                                     dtype=jnp.bfloat16)
    assert half["text_model"]["encoder"]["layers_0"]["self_attn"]["to_q"]["kernel"].dtype == jnp.bfloat16


def test_prefixed_keys_and_position_ids_buffer(tmp_path):
    """Files written by older transformers (SD's text_encoder): `text_model.` prefix, position_ids."""
    torch.manual_seed(4)
    ref = _perturb(transformers.CLIPTextModel(transformers.CLIPTextConfig(**TEXT)), 5)
    path = _save(ref, tmp_path, "old")
    state = load_file(os.path.join(path, "model.safetensors"))
    state = {"text_model." + k: v for k, v in state.items()}
    state["text_model.embeddings.position_ids"] = np.arange(12, dtype=np.int64)[None]
    save_file(state, os.path.join(path, "model.safetensors"))
    model, params = clip_weights.load_clip(path)
    with torch.no_grad():
        out = ref(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK))
    assert _rel_err(_encode_text(model, params)[1], out.pooler_output.numpy()) < RTOL


def test_errors_name_keys_and_files(tmp_path):
    torch.manual_seed(5)
    ref = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VISION))
    path = _save(ref, tmp_path, "broken")
    weights = os.path.join(path, "model.safetensors")
    state = load_file(weights)
    del state["encoder.layers.1.self_attn.q_proj.weight"]
    state["encoder.layers.0.extra.weight"] = np.zeros((2, 2), np.float32)
    save_file(state, weights)
    with pytest.raises(ValueError) as e:
        clip_weights.load_clip(path)
    msg = str(e.value)
    assert weights in msg and "'vision_model.encoder.layers.1.self_attn.q_proj.weight'" in msg
    assert "'encoder.layers.0.extra.weight'" in msg  # unexpected keys named as in the file
    state = load_file(weights)
    state["embeddings.position_embedding.weight"] = np.zeros((3, 40), np.float32)
    save_file(state, weights)
    with pytest.raises(ValueError, match="'embeddings.position_embedding.weight'.*shape"):
        clip_weights.load_clip(path)
    config = json.load(open(os.path.join(path, "config.json")))
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        clip_weights.clip_configs_from_transformers({**config, "hidden_act": "relu"})
    with pytest.raises(ValueError, match="model_type.*'bert'"):
        clip_weights.clip_configs_from_transformers({**config, "model_type": "bert"})
    bin_path = tmp_path / "pytorch_model.bin"
    bin_path.write_bytes(b"not read")
    with pytest.raises(ValueError, match="pickled checkpoints are never loaded"):
        clip_weights.load_clip(bin_path)
    os.remove(weights)
    with pytest.raises(FileNotFoundError, match="only safetensors"):
        clip_weights.load_clip(path)


def test_exported_folder_loads_in_transformers(tmp_path):
    """`save_transformers_clip` (our random CLIP -> a CLIPModel folder) is what transformers'
    `CLIPModel.from_pretrained` reads: no missing or unexpected keys, the same embeddings."""
    import jax

    from xray_gen.nn.clip import text_config, vision_config

    text = text_config("tiny", vocab_size=99, max_length=12, width=32, layers=2, heads=4, mlp_dim=48, eos_token_id=EOS,
                       projection_dim=24)
    vision = vision_config("tiny", image_size=32, patch_size=8, num_channels=3, width=40, layers=2, heads=4, mlp_dim=56,
                           projection_dim=24)
    model = CLIP(text=text, vision=vision)
    params = model.init(jax.random.key(0), ids=jnp.asarray(IDS), images=jnp.zeros((1, 32, 32, 3)))["params"]
    params = jax.tree.map(lambda p: p + 0.2 * jax.random.normal(jax.random.key(1), p.shape), params)
    path = clip_weights.save_transformers_clip(tmp_path / "ours", params, model)
    ref, info = transformers.CLIPModel.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    x = _pixels(2)
    with torch.no_grad():
        out = ref.eval()(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK), pixel_values=torch.tensor(x))
    _, t = _encode_text(model, params)
    _, i = _encode_image(model, params, x)
    unit = lambda e: np.asarray(e) / np.linalg.norm(np.asarray(e), axis=-1, keepdims=True)  # CLIPModel's are unit
    assert _rel_err(unit(t), out.text_embeds.numpy()) < RTOL and _rel_err(unit(i), out.image_embeds.numpy()) < RTOL
    assert _rel_err(clip_logits(t, i, params["logit_scale"]), out.logits_per_text.numpy()) < RTOL


@pytest.mark.parametrize("all_bytes", [True, False])
def test_bpe_tokenizer_matches_transformers(tmp_path, all_bytes):
    """xray_gen.data.bpe.CLIPTokenizer (plain Python) against transformers' CLIPTokenizer built from
    the same vocab and merges: punctuation, digits, contractions, case, whitespace, accents,
    truncation and padding. Without all 256 byte characters, unknown pieces appear too."""
    from xray_gen.data.bpe import CLIPTokenizer, bytes_to_unicode

    chars = list(bytes_to_unicode().values()) if all_bytes else sorted(set("a chest x ray with cardiomegaly"))
    vocab = {}
    for c in chars:
        if c != " ":
            vocab.setdefault(c, len(vocab))
            vocab.setdefault(c + "</w>", len(vocab))
    merges = [("c", "h"), ("e", "s"), ("ch", "es"), ("ches", "t</w>"), ("r", "a"), ("ra", "y</w>"), ("e", "d</w>"),
              ("i", "t"), ("'", "s</w>"), ("1", "2</w>")]
    merges = [(a, b) for a, b in merges if a in vocab and b in vocab]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    ref = transformers.CLIPTokenizer(vocab=vocab, merges=merges)
    texts = ["A chest X-ray, 2 views: cardiomegaly (mild); no edema.", "Heart 12.5 cm! It's x-ray's #3",
             "  MULTIPLE   spaces\tand\nnewlines ", "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00bd", "", "X ray"]
    ours = CLIPTokenizer(folder, max_length=16)
    ids, mask = ours(texts)
    expected = ref(texts, padding="max_length", max_length=16, truncation=True, return_tensors="np")
    np.testing.assert_array_equal(ids, expected["input_ids"])
    np.testing.assert_array_equal(mask, expected["attention_mask"])
    assert ids[0, -1] == vocab["<|endoftext|>"] and mask[0].all()  # truncated, EOS kept
    if all_bytes:
        assert ref.convert_ids_to_tokens(ref("x ray's")["input_ids"])[1:-1] == ours.tokenize("x ray's")
