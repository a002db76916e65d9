"""Import diffusers-format Stable-Diffusion-1.x U-Net and VAE weights into the Flax modules.

Input is what `save_pretrained` writes for a model folder (e.g. `unet/` or `vae/` of an SD
pipeline): `diffusion_pytorch_model.safetensors` plus `config.json`. Only safetensors are read
(through `safetensors.numpy`); pickled `.bin`/`.ckpt` files are refused, never unpickled.

Name mapping is mechanical because the Flax modules mirror diffusers' module tree: every
`.<index>` becomes `_<index>` on the previous name (`down_blocks.0.resnets.1.conv1` ->
`down_blocks_0/resnets_1/conv1`), and the leaf becomes `kernel` (conv / linear weight), `scale`
(GroupNorm / LayerNorm weight) or `bias`. Layouts: conv OIHW -> HWIO, Linear (out, in) -> (in, out);
a 1x1 conv weight where Flax has a Dense (old VAE checkpoints' attention) is squeezed first, and
old VAE attention names (`query`, `key`, `value`, `proj_attn`) are read as `to_q`, `to_k`, `to_v`,
`to_out.0`. Every expected parameter must be found with the expected shape and nothing may be left
over; errors name the offending diffusers key and file.

    cfg = unet_config_from_diffusers("sd/unet/config.json")
    params = load_diffusers_unet("sd/unet", cfg)  # -> the "params" collection
    eps = UNet2DConditionModel(cfg).apply({"params": params}, z, t, context)
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from xray_gen.nn.autoencoder_kl import AutoencoderKL, VAEConfig
from xray_gen.nn.unet2d import UNet2DConditionModel, UNetConfig

__all__ = [
    "WEIGHTS_NAME",
    "CONFIG_NAME",
    "read_safetensors",
    "read_config",
    "unet_config_from_diffusers",
    "vae_config_from_diffusers",
    "convert_state_dict",
    "unet_param_shapes",
    "vae_param_shapes",
    "load_diffusers_unet",
    "load_diffusers_vae",
    "vae_config_to_diffusers",
    "unet_config_to_diffusers",
    "to_state_dict",
    "save_diffusers",
]

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"

ConfigLike = Union[str, os.PathLike, Mapping[str, Any]]
_LEGACY_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------


def _resolve(path_or_dir: Union[str, os.PathLike]) -> Tuple[str, Optional[str]]:
    """(weights file, config.json beside it or None) for a diffusers folder or a weights file."""
    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        weights = os.path.join(path, WEIGHTS_NAME)
        if not os.path.exists(weights):
            present = sorted(os.listdir(path))
            raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME} (found {present}); only safetensors are "
                                    "read; convert pickled .bin/.ckpt files with a trusted tool first")
    else:
        weights = path
    if not weights.endswith(".safetensors"):
        raise ValueError(f"{weights}: not a .safetensors file; pickled checkpoints are never loaded")
    if not os.path.exists(weights):
        raise FileNotFoundError(f"{weights}: no such file")
    config = os.path.join(os.path.dirname(weights), CONFIG_NAME)
    return weights, config if os.path.exists(config) else None


def read_safetensors(path: Union[str, os.PathLike]) -> Dict[str, np.ndarray]:
    """Flat {name: array} from a `.safetensors` file (fp32/fp16/bf16 kept as stored)."""
    from safetensors.numpy import load_file

    path = os.fspath(path)
    try:
        return dict(load_file(path))
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e


def read_config(config: ConfigLike) -> Dict[str, Any]:
    """A diffusers config as a dict, from a mapping, a config.json path or a model folder."""
    if isinstance(config, Mapping):
        return dict(config)
    path = os.fspath(config)
    if os.path.isdir(path):
        path = os.path.join(path, CONFIG_NAME)
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from e


# ------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------


def _check_class(cfg: Mapping[str, Any], expected: str):
    name = cfg.get("_class_name")
    if name is not None and name != expected:
        raise ValueError(f"diffusers config is for {name!r}, expected {expected!r}")


def _require(cfg: Mapping[str, Any], field: str, allowed: tuple, default: Any):
    """Rejects options this implementation does not have, naming the field."""
    value = cfg.get(field, default)
    if value not in allowed:
        raise ValueError(f"diffusers config field {field!r}={value!r} is not supported "
                         f"(supported: {', '.join(repr(a) for a in allowed)})")


def _uniform(cfg: Mapping[str, Any], field: str, default: Any, n: int) -> Any:
    """A per-level field given as one value or a list of equal values -> that value."""
    value = cfg.get(field, default)
    if isinstance(value, (list, tuple)):
        if len(value) != n or len(set(map(str, value))) != 1:
            raise ValueError(f"diffusers config field {field!r}={value!r}: only one value for all "
                             f"{n} levels is supported")
        value = value[0]
    return value


def unet_config_from_diffusers(config: ConfigLike) -> UNetConfig:
    """`UNetConfig` from a diffusers `UNet2DConditionModel` config (dict, config.json or folder).

    Options outside the SD-1.x/2.x family (class/addition embeddings, dual cross-attention, other
    time embeddings or block types, ...) raise with the field's name rather than load wrongly.
    """
    cfg = read_config(config)
    _check_class(cfg, "UNet2DConditionModel")
    down = list(cfg.get("down_block_types", ()))
    up = list(cfg.get("up_block_types", ()))
    kinds = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
    for name in down:
        if name not in kinds:
            raise ValueError(f"diffusers config field 'down_block_types' has unsupported {name!r} "
                             f"(supported: {sorted(kinds)})")
    mirrored = [n.replace("Down", "Up") for n in reversed(down)]
    if up != mirrored:
        raise ValueError(f"diffusers config field 'up_block_types'={up} must mirror down_block_types "
                         f"(expected {mirrored})")
    n = len(down)
    block_out = tuple(cfg["block_out_channels"])
    if len(block_out) != n:
        raise ValueError(f"diffusers config: {len(block_out)} block_out_channels for {n} down blocks")
    _require(cfg, "mid_block_type", ("UNetMidBlock2DCrossAttn",), "UNetMidBlock2DCrossAttn")
    _require(cfg, "act_fn", ("silu",), "silu")
    _require(cfg, "center_input_sample", (False,), False)
    _require(cfg, "dual_cross_attention", (False,), False)
    _require(cfg, "class_embed_type", (None,), None)
    _require(cfg, "num_class_embeds", (None,), None)
    _require(cfg, "addition_embed_type", (None,), None)
    _require(cfg, "encoder_hid_dim", (None,), None)
    _require(cfg, "time_embedding_type", ("positional",), "positional")
    _require(cfg, "time_embedding_dim", (None,), None)
    _require(cfg, "time_embedding_act_fn", (None,), None)
    _require(cfg, "timestep_post_act", (None,), None)
    _require(cfg, "time_cond_proj_dim", (None,), None)
    _require(cfg, "conv_in_kernel", (3,), 3)
    _require(cfg, "conv_out_kernel", (3,), 3)
    _require(cfg, "downsample_padding", (1,), 1)
    _require(cfg, "mid_block_scale_factor", (1, 1.0), 1)
    _require(cfg, "resnet_time_scale_shift", ("default",), "default")
    _require(cfg, "resnet_skip_time_act", (False,), False)
    _require(cfg, "resnet_out_scale_factor", (1, 1.0), 1.0)
    _require(cfg, "attention_type", ("default",), "default")
    _require(cfg, "cross_attention_norm", (None,), None)
    _require(cfg, "class_embeddings_concat", (False,), False)
    _require(cfg, "mid_block_only_cross_attention", (None, False), None)
    _require(cfg, "reverse_transformer_layers_per_block", (None,), None)
    if _uniform(cfg, "only_cross_attention", False, n):
        raise ValueError("diffusers config field 'only_cross_attention'=True is not supported")
    # diffusers reads `attention_head_dim` as the number of heads when num_attention_heads is unset
    # (the SD-1.x naming quirk: attention_head_dim=8 means 8 heads of width C/8).
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
    heads = tuple(int(h) for h in heads) if isinstance(heads, (list, tuple)) else int(heads)
    sample_size = cfg.get("sample_size")
    return UNetConfig(
        in_channels=int(cfg.get("in_channels", 4)),
        out_channels=int(cfg.get("out_channels", 4)),
        block_out_channels=block_out,
        cross_attn=tuple(kinds[d] for d in down),
        layers_per_block=int(_uniform(cfg, "layers_per_block", 2, n)),
        transformer_layers=int(_uniform(cfg, "transformer_layers_per_block", 1, n)),
        num_heads=heads,
        cross_attention_dim=int(_uniform(cfg, "cross_attention_dim", 1280, n)),
        use_linear_projection=bool(cfg.get("use_linear_projection", False)),
        norm_num_groups=int(cfg.get("norm_num_groups", 32)),
        norm_eps=float(cfg.get("norm_eps", 1e-5)),
        flip_sin_to_cos=bool(cfg.get("flip_sin_to_cos", True)),
        freq_shift=float(cfg.get("freq_shift", 0)),
        sample_size=int(sample_size) if isinstance(sample_size, int) else None,
    )


def vae_config_from_diffusers(config: ConfigLike) -> VAEConfig:
    """`VAEConfig` from a diffusers `AutoencoderKL` config (dict, config.json or folder)."""
    cfg = read_config(config)
    _check_class(cfg, "AutoencoderKL")
    block_out = tuple(cfg.get("block_out_channels", (64,)))
    n = len(block_out)
    for field, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = list(cfg.get(field, [kind] * n))
        if types != [kind] * n:
            raise ValueError(f"diffusers config field {field!r}={types} is not supported "
                             f"(expected {n} x {kind!r})")
    _require(cfg, "act_fn", ("silu",), "silu")
    for field in ("latents_mean", "latents_std"):
        if cfg.get(field) is not None:
            raise ValueError(f"diffusers config field {field!r} is set; per-channel latent statistics "
                             "are not supported")
    shift = cfg.get("shift_factor")
    return VAEConfig(
        in_channels=int(cfg.get("in_channels", 3)),
        out_channels=int(cfg.get("out_channels", 3)),
        block_out_channels=block_out,
        layers_per_block=int(cfg.get("layers_per_block", 1)),
        latent_channels=int(cfg.get("latent_channels", 4)),
        norm_num_groups=int(cfg.get("norm_num_groups", 32)),
        mid_attention=bool(cfg.get("mid_block_add_attention", True)),
        use_quant_conv=bool(cfg.get("use_quant_conv", True)),
        use_post_quant_conv=bool(cfg.get("use_post_quant_conv", True)),
        scaling_factor=float(cfg.get("scaling_factor", 0.18215)),
        shift_factor=None if shift is None else float(shift),
    )


# ------------------------------------------------------------------------------------------------
# Conversion
# ------------------------------------------------------------------------------------------------

_INDEX = re.compile(r"\.(\d+)(?=\.|$)")
_CONTAINER = re.compile(r"^(.*)_(\d+)$")


def _flax_path(key: str) -> Tuple[str, ...]:
    """'down_blocks.0.resnets.1.conv1.weight' -> ('down_blocks_0', 'resnets_1', 'conv1', 'weight')."""
    return tuple(_INDEX.sub(r"_\1", key).split("."))


def _legacy_alias(key: str) -> str:
    """Old VAE attention names -> current ones (both occur in published SD-1.x VAE files)."""
    parts = key.split(".")
    if len(parts) >= 3 and parts[-2] in _LEGACY_VAE_ATTENTION and "attentions" in parts:
        parts = parts[:-2] + _LEGACY_VAE_ATTENTION[parts[-2]].split(".") + parts[-1:]
    return ".".join(parts)


def _torch_key(path: Tuple[str, ...], index_names: frozenset) -> str:
    """Inverse of `_flax_path` for error messages; the leaf name is torch's."""
    out = []
    for p in path[:-1]:
        m = _CONTAINER.match(p)
        out.append(f"{m.group(1)}.{m.group(2)}" if m and m.group(1) in index_names else p)
    out.append({"kernel": "weight", "scale": "weight"}.get(path[-1], path[-1]))
    return ".".join(out)


