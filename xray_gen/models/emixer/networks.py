"""EMIXER's networks and optimisers, built from the config: the image generator G and critic D
(image_networks.py), the report generator F and the report and joint critics (report_networks.py).

Flax modules hold no arrays, so the steps close over them freely; every variable is in the state.
"""

from __future__ import annotations

import dataclasses

import jax
import optax

from xray_gen.models.emixer.image_networks import Discriminator, Generator
from xray_gen.models.emixer.report_networks import JointDiscriminator, ReportDiscriminator, ReportGenerator

REPORT_ENCODERS = ("flat", "hierarchical")


@dataclasses.dataclass(frozen=True)
class Networks:
    G: Generator
    D: Discriminator
    F: ReportGenerator
    D_report: ReportDiscriminator
    D_joint: JointDiscriminator


def build_networks(config, vocab_size: int, classifier_config) -> Networks:
    """The five networks; F's DenseNet encoder has the evaluation classifier's architecture (its
    weights start from that classifier: `EmixerTask.warm_start`)."""
    e, res = config.emixer, config.data.resolution
    encoder = e.get("report_encoder", "flat")
    if encoder not in REPORT_ENCODERS:
        raise ValueError(f"emixer.report_encoder={encoder!r} is not one of {REPORT_ENCODERS}")
    hierarchical = encoder == "hierarchical"
    cc = classifier_config
    return Networks(
        G=Generator(resolution=res, ch=e.g_ch, channel_multipliers=e.g_multipliers or None, z_dim=e.z_dim,
                    label_embed_dim=e.label_embed_dim, attention_resolution=e.g_attention or None,
                    out_channels=e.out_channels),
        D=Discriminator(ch=e.d_ch, channel_multipliers=e.d_multipliers or None,
                        attention_resolution=e.d_attention or None),
        F=ReportGenerator(vocab_size, e.max_sentences, e.max_words, feature_dim=e.f_hidden, sentence_hidden=e.f_hidden,
                          embed_dim=e.f_hidden, word_hidden=e.f_hidden, word_layers=e.word_layers,
                          encoder_blocks=tuple(cc.block_sizes), encoder_growth_rate=cc.growth_rate,
                          encoder_init_features=cc.init_features, encoder_small_input=cc.small_input,
                          encoder_trainable=e.encoder_trainable, label_tags=e.get("label_tags", False),
                          sentence_feedback=e.get("sentence_feedback", False)),
        D_report=ReportDiscriminator(vocab_size, e.report_embed_dim, e.report_hidden, hierarchical=hierarchical),
        D_joint=JointDiscriminator(vocab_size, ch=e.joint_ch, embed_dim=e.report_embed_dim, hidden=e.report_hidden,
                                   hierarchical=hierarchical),
    )


def optimizers(e) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """(G and F's, the discriminators'). G and F share one optimiser state, but F (a language model)
    may use its own Adam settings: with BigGAN's beta1 = 0 and a GAN-sized rate it learns its
    reports too slowly."""
    f_lr = e.get("f_lr", 0.0) or e.g_lr
    f_b1 = e.b1 if e.get("f_b1", -1.0) < 0 else e.f_b1
    gen_tx = optax.multi_transform(
        {"G": optax.adam(e.g_lr, b1=e.b1, b2=e.b2), "F": optax.adam(f_lr, b1=f_b1, b2=e.b2)},
        lambda tree: {k: jax.tree.map(lambda _: k, v) for k, v in tree.items()})
    return gen_tx, optax.adam(e.d_lr, b1=e.b1, b2=e.b2)
