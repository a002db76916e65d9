"""Composable config variants: a size and options, comma-separated (configs/default.apply_variant)."""

import pytest

from xray_gen.configs import classifier, cxr_irgen, emixer, pggan, vcn, xraygan


def test_size_then_options_compose():
    c = emixer.get_config("cpu,labels=0.3")
    assert c.emixer.label_fraction == 0.3 and c.data.resolution == emixer.get_config("cpu").data.resolution
    assert emixer.get_config("labels=0.5").data.resolution == emixer.get_config("").data.resolution
    assert c.variant == "cpu,labels=0.3"
    # an option sees the size: the U-Net's cpu budget differs from the U-ViT's, at paper size it does not
    assert cxr_irgen.get_config("cpu,unet").train.num_steps == 1_000 != cxr_irgen.get_config("cpu").train.num_steps
    assert cxr_irgen.get_config("unet").train.num_steps == cxr_irgen.get_config("").train.num_steps
    both = cxr_irgen.get_config("cpu,unet,no_reference")
    assert both.cxr_irgen.backbone == "unet" and not both.cxr_irgen.reference_image
    # options compose in either order with the size; the official batch sizes are paper-size ones
    assert xraygan.get_config("wo_vcn,cpu").xraygan.batch_sizes == xraygan.get_config("cpu").xraygan.batch_sizes
    assert xraygan.get_config("official").xraygan.batch_sizes == (96, 48, 24, 12)
    assert not xraygan.get_config("cpu,wo_vcn").xraygan.use_vcn


@pytest.mark.parametrize("module,variant,message", [
    (emixer, "cpu_labels30", "now written 'cpu,labels=0.3'"),
    (cxr_irgen, "cpu_unet", "now written 'cpu,unet'"),
    (emixer, "cpu,smoke", "names two sizes"),
    (emixer, "labels", "write it as 'labels=VALUE'"),
    (xraygan, "wo_vcn=1", "write it as 'wo_vcn'"),
    (pggan, "cpu,bogus", "unknown config variant part 'bogus'.*'cpu'.*official"),
])
def test_bad_variants_name_the_part(module, variant, message):
    with pytest.raises(ValueError, match=message):
        module.get_config(variant)


@pytest.mark.parametrize("module", [classifier, vcn, xraygan, pggan, emixer, cxr_irgen])
def test_every_size_builds(module):
    for size in ("", "cpu", "smoke"):
        assert module.get_config(size).variant == size
