"""CLIP-style dual encoder (Radford et al. 2021) in Flax linen: a causal text transformer and a ViT.

CXR-IRGen conditions its denoiser on CLIP text token states (the prompt) and on the CLIP image
embedding of a reference image; both towers can be trained here as a contrastive dual encoder on
image-prompt/report pairs (`clip_loss`) or imported from Hugging Face CLIP safetensors
(`xray_gen.models.cxr_irgen.clip_weights`). Parameter names mirror transformers' CLIP modules
(`text_model/encoder/layers_0/self_attn/to_q` <-> `text_model.encoder.layers.0.self_attn.q_proj`;
attention reuses `xray_gen.nn.autoencoder_kl.Attention`, hence its to_q/to_k/to_v/to_out_0 names).

Text tower: token + learned position embeddings -> pre-LN blocks (causal self-attention, MLP with
quick_gelu or gelu) -> final LayerNorm. Token states are the final-LN output (what SD's U-Net
cross-attends to); the pooled state is the one at the end-of-sequence token: the first
`eos_token_id` when the config names one, else the highest token id (original CLIP's convention,
where EOS is the largest id), or an explicit `eos_position`. Padding (mask 0) is never attended to.

Image tower: patch conv (no bias) -> [class token; patches] + position embeddings -> pre-LN
(`pre_layernorm`) -> blocks -> tokens; pooled = post-LN of the class token. A 1-channel X-ray is
tiled to 3 channels when the config has 3 (imported CLIP weights); configs with
`num_channels=1` take grey images directly (models trained here). Inputs are NHWC and used as
given: `clip_pixels` converts [-1, 1] images to CLIP's normalisation for imported weights.

Tokenisation: models trained here use the project's SentencePiece `ReportTokenizer` (pool at its
EOS id 3: `text_config("tiny", vocab_size=tok.vocab_size)`). Imported CLIP text weights need CLIP's
BPE ids: `clip_weights.load_clip_tokenizer` reads its vocab.json + merges.txt (`xray_gen.data.bpe`).

    model = CLIP(text=text_config("tiny"), vision=vision_config("tiny"))
    params = model.init(rng, ids=ids, mask=mask, images=x)["params"]
    tokens, t_emb = model.apply({"params": params}, ids, mask, method=model.encode_text)
    patches, i_emb = model.apply({"params": params}, x, method=model.encode_image)
    loss = clip_loss(t_emb, i_emb, params["logit_scale"])
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from xray_gen.nn.autoencoder_kl import Attention

__all__ = [
    "CLIPTextConfig", "CLIPVisionConfig", "TEXT_CONFIGS", "VISION_CONFIGS", "text_config",
    "vision_config", "CLIP", "CLIPTextTransformer", "CLIPVisionTransformer", "eos_positions", "clip_logits",
    "clip_loss", "clip_pixels", "LOGIT_SCALE_INIT", "LOGIT_SCALE_MAX", "CLIP_MEAN", "CLIP_STD",
]

Dtype = Any

#: CLIP's initial temperature 0.07 as a log scale, and the cap on exp(logit_scale).
LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = 100.0
#: OpenAI CLIP's pixel statistics (RGB), for `clip_pixels`.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


def _check_common(cfg, kind: str):
    if cfg.act not in _ACTIVATIONS:
        raise ValueError(f"{kind}.act={cfg.act!r} is not supported (supported: {', '.join(_ACTIVATIONS)})")
    if cfg.width % cfg.heads:
        raise ValueError(f"{kind}.width={cfg.width} is not divisible by heads={cfg.heads}")
    if cfg.layers < 1:
        raise ValueError(f"{kind}.layers={cfg.layers} must be >= 1")


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """Text tower. `projection_dim=None`: no projection (pooled output is the width-D state)."""

    vocab_size: int = 49408
    max_length: int = 77  # number of learned positions
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_dim: int = 2048
    act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: Optional[int] = None  # None: pool at the highest token id (original CLIP)
    projection_dim: Optional[int] = 512

    def __post_init__(self):
        _check_common(self, "CLIPTextConfig")


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """Image tower (a ViT). `num_channels`: 3 for CLIP weights (grey input is tiled), 1 for X-rays."""

    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: Optional[int] = 512

    def __post_init__(self):
        _check_common(self, "CLIPVisionConfig")
        if self.image_size % self.patch_size:
            raise ValueError(f"CLIPVisionConfig.image_size={self.image_size} is not divisible by "
                             f"patch_size={self.patch_size}")
        if self.num_channels not in (1, 3):
            raise ValueError(f"CLIPVisionConfig.num_channels={self.num_channels} must be 1 or 3")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


TEXT_CONFIGS: Dict[str, CLIPTextConfig] = {
    # CPU-sized, for the project's SentencePiece tokenizer (EOS id 3 = ReportTokenizer.EOS).
    "tiny": CLIPTextConfig(vocab_size=1000, max_length=64, width=64, layers=2, heads=4, mlp_dim=256,
                           eos_token_id=3, projection_dim=64),
    # OpenAI CLIP ViT-B/32's text tower.
    "vit-b-32": CLIPTextConfig(width=512, layers=12, heads=8, mlp_dim=2048, eos_token_id=49407, projection_dim=512),
    # OpenAI CLIP ViT-L/14's text tower (= Stable Diffusion 1.x's text encoder, no projection there).
    "vit-l-14": CLIPTextConfig(width=768, layers=12, heads=12, mlp_dim=3072, eos_token_id=49407, projection_dim=768),
}

VISION_CONFIGS: Dict[str, CLIPVisionConfig] = {
    "tiny": CLIPVisionConfig(image_size=64, patch_size=8, num_channels=1, width=64, layers=2, heads=4,
                             mlp_dim=256, projection_dim=64),
    "vit-b-32": CLIPVisionConfig(image_size=224, patch_size=32, width=768, layers=12, heads=12, mlp_dim=3072,
                                 projection_dim=512),
    "vit-l-14": CLIPVisionConfig(image_size=224, patch_size=14, width=1024, layers=24, heads=16, mlp_dim=4096,
                                 projection_dim=768),
}


def _named(table: Dict[str, Any], kind: str, name: str, overrides: Dict[str, Any]):
    if name not in table:
        raise ValueError(f"unknown {kind} config {name!r}; valid: {', '.join(table)}")
    return dataclasses.replace(table[name], **overrides)


def text_config(name: str = "tiny", **overrides) -> CLIPTextConfig:
    """A named text config ("tiny", "vit-b-32", "vit-l-14") with fields overridden."""
    return _named(TEXT_CONFIGS, "CLIP text", name, overrides)


def vision_config(name: str = "tiny", **overrides) -> CLIPVisionConfig:
    """A named vision config ("tiny", "vit-b-32", "vit-l-14") with fields overridden."""
    return _named(VISION_CONFIGS, "CLIP vision", name, overrides)


# ------------------------------------------------------------------------------------------------
# Blocks
# ------------------------------------------------------------------------------------------------


class CLIPMLP(nn.Module):
    """fc1 -> activation -> fc2 (CLIP's MLP; not the U-Net's GEGLU `FeedForward`)."""

    mlp_dim: int
    act: str
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = _ACTIVATIONS[self.act](nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1")(x))
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(h)


class CLIPEncoderLayer(nn.Module):
    """x + attn(LN(x)); x + MLP(LN(x)). Attention has biases on q/k/v/out (CLIP's)."""

    heads: int
    mlp_dim: int
    act: str
    eps: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
        ln = lambda name: nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name=name)
        attn = Attention(self.heads, x.shape[-1] // self.heads, qkv_bias=True, dtype=self.dtype, name="self_attn")
        x = x + attn(ln("layer_norm1")(x), mask=mask)
        return x + CLIPMLP(self.mlp_dim, self.act, self.dtype, name="mlp")(ln("layer_norm2")(x))


class CLIPEncoder(nn.Module):
    """`layers` pre-LN blocks named layers_0 ... (transformers' `encoder.layers.<i>`)."""

    config: Any  # CLIPTextConfig or CLIPVisionConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
        c = self.config
        for i in range(c.layers):
            x = CLIPEncoderLayer(c.heads, c.mlp_dim, c.act, c.layer_norm_eps, self.dtype, name=f"layers_{i}")(x, mask)
        return x


def _embed(num: int, width: int, name: str) -> nn.Embed:
    return nn.Embed(num, width, embedding_init=nn.initializers.normal(0.02), name=name)


class CLIPTextEmbeddings(nn.Module):
    config: CLIPTextConfig

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        c = self.config
        tok = _embed(c.vocab_size, c.width, "token_embedding")(ids)
        pos = _embed(c.max_length, c.width, "position_embedding").embedding[: ids.shape[1]]
        return tok + pos[None]


class CLIPTextTransformer(nn.Module):
    """ids (B, T), mask (B, T) or None, eos_position (B,) or None -> (tokens (B, T, D), pooled (B, D))."""

    config: CLIPTextConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array, mask: Optional[jax.Array] = None,
                 eos_position: Optional[jax.Array] = None) -> Tuple[jax.Array, jax.Array]:
        c = self.config
        if ids.ndim != 2:
            raise ValueError(f"CLIP text ids must be (batch, length), got shape {ids.shape}")
        b, t = ids.shape
        if t > c.max_length:
            raise ValueError(f"CLIP text length {t} exceeds max_length={c.max_length} (truncate the ids)")
        if mask is not None and mask.shape != ids.shape:
            raise ValueError(f"CLIP text mask must have the ids' shape {ids.shape}, got {mask.shape}")
        x = CLIPTextEmbeddings(c, name="embeddings")(ids).astype(self.dtype)
        attend = jnp.tril(jnp.ones((t, t), bool))[None, None]  # (1, 1, queries, keys)
        if mask is not None:
            attend = attend & (mask > 0)[:, None, None, :]
        x = CLIPEncoder(c, self.dtype, name="encoder")(x, attend)
        x = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="final_layer_norm")(x)
        if eos_position is None:
            eos_position = eos_positions(ids, c.eos_token_id)
        pooled = jnp.take_along_axis(x, jnp.asarray(eos_position, jnp.int32)[:, None, None], axis=1)[:, 0]
        return x, pooled


