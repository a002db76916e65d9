"""CXR-IRGen end to end on the smoke config: every stage, the denoiser, sampling and evaluation.

One module-scoped run (train -> sample --labels -> sample --image -> evaluate); the tests read
its outputs and probe the conditioning the denoiser sees (U-ViT and U-Net).
"""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from PIL import Image

from xray_gen import main, runner
from xray_gen.configs import cxr_irgen as configs
from xray_gen.data.pipeline import PhantomSource
from xray_gen.models.cxr_irgen import networks, stages
from xray_gen.models.cxr_irgen.conditioning import label_prompt
from xray_gen.models.cxr_irgen.inputs import CxrInputs, IndexedSource, label_groups, training_labels

flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("cxr_irgen"))
    config = configs.get_config("smoke")
    state = main.run(config, workdir, "train")
    labelled = main.run(config, workdir, "sample", labels="Cardiomegaly,Edema=0")
    image_path = os.path.join(workdir, "input.png")
    Image.fromarray(np.linspace(0, 255, 40 * 40).reshape(40, 40).astype(np.uint8)).save(image_path)
    described = main.run(config, workdir, "sample", image=image_path)
    evaluation = main.run(config, workdir, "evaluate")
    return {"workdir": workdir, "config": config, "state": state, "labelled": labelled, "described": described,
            "evaluation": evaluation}


def test_stages_trained_and_latent_shift_and_scale_measured(run):
    wd = run["workdir"]
    for name in stages.STAGES:
        assert os.listdir(os.path.join(wd, name, "checkpoints")), name
    with open(os.path.join(wd, "autoencoder", stages.LATENT_SCALE_FILE)) as f:
        measured = json.load(f)
    latent_shape = tuple(run["state"].latent_shift.shape)
    assert np.shape(measured["latent_shift"]) == latent_shape and latent_shape[-1] == len(measured["channel_std"])
    assert latent_shape[-1] == run["config"].cxr_irgen.autoencoder.latent_channels
    assert np.isfinite(measured["latent_scale"]) and measured["latent_scale"] > 0
    assert measured["latent_scale"] == pytest.approx(1.0 / measured["latent_std"])
    assert measured["latent_std"] == pytest.approx(np.sqrt(np.mean(np.square(measured["channel_std"]))))
    # the denoiser trained on latents shifted and scaled by the measured numbers (not SD's 0.18215, not 1)
    assert float(run["state"].latent_scale) == pytest.approx(measured["latent_scale"], rel=1e-6)
    np.testing.assert_allclose(run["state"].latent_shift, measured["latent_shift"], rtol=1e-5, atol=1e-6)
    assert int(run["state"].step) == run["config"].train.num_steps


def test_denoiser_latents_are_centred_and_decode_back(run):
    """Uncentred latents made samples from pure noise drift to textures (SD's schedule leaks the
    mean latent through its last step): the denoiser's latents are centred, and decoding them inverts
    the normalisation exactly (the autoencoder's own reconstruction)."""
    task, state = _task(run, {}), run["state"]
    _, rows, _ = _batch(task, 16)
    images = np.stack([r["frontal"] for r in rows])
    ae = task.frozen()["autoencoder"]
    z = task.encode_latents(ae, images, jax.random.PRNGKey(0), state)
    channel_means = np.asarray(z.mean(axis=(0, 1, 2)))
    raw_means = np.asarray(networks.denormalize_latents(z, state.latent_scale, state.latent_shift).mean(axis=(0, 1, 2)))
    assert np.abs(channel_means).max() < 0.5, (channel_means, raw_means)
    assert float(np.sqrt(np.mean(np.square(z.mean(axis=0))))) < 0.75  # centred at every position, not only per channel
    mode = task.encode_latents(ae, images, None, state)
    posterior = task.vae.apply({"params": ae}, jnp.asarray(images, jnp.float32) / 127.5 - 1.0, method=task.vae.encode)
    direct = jnp.clip(task.vae.apply({"params": ae}, posterior.mode(), method=task.vae.decode), -1, 1)
    np.testing.assert_allclose(task.decode_latents(ae, mode, state), direct, atol=1e-4)