def _convert_leaf(key: str, value: np.ndarray, expected: Tuple[int, ...]) -> np.ndarray:
    v = np.asarray(value)
    if len(expected) == 4 and v.ndim == 4:  # conv OIHW -> HWIO
        v = v.transpose(2, 3, 1, 0)
    elif len(expected) == 2 and v.ndim == 4 and v.shape[2:] == (1, 1):  # 1x1 conv stored for a Dense
        v = v[:, :, 0, 0].T
    elif len(expected) == 2 and v.ndim == 2:  # Linear (out, in) -> (in, out)
        v = v.T
    if tuple(v.shape) != tuple(expected):
        hint = ""
        if {v.ndim, len(expected)} == {2, 4}:
            hint = " (conv vs linear layout: check use_linear_projection in the config)"
        raise ValueError(f"diffusers key {key!r}: shape {tuple(value.shape)} does not fit the Flax "
                         f"parameter of shape {tuple(expected)}{hint}")
    return v


def convert_state_dict(state: Mapping[str, np.ndarray], expected: Mapping[Tuple[str, ...], Any],
                       dtype: Any = jnp.float32, source: str = "state dict") -> Dict[str, Any]:
    """diffusers {key: array} -> nested Flax params matching `expected` ({flax path: shape-struct}).

    Raises ValueError naming `source` and the keys that are left over, missing or mis-shaped.
    """
    index_names = frozenset(m.group(1) for path in expected for p in path
                            for m in [_CONTAINER.match(p)] if m)
    flat: Dict[Tuple[str, ...], np.ndarray] = {}
    unexpected = []
    for key, value in state.items():
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating) and value.dtype.name != "bfloat16":
            raise ValueError(f"{source}: diffusers key {key!r} has dtype {value.dtype}, expected floating point")
        path = _flax_path(_legacy_alias(key))
        leaf = path[-1]
        candidates = {"weight": ("kernel", "scale"), "bias": ("bias",)}.get(leaf, ())
        target = next((path[:-1] + (c,) for c in candidates if path[:-1] + (c,) in expected), None)
        if target is None:
            unexpected.append(key)
            continue
        if target in flat:
            raise ValueError(f"{source}: diffusers key {key!r} duplicates another key mapped to "
                             f"{'/'.join(target)} (old and new attention names both present?)")
        try:
            converted = _convert_leaf(key, value, tuple(expected[target].shape))
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
        flat[target] = np.asarray(converted, dtype=dtype)
    missing = [p for p in expected if p not in flat]
    if unexpected or missing:
        lines = [f"{source} does not match the Flax model:"]
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected key(s): " + ", ".join(repr(k) for k in unexpected[:10])
                         + (" ..." if len(unexpected) > 10 else ""))
        if missing:
            lines.append(f"  {len(missing)} missing key(s): " + ", ".join(
                f"{_torch_key(p, index_names)!r} (for {'/'.join(p)})" for p in missing[:10])
                + (" ..." if len(missing) > 10 else ""))
        lines.append("  check that the config matches the weights")
        raise ValueError("\n".join(lines))
    return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()})


