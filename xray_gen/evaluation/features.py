"""Jitted feature extraction for FID/KID/IS, for Inception-v3 and for any in-domain network.

``make_feature_fn(apply_fn, params, resize_to, grey_to_rgb)`` wraps any
``apply_fn(params, images) -> features`` into a host function that accepts image batches as
uint8 ([0, 255]) or float in [-1, 1], shaped (N, H, W) or (N, H, W, C), and returns float32
(N, D) NumPy features. Preprocessing happens inside the jitted function:

1. uint8 -> float32 [-1, 1] (``x / 127.5 - 1``); float input is taken to be in [-1, 1] already;
2. bilinear resize with ``jax.image.resize`` to ``resize_to`` (no antialiasing by default, which
   equals PyTorch's ``F.interpolate(mode="bilinear", align_corners=False)`` used by pytorch-fid);
3. grey -> RGB by repeating the single channel 3 times when ``grey_to_rgb``.

Which network defines "FID" is a protocol choice recorded with every result
(:class:`FeatureExtractor` carries the name, weights checksum and preprocessing). Standard
Inception weights cannot be downloaded on our machines, so :func:`select_fid_extractor` uses the
Inception only when the user supplies the converted weights file, and otherwise the in-domain CXR
classifier's penultimate features (the offline default), as EMIXER and XRayGAN did.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "make_feature_fn",
    "preprocess",
    "FeatureExtractor",
    "params_checksum",
    "inception_extractor",
    "classifier_extractor",
    "select_fid_extractor",
    "extract_all",
]

Size = Union[int, Tuple[int, int], None]


def _size(resize_to: Size) -> Optional[Tuple[int, int]]:
    if resize_to is None:
        return None
    if isinstance(resize_to, int):
        return (resize_to, resize_to)
    h, w = resize_to
    return (int(h), int(w))


def preprocess(images, resize_to: Size, grey_to_rgb: bool, antialias: bool = False):
    """uint8 or [-1,1] float, (N,H,W[,C]) -> float32 NHWC in [-1, 1], resized, channels fixed.

    Traceable (used inside jit); also usable eagerly.
    """
    x = jnp.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"expected (N, H, W) or (N, H, W, C) images, got {x.shape}")
    if x.dtype == jnp.uint8:
        x = x.astype(jnp.float32) / 127.5 - 1.0
    else:
        x = x.astype(jnp.float32)
    size = _size(resize_to)
    if size is not None and tuple(x.shape[1:3]) != size:
        x = jax.image.resize(x, (x.shape[0], *size, x.shape[3]), method="bilinear",
                             antialias=antialias)
    if grey_to_rgb and x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    return x


def make_feature_fn(apply_fn: Callable[[Any, jax.Array], Any], params, resize_to: Size,
                    grey_to_rgb: bool, *, batch_size: Optional[int] = None,
                    antialias: bool = False) -> Callable[[Any], np.ndarray]:
    """Host callable ``images -> float32 (N, D)`` around a jitted preprocess + ``apply_fn``.

    ``params`` is passed to the compiled function as an argument (not baked in as constants).
    With ``batch_size``, inputs are cut/padded to that many images per call, so one shape is
    compiled however the caller batches; otherwise each new input shape compiles once.
    """

    @jax.jit
    def _features(p, x):
        x = preprocess(x, resize_to, grey_to_rgb, antialias)
        f = apply_fn(p, x)
        return jnp.reshape(f, (f.shape[0], -1)).astype(jnp.float32)

    def feature_fn(images) -> np.ndarray:
        images = np.asarray(images) if not isinstance(images, jax.Array) else images
        n = images.shape[0]
        if batch_size is None or n == 0:
            return np.asarray(_features(params, images))
        outs = []
        for start in range(0, n, batch_size):
            chunk = images[start:start + batch_size]
            m = chunk.shape[0]
            if m < batch_size:
                pad = [(0, batch_size - m)] + [(0, 0)] * (chunk.ndim - 1)
                chunk = np.pad(np.asarray(chunk), pad)
            outs.append(np.asarray(_features(params, chunk))[:m])
        return np.concatenate(outs, axis=0)

    return feature_fn


def params_checksum(params) -> str:
    """sha256 over a parameter pytree's paths, dtypes, shapes and bytes (order-independent of
    dict insertion order)."""
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """A feature function plus what the protocol must record about it."""

    name: str
    weights_checksum: str
    fn: Callable[[Any], np.ndarray] = dataclasses.field(compare=False, repr=False)
    resolution: Tuple[int, int]
    grey_to_rgb: bool
    resize_policy: str

    def __call__(self, images) -> np.ndarray:
        return self.fn(images)

    @property
    def grey_rule(self) -> str:
        return ("grey repeated to 3 channels" if self.grey_to_rgb
                else "channels passed through unchanged")


def _resize_policy(size: Optional[Tuple[int, int]], antialias: bool) -> str:
    if size is None:
        return "none (native resolution)"
    return (f"bilinear jax.image.resize to {size[0]}x{size[1]}, half-pixel centres, "
            f"antialias={antialias}; uint8 -> x/127.5-1, float taken as [-1,1]")


def inception_extractor(weights_path: str, output: str = "pool", batch_size: Optional[int] = 50,
                        antialias: bool = False) -> FeatureExtractor:
    """FID Inception-v3: pool3 2048-d (``pool``), the 1008 ``logits`` for the Inception Score, or
    ``pool+logits`` concatenated (N, 2048 + 1008) so one pass gives both."""
    from xray_gen.evaluation import weights_import
    from xray_gen.nn.inception import INPUT_SIZE, FIDInceptionV3

    if output not in ("pool", "logits", "pool+logits"):
        raise ValueError(f"output must be 'pool', 'logits' or 'pool+logits', got {output!r}")
    variables = weights_import.load_inception_params(weights_path)
    info = weights_import.inception_weights_info(weights_path)
    model = FIDInceptionV3()

    def apply_fn(v, x):
        out = model.apply(v, x)
        if output == "pool+logits":
            flat = lambda a: a.reshape(a.shape[0], -1)
            return jnp.concatenate([flat(out["pool"]), flat(out["logits"])], axis=-1)
        return out[output]

    size = (INPUT_SIZE, INPUT_SIZE)
    fn = make_feature_fn(apply_fn, variables, size, True, batch_size=batch_size,
                         antialias=antialias)
    return FeatureExtractor(name=f"inception_v3_fid_{output}",
                            weights_checksum=info["source_sha256"], fn=fn, resolution=size,
                            grey_to_rgb=True, resize_policy=_resize_policy(size, antialias))


def classifier_extractor(apply_fn: Callable[[Any, jax.Array], Any], params, name: str,
                         resize_to: Size, grey_to_rgb: bool = False,
                         weights_checksum: Optional[str] = None,
                         batch_size: Optional[int] = 50,
                         antialias: bool = False) -> FeatureExtractor:
    """An in-domain network (e.g. the CXR DenseNet's penultimate features) as FID extractor.

    ``apply_fn(params, images NHWC [-1,1]) -> (N, D)``; the checksum defaults to
    :func:`params_checksum` of ``params``.
    """
    size = _size(resize_to)
    fn = make_feature_fn(apply_fn, params, size, grey_to_rgb, batch_size=batch_size,
                         antialias=antialias)
    return FeatureExtractor(name=name, weights_checksum=weights_checksum or params_checksum(params),
                            fn=fn, resolution=size or (0, 0), grey_to_rgb=grey_to_rgb,
                            resize_policy=_resize_policy(size, antialias))


def select_fid_extractor(inception_weights: Optional[str] = None,
                         classifier: Optional[FeatureExtractor] = None,
                         batch_size: Optional[int] = 50) -> FeatureExtractor:
    """Inception-v3 when the user supplied its weights, else the in-domain classifier (offline
    default). The returned extractor's ``name`` says which, and goes into every result JSON."""
    if inception_weights:
        return inception_extractor(inception_weights, batch_size=batch_size)
    if classifier is None:
        raise ValueError("no FID feature extractor: give the converted Inception weights "
                         "(python -m xray_gen.evaluation.weights_import --src ... --dst ...) or a "
                         "trained in-domain classifier")
    logging.info("FID uses the in-domain extractor %s (no Inception weights given); numbers are "
                 "not comparable with published Inception FIDs", classifier.name)
    return classifier


def extract_all(feature_fn: Callable[[Any], np.ndarray], batches: Sequence) -> np.ndarray:
    """Concatenated features of an iterable of image batches."""
    return np.concatenate([np.asarray(feature_fn(b)) for b in batches], axis=0)