def eos_positions(ids: jax.Array, eos_token_id: Optional[int]) -> jax.Array:
    """(B,) position of the first `eos_token_id` (0 if absent), or of the highest id when None."""
    if eos_token_id is None:
        return jnp.argmax(ids, axis=-1)
    return jnp.argmax(ids == eos_token_id, axis=-1)


class CLIPVisionEmbeddings(nn.Module):
    config: CLIPVisionConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        p = c.patch_size
        patches = nn.Conv(c.width, (p, p), strides=(p, p), padding="VALID", use_bias=False, dtype=self.dtype,
                          name="patch_embedding")(x)
        b = patches.shape[0]
        patches = patches.reshape(b, -1, c.width)
        cls = self.param("class_embedding", nn.initializers.normal(c.width ** -0.5), (c.width,))
        cls = jnp.broadcast_to(cls.astype(patches.dtype), (b, 1, c.width))
        pos = _embed(c.num_patches + 1, c.width, "position_embedding").embedding
        return jnp.concatenate([cls, patches], axis=1) + pos[None].astype(patches.dtype)


class CLIPVisionTransformer(nn.Module):
    """images (B, H, W, C) -> (tokens (B, 1 + patches, D) before post-LN, pooled (B, D) post-LN class token)."""

    config: CLIPVisionConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
        c = self.config
        if x.ndim != 4 or x.shape[1:3] != (c.image_size, c.image_size):
            raise ValueError(f"CLIP images must be (B, {c.image_size}, {c.image_size}, C) NHWC, got shape {x.shape}")
        if x.shape[-1] == 1 and c.num_channels == 3:
            x = jnp.tile(x, (1, 1, 1, 3))  # grey X-ray into a 3-channel CLIP tower
        if x.shape[-1] != c.num_channels:
            raise ValueError(f"CLIP images have {x.shape[-1]} channels, the config expects {c.num_channels}")
        h = CLIPVisionEmbeddings(c, self.dtype, name="embeddings")(x.astype(self.dtype))
        h = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="pre_layernorm")(h)
        h = CLIPEncoder(c, self.dtype, name="encoder")(h)
        pooled = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="post_layernorm")(h[:, 0])
        return h, pooled