def _expected(init: Callable[[], Any]) -> Dict[Tuple[str, ...], Any]:
    shapes = jax.eval_shape(init)
    return traverse_util.flatten_dict(shapes["params"])


def unet_param_shapes(config: UNetConfig) -> Dict[Tuple[str, ...], Any]:
    """{flax path: ShapeDtypeStruct} of `UNet2DConditionModel(config)`, without allocating."""
    model = UNet2DConditionModel(config)
    s = config.downsampling_factor
    x = jnp.zeros((1, s, s, config.in_channels))
    ctx = jnp.zeros((1, 1, config.cross_attention_dim))
    return _expected(lambda: model.init(jax.random.key(0), x, jnp.zeros((1,)), ctx))


def vae_param_shapes(config: VAEConfig) -> Dict[Tuple[str, ...], Any]:
    """{flax path: ShapeDtypeStruct} of `AutoencoderKL(config)`, without allocating."""
    model = AutoencoderKL(config)
    s = config.downsampling_factor
    x = jnp.zeros((1, s, s, config.in_channels))
    return _expected(lambda: model.init(jax.random.key(0), x))


def _load(path_or_dir, config, config_type, from_json, shapes_fn, dtype):
    weights, config_path = _resolve(path_or_dir)
    if config is None:
        if config_path is None:
            raise FileNotFoundError(f"{weights}: no {CONFIG_NAME} beside it; pass the config explicitly")
        config = from_json(config_path)
    elif isinstance(config, (UNetConfig, VAEConfig)):
        if not isinstance(config, config_type):
            raise TypeError(f"expected a {config_type.__name__}, got a {type(config).__name__}")
    else:
        config = from_json(config)
    state = read_safetensors(weights)
    return convert_state_dict(state, shapes_fn(config), dtype=dtype, source=weights)


