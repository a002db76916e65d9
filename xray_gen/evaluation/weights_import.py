"""Import FID Inception-v3 weights without ever unpickling.

Standard FID weights (``pt_inception-2015-12-05-6726825d.pth`` from pytorch-fid) cannot be
downloaded on our machines; the user provides the file. It is read with
:func:`xray_gen.evaluation.torch_checkpoint.read_state_dict` (PyTorch zip or legacy checkpoints
through a restricted pickle interpreter that never unpickles, ``.safetensors``, ``.npz``), either
with PyTorch names (``Mixed_5b.branch1x1.conv.weight``) or already converted
(``params/Mixed_5b/...``). This module holds what is specific to the Inception: the name and
layout mapping, the checks against the model, the converted file's format and the CLI.

Conversion to :class:`xray_gen.nn.inception.FIDInceptionV3` variables: conv ``weight`` OIHW ->
``kernel`` HWIO, BN ``weight``/``bias`` -> ``scale``/``bias`` (params) and
``running_mean``/``running_var`` -> ``mean``/``var`` (batch_stats), ``fc.weight`` (out, in) ->
``fc/kernel`` (in, out). Names and shapes are checked against the model, nothing is left over.

CLI::

    python -m xray_gen.evaluation.weights_import --src pt_inception-2015-12-05-6726825d.pth \
        --dst inception_fid.safetensors

The output records the sha256 of the source file in its metadata; :func:`load_inception_params`
is the run-time loader and :func:`inception_weights_info` reports the checksums for the protocol.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import re
import sys
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np

from xray_gen.evaluation.torch_checkpoint import UnsafePickleError, read_state_dict

__all__ = [
    "UnsafePickleError",
    "sha256_file",
    "read_state_dict",
    "torch_to_flax",
    "flatten_variables",
    "unflatten_variables",
    "convert",
    "load_inception_params",
    "inception_weights_info",
    "main",
]

FORMAT = "xray_gen.inception_fid.v1"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# Name mapping
# ------------------------------------------------------------------------------------------------

_IGNORED = re.compile(r"(\.num_batches_tracked$|^AuxLogits\.)")


def _set(tree: dict, path: List[str], value: np.ndarray):
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    if path[-1] in tree:
        raise ValueError(f"duplicate entry {'/'.join(path)}")
    tree[path[-1]] = value


def torch_to_flax(state_dict: Dict[str, np.ndarray]) -> Dict[str, dict]:
    """Maps pytorch-fid Inception names/layouts to ``{"params", "batch_stats"}`` trees."""
    params: dict = {}
    stats: dict = {}
    unknown = []
    for name, value in state_dict.items():
        if _IGNORED.search(name):
            continue
        v = np.asarray(value, dtype=np.float32)
        parts = name.split(".")
        if name == "fc.weight":
            _set(params, ["fc", "kernel"], v.T.copy())
        elif name == "fc.bias":
            _set(params, ["fc", "bias"], v)
        elif len(parts) >= 3 and parts[-2] == "conv" and parts[-1] == "weight" and v.ndim == 4:
            _set(params, parts[:-1] + ["kernel"], np.ascontiguousarray(v.transpose(2, 3, 1, 0)))
        elif len(parts) >= 3 and parts[-2] == "bn":
            leaf = {"weight": ("p", "scale"), "bias": ("p", "bias"),
                    "running_mean": ("s", "mean"), "running_var": ("s", "var")}.get(parts[-1])
            if leaf is None:
                unknown.append(name)
                continue
            _set(params if leaf[0] == "p" else stats, parts[:-1] + [leaf[1]], v)
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"unexpected entries for the FID Inception: {unknown[:10]}"
                         f"{' ...' if len(unknown) > 10 else ''}")
    return {"params": params, "batch_stats": stats}


def flatten_variables(variables: dict, prefix: str = "") -> Dict[str, np.ndarray]:
    out = {}
    for k, v in variables.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(flatten_variables(dict(v.items()), key))
        else:
            out[key] = np.asarray(v)
    return out


def unflatten_variables(flat: Dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for k, v in flat.items():
        _set(tree, k.split("/"), np.asarray(v))
    return tree


@functools.lru_cache(maxsize=1)
def _expected_shapes() -> Dict[str, Tuple[int, ...]]:
    import jax
    import jax.numpy as jnp

    from xray_gen.nn.inception import FIDInceptionV3

    shapes = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0),
                            jnp.zeros((1, 299, 299, 3), jnp.float32))
    return _flat_shapes(shapes)


def _flat_shapes(tree, prefix="") -> Dict[str, Tuple[int, ...]]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if hasattr(v, "shape") and not hasattr(v, "items"):
            out[key] = tuple(v.shape)
        else:
            out.update(_flat_shapes(v, key))
    return out


def _check_against_model(flat: Dict[str, np.ndarray]):
    expected = _expected_shapes()
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    wrong = [(k, flat[k].shape, expected[k]) for k in sorted(set(flat) & set(expected))
             if tuple(flat[k].shape) != expected[k]]
    if missing or extra or wrong:
        raise ValueError("weights do not match FIDInceptionV3: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} "
                         f"({len(missing)}), extra {extra[:5]} ({len(extra)}), "
                         f"wrong shapes {wrong[:5]} ({len(wrong)})")


def _to_flat_flax(raw: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    if raw and all(k.startswith(("params/", "batch_stats/")) for k in raw):
        return {k: np.asarray(v, np.float32) for k, v in raw.items()}
    return flatten_variables(torch_to_flax(raw))


def _check_known_hash(path: str, digest: str):
    m = re.search(r"pt_inception-2015-12-05-([0-9a-f]{6,})\.pth$", os.path.basename(path))
    if m and not digest.startswith(m.group(1)):
        warnings.warn(f"{path}: sha256 {digest[:12]}... does not start with the hash prefix in "
                      f"its name ({m.group(1)}); the file is not the published FID weights",
                      RuntimeWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------------
# Public entry points
# ------------------------------------------------------------------------------------------------


def convert(src: str, dst: str) -> Dict[str, str]:
    """Converts ``src`` (torch / safetensors / npz) to a checked ``.safetensors`` at ``dst``.

    Returns the metadata written: format, source file name and sha256.
    """
    from safetensors.numpy import save_file

    digest = sha256_file(src)
    _check_known_hash(src, digest)
    flat = _to_flat_flax(read_state_dict(src))
    _check_against_model(flat)
    meta = {"format": FORMAT, "model": "FIDInceptionV3", "source_name": os.path.basename(src),
            "source_sha256": digest}
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in sorted(flat.items())}, dst,
              metadata=meta)
    return meta


def load_inception_params(path: str) -> dict:
    """Run-time loader: ``{"params", "batch_stats"}`` for ``FIDInceptionV3.apply``.

    Accepts the converter's output and, for convenience, any input the converter accepts (the
    conversion then happens in memory). Shapes are checked against the model.
    """
    flat = _to_flat_flax(read_state_dict(path))
    _check_against_model(flat)
    return unflatten_variables(flat)


def inception_weights_info(path: str) -> Dict[str, str]:
    """Checksums for the evaluation protocol: ``sha256`` of ``path`` and, for converted files,
    ``source_sha256`` of the original checkpoint (else equal to ``sha256``)."""
    digest = sha256_file(path)
    info = {"sha256": digest, "source_sha256": digest, "source_name": os.path.basename(path)}
    if path.lower().endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
        if meta.get("format") == FORMAT:
            info["source_sha256"] = meta.get("source_sha256", digest)
            info["source_name"] = meta.get("source_name", info["source_name"])
    return info


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xray_gen.evaluation.weights_import",
        description="Convert FID Inception-v3 weights (pytorch-fid .pth, .safetensors or .npz) "
                    "to xray_gen's .safetensors without unpickling.")
    parser.add_argument("--src", required=True, help="input weights file")
    parser.add_argument("--dst", required=True, help="output .safetensors path")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --dst")
    args = parser.parse_args(argv)
    if os.path.exists(args.dst) and not args.force:
        parser.error(f"{args.dst} exists (use --force to overwrite)")
    try:
        meta = convert(args.src, args.dst)
    except (UnsafePickleError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.dst}\n  source {meta['source_name']} sha256 {meta['source_sha256']}\n"
          f"  output sha256 {sha256_file(args.dst)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
