"""Jitted steps and samplers take the frozen networks as arguments: their lowered programs do not
grow with the frozen networks' size (a closure over weights would embed them as constants)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import lowering  # noqa: E402


def _by_function(rows):
    return {r["function"]: r for r in rows}


def _assert_flat(small, large, min_growth):
    """Each function's program grows by far less than its frozen networks (a closure over weights
    adds two hexadecimal characters per byte of them)."""
    assert small.keys() == large.keys()
    for name in small:
        grown = large[name]["frozen_param_bytes"] - small[name]["frozen_param_bytes"]
        assert grown >= min_growth, (name, grown)  # the test widened what the function reads
        assert large[name]["hlo_bytes"] - small[name]["hlo_bytes"] < 0.05 * grown, (name, small[name], large[name])
        assert large[name]["largest_constant_bytes"] < 16_384, (name, large[name])


def test_xraygan_steps_do_not_embed_the_vcn(tmp_path, monkeypatch):
    from xray_gen.models.xraygan.task import XRayGANTask

    small = _by_function(lowering.measure("xraygan", "smoke", str(tmp_path / "a")))
    vcn_config = XRayGANTask.vcn_config

    def wider(self, resolution):
        vc = vcn_config(self, resolution)
        vc.vcn.widths = tuple(4 * w for w in vc.vcn.widths)
        return vc

    monkeypatch.setattr(XRayGANTask, "vcn_config", wider)
    large = _by_function(lowering.measure("xraygan", "smoke", str(tmp_path / "b")))
    gan = [n for n in small if small[n]["frozen_param_bytes"] > 0]
    assert gan, "no XRayGAN phase reads its VCN"
    _assert_flat({n: small[n] for n in gan}, {n: large[n] for n in gan}, min_growth=200_000)


@pytest.mark.parametrize("model", ["cxr_irgen"])
def test_cxr_irgen_step_and_sampler_do_not_embed_the_stages(tmp_path, model):
    def wider(config):
        x = config.cxr_irgen
        x.autoencoder.block_out_channels = tuple(4 * w for w in x.autoencoder.block_out_channels)
        x.clip.width, x.clip.projection_dim = 4 * x.clip.width, 4 * x.clip.projection_dim

    small = _by_function(lowering.measure(model, "smoke", str(tmp_path / "a")))
    large = _by_function(lowering.measure(model, "smoke", str(tmp_path / "b"), configure=wider))
    assert set(small) == {"train_phase_0", "sample"}
    _assert_flat(small, large, min_growth=1_000_000)


def test_prior_stage_step_takes_its_frozen_networks_as_arguments(tmp_path):
    """CXR-IRGen's prior reads the frozen autoencoder and language stage: lowered with random ones
    of two widths, its program stays the same size."""
    import jax

    from xray_gen.models.cxr_irgen import stages

    sizes = []
    for i, factor in enumerate((1, 4)):
        def wider(config, factor=factor):
            a = config.cxr_irgen.autoencoder
            a.block_out_channels = tuple(factor * w for w in a.block_out_channels)

        task, _ = lowering.make_task("cxr_irgen", "smoke", str(tmp_path / str(i)), configure=wider)
        prior = stages.stage_task(task.prepared, "prior")
        key = jax.random.PRNGKey(0)
        frozen = jax.eval_shape(lambda k: prior.random_frozen(0, k), key)
        batch = lowering.structs(next(iter(prior.train_loader())))
        row = lowering.lowered_size(prior.train_step, jax.eval_shape(prior.init, key), frozen, batch)
        sizes.append((row["hlo_bytes"], lowering.tree_bytes(frozen)))
    (hlo_small, frozen_small), (hlo_large, frozen_large) = sizes
    assert frozen_large - frozen_small > 100_000
    assert hlo_large - hlo_small < 0.05 * (frozen_large - frozen_small)