def load_diffusers_unet(path_or_dir: Union[str, os.PathLike], config: Union[UNetConfig, ConfigLike, None] = None,
                        dtype: Any = jnp.float32) -> Dict[str, Any]:
    """Params of `UNet2DConditionModel(config)` from a diffusers U-Net folder or safetensors file.

    `config` may be a `UNetConfig`, a diffusers config (dict / config.json) or None (read the
    config.json beside the weights). Parameters are cast to `dtype`.
    """
    return _load(path_or_dir, config, UNetConfig, unet_config_from_diffusers, unet_param_shapes, dtype)


def load_diffusers_vae(path_or_dir: Union[str, os.PathLike], config: Union[VAEConfig, ConfigLike, None] = None,
                       dtype: Any = jnp.float32) -> Dict[str, Any]:
    """Params of `AutoencoderKL(config)` from a diffusers VAE folder or safetensors file (as above)."""
    return _load(path_or_dir, config, VAEConfig, vae_config_from_diffusers, vae_param_shapes, dtype)


# ------------------------------------------------------------------------------------------------
# Export (the inverse: our Flax params -> a diffusers folder)
# ------------------------------------------------------------------------------------------------

# diffusers' ModuleList containers: their Flax names end in `_<index>`; other `_<digit>` names
# (TimestepEmbedding's `linear_1`) are plain attribute names and keep their underscore.
_INDEXED = frozenset({"down_blocks", "up_blocks", "resnets", "attentions", "downsamplers", "upsamplers",
                      "transformer_blocks", "to_out", "net"})