def test_sample_with_labels_writes_image_report_and_summary(run):
    wd, config = run["workdir"], run["config"]
    assert len(run["labelled"]) == config.sample.num_samples
    for sid, entry in run["labelled"].items():
        assert entry["prompt"] == "A chest X ray image with cardiomegaly, without edema"
        assert entry["requested"] == {"Cardiomegaly": 1.0, "Edema": 0.0}
        image = np.asarray(Image.open(os.path.join(wd, "samples", sid, "image.png")))
        assert image.shape == (config.data.resolution, config.data.resolution)
        with open(os.path.join(wd, "samples", sid, "report.txt")) as f:
            assert f.read().strip() == entry["report"]
    with open(os.path.join(wd, "samples", "summary.json")) as f:
        summary = json.load(f)
    assert set(run["labelled"]) | set(run["described"]) <= set(summary)  # the --image call kept the others
    assert os.path.isfile(os.path.join(wd, "samples", "grid.png"))


def test_sample_with_image_writes_report_only(run):
    (sid, entry), = run["described"].items()
    assert sid == "input_report" and entry["files"] == ["report.txt"]
    assert not os.path.exists(os.path.join(run["workdir"], "samples", sid, "image.png"))


def test_evaluation_json_has_the_paper_tables(run):
    wd, m = run["workdir"], run["evaluation"]
    with open(os.path.join(wd, "eval", "cxr_irgen_test.json")) as f:
        record = json.load(f)
    assert record["metrics"]["num_conditioning_studies"] == run["config"].eval.num_examples
    fidelity, matched = m["fidelity"]["frontal"], m["matched"]["frontal"]
    assert {"fid", "kid", "n_generated", "n_reference"} <= set(fidelity)
    assert np.isfinite(fidelity["fid"]) and 0.0 < matched["psnr"] < 100.0 and -1.0 <= matched["ssim"] <= 1.0
    assert matched["n"] == run["config"].eval.num_examples  # every generated image beside its study's
    table = m["pathology_auroc"]["generated"]
    assert set(configs.PAPER_PATHOLOGIES) <= set(table)
    assert all(v is None or 0.0 <= v <= 1.0 for v in table.values())
    assert {"bleu_1", "bleu_4", "rouge_l", "labeler"} <= set(m["reports_from_real_images"])
    assert {"bleu_1", "bleu_4", "rouge_l", "clinical"} <= set(m["reports"]["vs_reference"])
    assert m["reports"]["n_matched_reference_ids"] == run["config"].eval.num_examples
    agreement = m["pairs"]["image_report_agreement"]
    assert "micro" in agreement["generated"] and "chance_micro_f1" in agreement
    assert os.path.getsize(os.path.join(wd, "eval", "cxr_irgen_test.html")) > 1000


def test_phantom_labels_without_rendering_match_the_studies():
    source = PhantomSource("train", size=6, resolution=32, lateral=False)
    fast = training_labels(source)
    slow = np.stack([source[i]["labels"] for i in range(6)])
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(slow))
    np.testing.assert_array_equal(np.nan_to_num(fast, nan=9), np.nan_to_num(slow, nan=9))


def test_label_groups_equal_exactly_for_equal_vectors():
    a = np.full((14,), np.nan, np.float32)
    b, c = a.copy(), a.copy()
    b[2] = 0.0  # negative differs from not mentioned
    c[2] = -1.0
    g = np.asarray(label_groups(jnp.asarray(np.stack([a, b, c, a]))))
    assert g[0] == g[3] and len(set(g[:3].tolist())) == 3


def _task(run, variant_overrides):
    from xray_gen.models.cxr_irgen.task import CxrIRGenTask

    config = configs.get_config("smoke")
    config.cxr_irgen.prepared_dir = run["workdir"]
    for key, value in variant_overrides.items():
        config.cxr_irgen[key] = value
    return CxrIRGenTask(config, os.path.join(run["workdir"], "variant"))


def _batch(task, n=2):
    source = IndexedSource(PhantomSource("train", size=task.config.data.phantom.train_size,
                                         resolution=task.config.data.resolution, lateral=False, memoize=True))
    t = CxrInputs(task.tokenizer, task.config.data.resolution, prompt_len=task.config.cxr_irgen.prompt_len,
                  references=task.references())
    rows = [t.random_map(source[i], np.random.default_rng(i)) for i in range(n)]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}, rows, source