# ------------------------------------------------------------------------------------------------
# Dual encoder
# ------------------------------------------------------------------------------------------------


class CLIP(nn.Module):
    """Text and/or image tower with their projections, and the contrastive `logit_scale`.

    Either tower may be None (a text-only model for SD conditioning, an image-only one for the
    reference embedding). A tower with `projection_dim` gets a bias-free `text_projection` /
    `visual_projection` and `project=True` returns projected pooled embeddings; `logit_scale`
    exists when both towers project. Param names mirror transformers' CLIPModel / CLIPTextModel /
    CLIPVisionModel(WithProjection), so `clip_weights` imports any of them.
    """

    text: Optional[CLIPTextConfig] = None
    vision: Optional[CLIPVisionConfig] = None
    dtype: Dtype = jnp.float32

    def setup(self):
        if self.text is None and self.vision is None:
            raise ValueError("CLIP needs a text or a vision config (both are None)")
        proj = lambda dim, name: nn.Dense(dim, use_bias=False, dtype=self.dtype, name=name)
        if self.text is not None:
            self.text_model = CLIPTextTransformer(self.text, self.dtype)
            if self.text.projection_dim:
                self.text_projection = proj(self.text.projection_dim, "text_projection")
        if self.vision is not None:
            self.vision_model = CLIPVisionTransformer(self.vision, self.dtype)
            if self.vision.projection_dim:
                self.visual_projection = proj(self.vision.projection_dim, "visual_projection")
        if self.has_logit_scale:
            if self.text.projection_dim != self.vision.projection_dim:
                raise ValueError(f"CLIP text projection_dim={self.text.projection_dim} differs from vision "
                                 f"projection_dim={self.vision.projection_dim}")
            self.logit_scale = self.param("logit_scale", nn.initializers.constant(LOGIT_SCALE_INIT), ())

    @property
    def has_logit_scale(self) -> bool:
        return bool(self.text is not None and self.vision is not None
                    and self.text.projection_dim and self.vision.projection_dim)

    def encode_text(self, ids: jax.Array, mask: Optional[jax.Array] = None, eos_position: Optional[jax.Array] = None,
                    project: bool = True) -> Tuple[jax.Array, jax.Array]:
        """ids (B, T) int, mask (B, T) 1 = token -> (token states (B, T, D), pooled (B, E)).

        pooled is projected to E = projection_dim when the config has one and `project`; else it is
        the final-LN state at the EOS position (width D; transformers' `pooler_output`).
        """
        if self.text is None:
            raise ValueError("encode_text: this CLIP has no text tower (text config is None)")
        tokens, pooled = self.text_model(ids, mask, eos_position)
        if project and self.text.projection_dim:
            pooled = self.text_projection(pooled)
        return tokens, pooled.astype(jnp.float32)

    def encode_image(self, images: jax.Array, project: bool = True) -> Tuple[jax.Array, jax.Array]:
        """images (B, S, S, C) NHWC -> (tokens (B, 1 + patches, D), pooled (B, E) or (B, D) as above).

        With `project=False` pooled is transformers' CLIPVisionModel `pooler_output` (what the
        official CXR-IRGen appends to the U-Net context).
        """
        if self.vision is None:
            raise ValueError("encode_image: this CLIP has no vision tower (vision config is None)")
        tokens, pooled = self.vision_model(images)
        if project and self.vision.projection_dim:
            pooled = self.visual_projection(pooled)
        return tokens, pooled.astype(jnp.float32)

    def __call__(self, ids: Optional[jax.Array] = None, mask: Optional[jax.Array] = None,
                 images: Optional[jax.Array] = None) -> Dict[str, Any]:
        """Both encodings at once (for `init`): {"text": (tokens, pooled), "image": ..., "logit_scale"}."""
        out: Dict[str, Any] = {}
        if ids is not None:
            out["text"] = self.encode_text(ids, mask)
        if images is not None:
            out["image"] = self.encode_image(images)
        if self.has_logit_scale:
            out["logit_scale"] = self.logit_scale
        return out