def vae_config_to_diffusers(config: VAEConfig) -> Dict[str, Any]:
    """The diffusers `AutoencoderKL` config.json of a `VAEConfig` (read back by `vae_config_from_diffusers`)."""
    n = len(config.block_out_channels)
    out = {"_class_name": "AutoencoderKL", "in_channels": config.in_channels,
           "out_channels": config.out_channels or config.in_channels,
           "block_out_channels": list(config.block_out_channels), "layers_per_block": config.layers_per_block,
           "latent_channels": config.latent_channels, "norm_num_groups": config.norm_num_groups,
           "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
           "act_fn": "silu", "mid_block_add_attention": config.mid_attention,
           "use_quant_conv": config.use_quant_conv, "use_post_quant_conv": config.use_post_quant_conv,
           "scaling_factor": config.scaling_factor}
    if config.shift_factor is not None:
        out["shift_factor"] = config.shift_factor
    return out


def unet_config_to_diffusers(config: UNetConfig) -> Dict[str, Any]:
    """The diffusers `UNet2DConditionModel` config.json of a `UNetConfig`."""
    n = len(config.block_out_channels)
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in config.cross_attn]
    return {"_class_name": "UNet2DConditionModel", "in_channels": config.in_channels,
            "out_channels": config.out_channels, "block_out_channels": list(config.block_out_channels),
            "down_block_types": down, "up_block_types": [d.replace("Down", "Up") for d in reversed(down)],
            "layers_per_block": config.layers_per_block, "transformer_layers_per_block": config.transformer_layers,
            # diffusers reads attention_head_dim as the head count (the SD-1.x naming quirk) and
            # refuses num_attention_heads for this class
            "attention_head_dim": [config.heads(i) for i in range(n)],
            "cross_attention_dim": config.cross_attention_dim,
            "use_linear_projection": config.use_linear_projection, "norm_num_groups": config.norm_num_groups,
            "norm_eps": config.norm_eps, "flip_sin_to_cos": config.flip_sin_to_cos,
            "freq_shift": config.freq_shift, "sample_size": config.sample_size}


def to_state_dict(params: Mapping[str, Any], indexed: frozenset = _INDEXED) -> Dict[str, np.ndarray]:
    """Flax params -> torch {key: array} (HWIO -> OIHW, (in, out) -> (out, in)), float32; `indexed`:
    the ModuleList names whose `_<i>` suffix becomes `.<i>` (diffusers' by default)."""
    out = {}
    for path, value in traverse_util.flatten_dict(jax.device_get(params)).items():
        v = np.asarray(value, np.float32)
        if path[-1] == "kernel":
            v = v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T
        out[_torch_key(path, indexed)] = np.array(v, order="C")  # (not ascontiguousarray: it makes 0-d 1-d)
    return out


def save_diffusers(folder: Union[str, os.PathLike], params: Mapping[str, Any], config: Union[UNetConfig, VAEConfig]) -> str:
    """Writes `params` of a U-Net or autoencoder as a diffusers model folder (safetensors +
    config.json), loadable here by `load_diffusers_unet/vae` and by diffusers' `from_pretrained`."""
    from safetensors.numpy import save_file

    if isinstance(config, UNetConfig):
        cfg = unet_config_to_diffusers(config)
    elif isinstance(config, VAEConfig):
        cfg = vae_config_to_diffusers(config)
    else:
        raise TypeError(f"expected a UNetConfig or VAEConfig, got a {type(config).__name__}")
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    save_file(to_state_dict(params), os.path.join(folder, WEIGHTS_NAME))
    with open(os.path.join(folder, CONFIG_NAME), "w") as f:
        json.dump(cfg, f, indent=2)
    return folder