def test_training_inputs_prompt_and_reference_never_self(run):
    task = _task(run, {})
    _, rows, source = _batch(task, 6)
    refs = task.references()
    images = [refs.image(j) for j in range(len(source))]
    positives = lambda v: tuple(np.asarray(v) == 1.0)
    checked = 0
    for i, row in enumerate(rows):
        text = " ".join(task.tokenizer.decode_flat(row["prompt_ids"]))
        assert text.split()[:4] == ["a", "chest", "x", "ray"], text
        if not row["reference_flag"]:
            assert not row["reference"].any()
            continue
        matches = [j for j, im in enumerate(images) if np.array_equal(im, row["reference"])]
        assert matches and i not in matches  # a training image, never the example itself
        own = np.asarray(source[i]["labels"])
        assert any(positives(refs.index.labels[j]) == positives(own) for j in matches)
        checked += 1
    assert checked > 0


def test_uvit_condition_averages_text_and_reference_and_zero_without_one(run):
    task = _task(run, {})
    batch, _, _ = _batch(task)
    clip = task.frozen()["clip"]
    _, pooled = task.clip.apply({"params": clip}, batch["prompt_ids"], batch["prompt_mask"], method=task.clip.encode_text)
    _, image = task.clip.apply({"params": clip}, jnp.asarray(batch["reference"], jnp.float32) / 127.5 - 1.0,
                               method=task.clip.encode_image)
    batch["reference_flag"] = np.asarray([1.0, 0.0], np.float32)
    cond = task.condition_of(clip, batch)["context"]
    assert cond.shape == (2, 1, task.clip.text.projection_dim)
    np.testing.assert_allclose(cond[0, 0], 0.5 * (pooled[0] + image[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cond[1, 0], 0.5 * pooled[1], rtol=1e-5, atol=1e-6)
    no_ref = _task(run, {"reference_image": False})
    np.testing.assert_allclose(no_ref.condition_of(clip, batch)["context"][:, 0], pooled, rtol=1e-5, atol=1e-6)


def test_unet_condition_appends_one_reference_token_and_trains(run):
    task = _task(run, {"backbone": "unet"})
    batch, _, _ = _batch(task)
    clip = task.frozen()["clip"]
    tokens, _ = task.clip.apply({"params": clip}, batch["prompt_ids"], batch["prompt_mask"], method=task.clip.encode_text)
    cond = task.condition_of(clip, batch)
    n = task.config.cxr_irgen.prompt_len
    assert cond["context"].shape == (2, n + 1, task.clip.text.width)
    np.testing.assert_allclose(cond["context"][:, :n], tokens, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(cond["mask"][:, :n], batch["prompt_mask"])
    np.testing.assert_array_equal(cond["mask"][:, n], 1.0)
    # The step traces through the U-Net (shapes only: compiling its backward pass costs minutes on 2 cores).
    state = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    new, metrics = jax.eval_shape(task.train_step, state, task.frozen(), jax.tree.map(jnp.asarray, batch))
    assert new.params == state.params and metrics["loss"].shape == ()
    # The reference token reaches the denoiser's output.
    params = task.init(jax.random.PRNGKey(0)).params
    z = jax.random.normal(jax.random.PRNGKey(1), (2,) + task.latent_shape)
    t = jnp.array([10, 500])
    out = task.denoise_fn(params)(z, t, cond)
    batch["reference_flag"] = np.zeros((2,), np.float32)
    out_without = task.denoise_fn(params)(z, t, task.condition_of(clip, batch))
    assert out.shape == z.shape and np.isfinite(np.asarray(out)).all()
    assert float(jnp.max(jnp.abs(out - out_without))) > 0


@pytest.mark.parametrize("backbone", ["uvit", "unet"])
def test_bfloat16_compute_keeps_float32_parameters_and_output(run, backbone):
    fp32, bf16 = _task(run, {"backbone": backbone}), _task(run, {"backbone": backbone, "compute_dtype": "bfloat16"})
    batch, _, _ = _batch(fp32)
    cond = fp32.condition_of(fp32.frozen()["clip"], batch)
    params = fp32.init(jax.random.PRNGKey(0)).params
    assert {p.dtype for p in jax.tree.leaves(bf16.init(jax.random.PRNGKey(0)).params)} == {jnp.dtype(jnp.float32)}
    z = jax.random.normal(jax.random.PRNGKey(1), (2,) + fp32.latent_shape)
    t = jnp.array([10, 500])
    full, half = fp32.denoise_fn(params)(z, t, cond), bf16.denoise_fn(params)(z, t, cond)
    assert half.dtype == jnp.float32
    rel = float(jnp.linalg.norm(half - full) / jnp.linalg.norm(full))
    assert 0 < rel < 0.05  # bf16 rounding (8-bit mantissa) changes the output, but only slightly
    with pytest.raises(ValueError, match="cxr_irgen.compute_dtype"):
        _task(run, {"compute_dtype": "float16"})


def _tree_close(a, b):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (p, x), (_, y) in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7, err_msg=str(p))


def test_pretrained_diffusers_autoencoder_and_unet_plug_into_the_pipeline(run, tmp_path):
    """An RGB diffusers VAE and a diffusers U-Net from disk (as an SD-1.x pipeline's vae/ and unet/):
    the VAE replaces the trained autoencoder (grey in, grey out), the U-Net is the denoiser's start,
    latents use the VAE's own scaling_factor."""
    from xray_gen.models.cxr_irgen import weights
    from xray_gen.models.cxr_irgen.task import CxrIRGenTask
    from xray_gen.nn.autoencoder_kl import AutoencoderKL, VAEConfig
    from xray_gen.nn.unet2d import UNet2DConditionModel, UNetConfig

    base = configs.get_config("smoke")
    r = base.data.resolution
    vcfg = VAEConfig(in_channels=3, out_channels=3, block_out_channels=(8, 8, 8), layers_per_block=1,
                     latent_channels=4, norm_num_groups=8, scaling_factor=0.5)
    vae_params = AutoencoderKL(vcfg).init(jax.random.PRNGKey(1), jnp.zeros((1, r, r, 3)))["params"]
    ucfg = UNetConfig(in_channels=4, out_channels=4, block_out_channels=(16, 16), cross_attn=(True, True),
                      layers_per_block=1, num_heads=2, cross_attention_dim=base.cxr_irgen.clip.width, norm_num_groups=8)
    side = r // vcfg.downsampling_factor
    unet_params = UNet2DConditionModel(ucfg).init(jax.random.PRNGKey(2), jnp.zeros((1, side, side, 4)), jnp.zeros((1,)),
                                                  jnp.zeros((1, 3, ucfg.cross_attention_dim)))["params"]
    vae_dir = weights.save_diffusers(tmp_path / "vae", vae_params, vcfg)
    unet_dir = weights.save_diffusers(tmp_path / "unet", unet_params, ucfg)
    _tree_close(weights.load_diffusers_vae(vae_dir), vae_params)  # export -> import is the identity

    config = configs.get_config("smoke")
    config.cxr_irgen.prepared_dir = run["workdir"]
    config.cxr_irgen.backbone = "unet"
    config.cxr_irgen.autoencoder.pretrained = vae_dir
    config.cxr_irgen.unet.pretrained = unet_dir
    task = CxrIRGenTask(config, str(tmp_path / "work"))
    assert task.denoiser.config.block_out_channels == (16, 16)  # the folder's architecture, not the config's
    assert "autoencoder" not in [p.name for p in task.prerequisites()]  # loaded, never trained
    ae = stages.load_stage(task.prepared, "autoencoder")
    _tree_close(ae, vae_params)
    stats = task.latent_stats()
    assert stats["latent_scale"] == 0.5 and not np.any(stats["latent_shift"])
    task._latent_stats = stats  # what prepare() does before the loop's init
    state = task.warm_start(task.init(jax.random.PRNGKey(0)))
    _tree_close(state.params, unet_params)
    images = np.random.default_rng(0).integers(0, 256, (2, r, r, 1), dtype=np.uint8)
    z = task.encode_latents(ae, images, None, state)
    assert z.shape == (2,) + task.latent_shape
    rgb = AutoencoderKL(vcfg).apply({"params": vae_params}, jnp.repeat(jnp.asarray(images, jnp.float32) / 127.5 - 1, 3, -1),
                                    method=AutoencoderKL(vcfg).encode)
    np.testing.assert_allclose(z, rgb.mode() * 0.5, rtol=1e-5, atol=1e-5)
    assert task.decode_latents(ae, z, state).shape == (2, r, r, 1)

    config.cxr_irgen.unet.pretrained = str(weights.save_diffusers(
        tmp_path / "unet_wide_context", unet_params, UNetConfig(**{**ucfg.__dict__, "cross_attention_dim": 768})))
    with pytest.raises(ValueError, match="cross_attention_dim is 768"):
        CxrIRGenTask(config, str(tmp_path / "work2"))


def _pretrained_clip(folder, text_width=24):
    """A tiny random CLIP saved as a transformers CLIPModel folder (config.json + model.safetensors)
    with its BPE files beside it (an openai/clip-vit-* snapshot's layout): (folder, params, tokenizer)."""
    from test_clip_tokenizer import write_tokenizer  # tests/ is on sys.path

    from xray_gen.data.bpe import CLIPTokenizer
    from xray_gen.models.cxr_irgen import clip_weights
    from xray_gen.nn import clip as clip_nn

    vocab = write_tokenizer(folder, "abcdefghijklmnopqrstuvwxyz,", [("c", "h"), ("e", "s"), ("ch", "es"),
                                                                      ("ches", "t</w>"), ("r", "a"), ("ra", "y</w>")])
    text = clip_nn.text_config("tiny", vocab_size=len(vocab), max_length=40, width=text_width, layers=1, heads=2,
                               mlp_dim=48, eos_token_id=vocab["<|endoftext|>"], projection_dim=text_width)
    vision = clip_nn.vision_config("tiny", image_size=16, patch_size=8, num_channels=3, width=40, layers=1, heads=2,
                                   mlp_dim=48, projection_dim=text_width)
    model = clip_nn.CLIP(text=text, vision=vision)
    params = model.init(jax.random.PRNGKey(3), **networks.clip_init_inputs(model))["params"]
    clip_weights.save_transformers_clip(folder, params, model)
    return str(folder), params, CLIPTokenizer(folder, max_length=40)


def test_pretrained_transformers_clip_plugs_into_the_pipeline(run, tmp_path):
    """A transformers CLIP folder (`cxr_irgen.clip.pretrained`) replaces the CLIP stage: loaded, not
    trained; the label prompt is tokenised by its BPE for training and sampling; its text width is
    the denoiser's context width; reference images are resized to its image size."""
    import shutil

    from xray_gen.models.cxr_irgen import generate, weights
    from xray_gen.models.cxr_irgen.task import CxrIRGenTask
    from xray_gen.nn.unet2d import UNetConfig

    folder, clip_params, bpe = _pretrained_clip(tmp_path / "clip")
    prepared = tmp_path / "prepared"  # the fixture's trained stages, without its CLIP stage
    shutil.copytree(run["workdir"], prepared, ignore=shutil.ignore_patterns("clip", "samples", "eval"))
    config = configs.get_config("smoke")
    config.cxr_irgen.prepared_dir = str(prepared)
    config.cxr_irgen.clip.pretrained = folder
    task = CxrIRGenTask(config, str(tmp_path / "work"))
    assert (task.prompt_len, task.clip.text.width, task.clip.vision.image_size) == (40, 24, 16)
    assert "clip" not in [p.name for p in task.prerequisites()]
    runner.train_prerequisites(task)
    task.prepare()
    assert not os.path.exists(prepared / "clip")  # never trained
    _tree_close(task.frozen()["clip"], clip_params)

    batch = next(iter(task.train_loader()))
    for ids, mask, labels in zip(batch["prompt_ids"], batch["prompt_mask"], batch["labels"]):
        want_ids, want_mask = bpe.encode_flat(label_prompt(labels), 40)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(mask, want_mask)
    assert bpe.decode(batch["prompt_ids"][0]).startswith("a chest x ray image")
    state = task.init(jax.random.PRNGKey(0))
    assert jax.eval_shape(lambda: task.condition_of(task.frozen()["clip"], batch))["context"].shape == (8, 1, 24)
    new, metrics = jax.jit(task.train_step)(state, task.frozen(), jax.tree.map(jnp.asarray, batch))
    assert int(new.step) == 1 and np.isfinite(float(metrics["loss"]))

    raw = np.asarray(batch["labels"][:2])
    inputs, _ = generate.condition_inputs(task, raw, [0, 1])
    np.testing.assert_array_equal(inputs["prompt_ids"][1], bpe.encode_flat(label_prompt(raw[1]), 40)[0])
    np.testing.assert_array_equal(task.null_inputs()["prompt_ids"][0, :3], [bpe.bos_id, bpe.eos_id, bpe.pad_id])

    config.cxr_irgen.backbone = "unet"
    assert CxrIRGenTask(config, str(tmp_path / "unet")).denoiser.config.cross_attention_dim == 24
    unet_dir = tmp_path / "unet_context_32"  # a U-Net made for cxr_irgen.clip.width=32, not this CLIP's 24
    unet_dir.mkdir()
    (unet_dir / "config.json").write_text(json.dumps(weights.unet_config_to_diffusers(UNetConfig(
        in_channels=4, out_channels=4, block_out_channels=(16, 16), cross_attn=(True, True), layers_per_block=1,
        num_heads=2, cross_attention_dim=32, norm_num_groups=8))))
    config.cxr_irgen.unet.pretrained = str(unet_dir)
    with pytest.raises(ValueError, match="cross_attention_dim is 32, this pipeline needs 24.*clip.pretrained="):
        CxrIRGenTask(config, str(tmp_path / "unet2"))


def test_pretrained_text_encoder_beside_tokenizer_and_errors(run, tmp_path):
    """SD's layout (text_encoder/ + tokenizer/, no vision tower: no reference image then) and the
    errors, each naming the config field and the file."""
    from safetensors.numpy import save_file

    from xray_gen.models.cxr_irgen import clip_weights, generate
    from xray_gen.models.cxr_irgen.task import CxrIRGenTask

    folder, _, bpe = _pretrained_clip(tmp_path / "clip")
    sd = tmp_path / "sd"
    for sub in ("text_encoder", "tokenizer"):
        (sd / sub).mkdir(parents=True)
    for name in ("vocab.json", "merges.txt"):
        (sd / "tokenizer" / name).write_bytes((tmp_path / "clip" / name).read_bytes())
    state, _, _ = clip_weights.read_clip_state_dict(folder)
    save_file({k: v for k, v in state.items() if k.startswith("text_model.")},
              str(sd / "text_encoder" / "model.safetensors"))
    text_config = json.loads((tmp_path / "clip" / "config.json").read_text())["text_config"]
    (sd / "text_encoder" / "config.json").write_text(json.dumps({**text_config, "model_type": "clip_text_model",
                                                                "architectures": ["CLIPTextModel"]}))
    config = configs.get_config("smoke")
    config.cxr_irgen.prepared_dir = run["workdir"]
    config.cxr_irgen.clip.pretrained = str(sd / "text_encoder")
    with pytest.raises(ValueError, match="has no vision tower.*reference_image=False"):
        CxrIRGenTask(config, str(tmp_path / "work"))
    config.cxr_irgen.reference_image = False
    task = CxrIRGenTask(config, str(tmp_path / "work"))
    assert task.clip.vision is None and task.clip.text.projection_dim is None
    assert task.prompt_tokenizer.source == str(sd / "tokenizer" / "vocab.json")
    labels = np.full((14,), np.nan, np.float32)
    labels[2] = 1.0
    inputs, _ = generate.condition_inputs(task, labels[None], [0])
    np.testing.assert_array_equal(inputs["prompt_ids"][0], bpe.encode_flat(label_prompt(labels), 40)[0])

    config.cxr_irgen.reference_image = True
    for name in ("vocab.json", "merges.txt"):
        os.remove(tmp_path / "clip" / name)
    config.cxr_irgen.clip.pretrained = folder
    with pytest.raises(FileNotFoundError, match=f"cxr_irgen.clip.pretrained={folder}: .*vocab.json \\+ merges.txt"):
        networks.prompt_tokenizer(config, None, 40)
    os.remove(tmp_path / "clip" / "config.json")
    with pytest.raises(FileNotFoundError, match="cxr_irgen.clip.pretrained=.*model.safetensors: no config.json"):
        networks.clip_model(config, 0)
    os.remove(tmp_path / "clip" / "model.safetensors")
    (tmp_path / "clip" / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(FileNotFoundError, match="cxr_irgen.clip.pretrained=.*only safetensors are read"):
        networks.clip_model(config, 0)
    config.cxr_irgen.clip.pretrained = str(tmp_path / "clip" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pytorch_model.bin: not a .safetensors file; pickled"):
        networks.clip_model(config, 0)


def test_pretrained_clip_sees_resized_rgb_clip_normalised_references(tmp_path):
    from xray_gen.nn import clip as clip_nn

    folder, _, _ = _pretrained_clip(tmp_path / "clip")
    config = configs.get_config("smoke")
    grey = np.full((2, 32, 32, 1), 255, np.uint8)
    net = networks.clip_model(config, 120)
    np.testing.assert_array_equal(networks.clip_images(config, net, grey), np.ones((2, 32, 32, 1)))  # trained here
    config.cxr_irgen.clip.pretrained = folder
    net = networks.clip_model(config, 120)
    pixels = np.asarray(networks.clip_images(config, net, grey))
    assert pixels.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(pixels[0, 5, 7], (1 - np.asarray(clip_nn.CLIP_MEAN)) / np.asarray(clip_nn.CLIP_STD),
                               rtol=1e-5)


def _pretrained_bart(folder, max_positions=64):
    """A tiny random BART saved as a transformers BartForConditionalGeneration folder (config.json +
    model.safetensors) with its byte-level BPE files (a facebook/bart-base snapshot's layout):
    (folder, params, tokenizer)."""
    from test_bart_tokenizer import CHEST, write_bart_tokenizer  # tests/ is on sys.path

    from xray_gen.data.bart_tokenizer import BartTokenizer
    from xray_gen.models.cxr_irgen import bart_weights
    from xray_gen.nn.bart import Bart, bart_config

    vocab = write_bart_tokenizer(folder, CHEST + [("Ġ", "t"), ("h", "e"), ("Ġt", "he")])
    cfg = bart_config("tiny", vocab_size=len(vocab) + 3, d_model=32, encoder_layers=1, decoder_layers=1,
                      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=48,
                      max_position_embeddings=max_positions)  # BART's ids: <s>=0 <pad>=1 </s>=2
    ids = jnp.zeros((1, 4), jnp.int32)
    params = Bart(cfg).init(jax.random.PRNGKey(7), ids, jnp.ones((1, 4)), ids)["params"]
    params = {**params, "final_logits_bias": 0.5 * jax.random.normal(jax.random.PRNGKey(8), (cfg.vocab_size,))}
    bart_weights.save_transformers_bart(folder, params, cfg)
    return str(folder), params, BartTokenizer(folder)


def test_pretrained_transformers_bart_starts_the_language_stage(run, tmp_path):
    """A transformers BART folder (`cxr_irgen.language.pretrained`) gives the language stage its
    architecture and first parameters (then it is fine-tuned); reports for the language stage and
    the prior's targets are tokenised by its BPE, and reports are decoded with it."""
    import dataclasses
    import shutil

    from xray_gen.data.bart_tokenizer import BartTokenizer
    from xray_gen.data.pipeline import open_split
    from xray_gen.models.cxr_irgen import bart_weights, generate
    from xray_gen.models.cxr_irgen.inputs import ReportSource, report_text
    from xray_gen.models.cxr_irgen.task import CxrIRGenTask

    folder, bart_params, bpe = _pretrained_bart(tmp_path / "bart")
    prepared = tmp_path / "prepared"  # the fixture's trained stages, without its language stage and prior
    shutil.copytree(run["workdir"], prepared, ignore=shutil.ignore_patterns("language", "prior", "samples", "eval"))
    config = configs.get_config("smoke")
    config.cxr_irgen.prepared_dir = str(prepared)
    config.cxr_irgen.language.pretrained = folder
    task = CxrIRGenTask(config, str(tmp_path / "work"))
    assert isinstance(task.report_tokenizer, BartTokenizer) and task.report_tokenizer.source == bpe.source
    assert task.text_model.config == dataclasses.replace(bart_weights.bart_config_of(folder), dropout=0.1)
    assert task.prior.config.out_dim == 32  # the folder's d_model, not language.size's

    language_task = stages.stage_task(task.prepared, "language")
    first = language_task.warm_start(language_task.init(jax.random.PRNGKey(0)))
    _tree_close(first.params["bart"], bart_params)  # every parameter starts from the folder's
    n, sections = config.cxr_irgen.report_len, tuple(config.cxr_irgen.report_sections)
    source = ReportSource(open_split(config.data, "train", views=("frontal",)))
    want = {tuple(bpe.encode_flat(report_text(source[i], sections), n)[0]) for i in range(len(source))}
    batch = next(iter(language_task.train_loader()))
    for ids, mask in zip(batch["report_ids"], batch["report_mask"]):
        assert tuple(ids) in want and ids[0] == bpe.bos_id and ids[int(mask.sum()) - 1] == bpe.eos_id
    prior_batch = next(iter(stages.stage_task(task.prepared, "prior").train_loader()))
    assert all(tuple(ids) in want for ids in prior_batch["report_ids"])

    runner.train_prerequisites(task)  # the language stage fine-tunes from the folder, the prior trains on its vectors
    task.prepare()
    tuned = task.frozen()["language"]["bart"]
    steps, lr = config.cxr_irgen.language.steps, config.cxr_irgen.language.learning_rate
    drift = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                for a, b in zip(jax.tree.leaves(tuned), jax.tree.leaves(bart_params)))
    assert 0 < drift <= 1.01 * steps * lr  # Adam moves each parameter by at most ~lr per step

    state = task.init(jax.random.PRNGKey(0))
    main_batch = next(iter(task.train_loader()))
    state, metrics = jax.jit(task.train_step)(state, task.frozen(), jax.tree.map(jnp.asarray, main_batch))
    assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))
    inputs, _ = generate.condition_inputs(task, np.asarray(main_batch["labels"][:2]), [0, 1])
    out = generate.generate_pairs(task, state, inputs, [0, 1], 2)
    ids = np.asarray(out["report_ids"])
    assert ids.shape == (2, n) and np.all(ids[:, 0] == bpe.bos_id) and ids.max() < task.text_model.config.vocab_size
    texts = generate.decode_reports(task.report_tokenizer, ids)
    assert texts == [" ".join(s.strip().rstrip(".").strip() + "." for s in bpe.decode_flat(row) if s.strip(" ."))
                     for row in ids]
    assert all(isinstance(t, str) for t in texts)



def test_pretrained_bart_over_stages_trained_from_scratch_names_the_setting(run, tmp_path):
    """`language.pretrained` pointed at a prepared_dir whose language stage was trained from scratch:
    the stage's checkpoint has other shapes; the error names the setting, not orbax's tree paths."""
    import shutil

    from xray_gen.models.cxr_irgen.task import CxrIRGenTask

    folder, _, _ = _pretrained_bart(tmp_path / "bart")
    prepared = tmp_path / "prepared"
    shutil.copytree(run["workdir"], prepared, ignore=shutil.ignore_patterns("samples", "eval"))
    config = configs.get_config("smoke")
    config.cxr_irgen.prepared_dir = str(prepared)
    config.cxr_irgen.language.pretrained = folder
    task = CxrIRGenTask(config, str(tmp_path / "work"))
    recorded = (prepared / "language" / "config.json").read_text()
    want = re.escape(f"stage 'language' in {prepared}/language was trained with other settings "
                     f"(cxr_irgen.language.pretrained is '{folder}', was '')")
    with pytest.raises(ValueError, match=want):
        runner.train_prerequisites(task)
    assert (prepared / "language" / "config.json").read_text() == recorded
    with pytest.raises(ValueError, match="stage 'language' .* was trained with other settings"):
        task.frozen()

def test_pretrained_bart_errors_name_the_field_and_the_file(tmp_path):
    from xray_gen.data.bart_tokenizer import BartTokenizer

    folder, _, _ = _pretrained_bart(tmp_path / "bart", max_positions=32)
    config = configs.get_config("smoke")
    config.cxr_irgen.language.pretrained = folder
    with pytest.raises(ValueError, match=f"cxr_irgen.report_len=48 exceeds max_position_embeddings=32 of "
                                         f"cxr_irgen.language.pretrained={folder}"):
        networks.report_model(config, 0)
    config.cxr_irgen.report_len = 32
    assert networks.report_model(config, 0).config.max_position_embeddings == 32
    assert isinstance(networks.report_tokenizer(config, None), BartTokenizer)
    cfg = json.loads((tmp_path / "bart" / "config.json").read_text())
    (tmp_path / "bart" / "config.json").write_text(json.dumps({**cfg, "pad_token_id": 3}))
    with pytest.raises(ValueError, match="language.pretrained=.*tokenizer .*vocab.json: pad/bos/eos ids \\(1, 0, 2\\)"):
        networks.report_tokenizer(config, None)
    (tmp_path / "bart" / "config.json").write_text(json.dumps(cfg))
    os.remove(tmp_path / "bart" / "merges.txt")
    with pytest.raises(FileNotFoundError, match=f"cxr_irgen.language.pretrained={folder}: .*vocab.json \\+ merges.txt"):
        networks.report_tokenizer(config, None)
    os.remove(tmp_path / "bart" / "config.json")
    with pytest.raises(FileNotFoundError, match="cxr_irgen.language.pretrained=.*no config.json beside model.safetensors"):
        networks.report_model(config, 0)
    os.remove(tmp_path / "bart" / "model.safetensors")
    (tmp_path / "bart" / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(FileNotFoundError, match="cxr_irgen.language.pretrained=.*no model.safetensors.*only safetensors"):
        networks.report_model(config, 0)
    config.cxr_irgen.language.pretrained = str(tmp_path / "bart" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pytorch_model.bin: not a .safetensors file; pickled"):
        networks.report_model(config, 0)