# ------------------------------------------------------------------------------------------------
# Contrastive training
# ------------------------------------------------------------------------------------------------


def _l2_normalise(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def clip_logits(text_emb: jax.Array, image_emb: jax.Array, logit_scale: jax.Array) -> jax.Array:
    """(B_t, E), (B_i, E), log-scale scalar -> (B_t, B_i) scaled cosine similarities.

    The scale exp(logit_scale) is clipped at `LOGIT_SCALE_MAX` (CLIP's 100): beyond it the loss no
    longer pulls the temperature, as CLIP's clamp does, without mutating parameters.
    """
    scale = jnp.minimum(jnp.exp(jnp.asarray(logit_scale, jnp.float32)), LOGIT_SCALE_MAX)
    return scale * (_l2_normalise(text_emb) @ _l2_normalise(image_emb).T)


def clip_loss(text_emb: jax.Array, image_emb: jax.Array, logit_scale: jax.Array,
              groups: Optional[jax.Array] = None) -> jax.Array:
    """Symmetric InfoNCE over a batch of B matching (text, image) pairs -> scalar.

    Mean of text->image and image->text cross-entropies with the diagonal as targets. `groups`
    (B,) optional ids: pairs with equal ids count as matches of each other (uniform target over
    them), since label prompts repeat within a batch and identical prompts are not negatives.
    """
    if text_emb.shape[0] != image_emb.shape[0]:
        raise ValueError(f"clip_loss: {text_emb.shape[0]} texts vs {image_emb.shape[0]} images (pairs needed)")
    logits = clip_logits(text_emb, image_emb, logit_scale)
    b = logits.shape[0]
    if groups is None:
        targets = jnp.eye(b, dtype=jnp.float32)
    else:
        same = (jnp.asarray(groups)[:, None] == jnp.asarray(groups)[None, :]).astype(jnp.float32)
        targets = same / jnp.sum(same, axis=-1, keepdims=True)
    t2i = optax.softmax_cross_entropy(logits, targets)
    i2t = optax.softmax_cross_entropy(logits.T, targets)  # targets are symmetric
    return 0.5 * (jnp.mean(t2i) + jnp.mean(i2t))


def clip_pixels(images: jax.Array) -> jax.Array:
    """[-1, 1] NHWC images (1 or 3 channels) -> CLIP-normalised 3-channel pixels for imported weights.

    The official CXR-IRGen feeds [-1, 1] images to CLIP unnormalised; call this to use CLIP as it
    was trained instead. Resizing to the tower's image_size is the caller's (e.g. jax.image.resize).
    """
    x = (images.astype(jnp.float32) + 1.0) * 0.5
    if x.shape[-1] == 1:
        x = jnp.tile(x, (1,) * (x.ndim - 1) + (3,))
    return (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)
