"""Import Hugging Face transformers CLIP safetensors into `xray_gen.nn.clip.CLIP`.

Reads what `save_pretrained` writes for CLIPModel, CLIPTextModel(WithProjection) or
CLIPVisionModel(WithProjection): `model.safetensors` (or shards listed in
`model.safetensors.index.json`) plus `config.json`; e.g. Stable Diffusion's `text_encoder/` folder
or an `openai/clip-vit-base-patch32` snapshot. Only safetensors are read; pickled `.bin` files are
refused, never unpickled.

Name mapping reuses the diffusers importer's rule (`weights.convert_state_dict`: `.<i>` -> `_<i>`,
weight -> kernel/scale, Linear and conv layouts transposed) after three CLIP-specific steps:
keys without a tower prefix (transformers >= 5 saves CLIPTextModel/CLIPVisionModel flat) get
`text_model.` / `vision_model.`; attention projections `q_proj/k_proj/v_proj/out_proj` become the
shared `Attention`'s `to_q/to_k/to_v/to_out.0`, and `pre_layrnorm` (sic) becomes `pre_layernorm`;
embedding tables, the class embedding and `logit_scale` are copied as they are (no transpose).
Errors name the transformers key and the file.

    model, params = load_clip("sd/text_encoder")          # config.json beside the weights
    tokens, pooled = model.apply({"params": params}, ids, method=model.encode_text)
    tok = load_clip_tokenizer("sd/text_encoder")           # sd/tokenizer/: vocab.json + merges.txt
    ids, mask = tok(["A chest X ray image with cardiomegaly"])

`CLIPTokenizer` is `xray_gen.data.bpe`'s (plain Python). `save_transformers_clip` is the inverse of
`load_clip` for a two-tower CLIP (tests build pretrained-looking folders with it).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from xray_gen.data.bpe import TOKENIZER_FILES, CLIPTokenizer
from xray_gen.models.cxr_irgen.weights import (ConfigLike, convert_state_dict, read_config, read_safetensors,
                                                to_state_dict)
from xray_gen.nn.clip import CLIP, CLIPTextConfig, CLIPVisionConfig

__all__ = [
    "WEIGHTS_NAME",
    "INDEX_NAME",
    "clip_configs_from_transformers",
    "clip_param_shapes",
    "convert_clip_state_dict",
    "read_clip_state_dict",
    "clip_model_of",
    "load_clip",
    "CLIPTokenizer",
    "clip_tokenizer_folder",
    "load_clip_tokenizer",
    "clip_config_to_transformers",
    "save_transformers_clip",
]

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_TOWERS = ("text_model.", "vision_model.")
_TOP_LEVEL = ("text_projection.", "visual_projection.", "logit_scale")
# transformers name -> name in the Flax modules (dotted, before `.<i>` -> `_<i>`).
_RENAMES = {".self_attn.q_proj.": ".self_attn.to_q.", ".self_attn.k_proj.": ".self_attn.to_k.",
            ".self_attn.v_proj.": ".self_attn.to_v.", ".self_attn.out_proj.": ".self_attn.to_out.0.",
            ".pre_layrnorm.": ".pre_layernorm."}
# Leaves that are not Linear/conv/LayerNorm weights: copied without transposing.
_RAW_LEAVES = {"embeddings.token_embedding.weight": "embedding", "embeddings.position_embedding.weight": "embedding",
               "embeddings.class_embedding": None}
_LEGACY_EOS = 2  # transformers' marker for configs predating a correct eos_token_id: pool at argmax


# ------------------------------------------------------------------------------------------------
# Files and configs
# ------------------------------------------------------------------------------------------------


def _clip_files(path_or_dir: Union[str, os.PathLike]) -> Tuple[List[str], str, Optional[str]]:
    """(safetensors files, weights description, config.json path or None) of a folder or a file."""
    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        index = os.path.join(path, INDEX_NAME)
        single = os.path.join(path, WEIGHTS_NAME)
        config = os.path.join(path, "config.json")
        config = config if os.path.exists(config) else None
        if os.path.exists(single):
            return [single], single, config
        if os.path.exists(index):
            with open(index, encoding="utf-8") as f:
                try:
                    weight_map = json.load(f)["weight_map"]
                except (json.JSONDecodeError, KeyError) as e:
                    raise ValueError(f"{index}: not a safetensors index with a 'weight_map' ({e})") from e
            return [os.path.join(path, shard) for shard in sorted(set(weight_map.values()))], index, config
        raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME} or {INDEX_NAME} (found {sorted(os.listdir(path))}); "
                                "only safetensors are read; convert pickled .bin files with a trusted tool first")
    if not path.endswith(".safetensors"):
        raise ValueError(f"{path}: not a .safetensors file; pickled checkpoints are never loaded")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    config = os.path.join(os.path.dirname(path), "config.json")
    return [path], path, config if os.path.exists(config) else None


def read_clip_state_dict(path_or_dir: Union[str, os.PathLike]) -> Tuple[Dict[str, np.ndarray], str, Optional[str]]:
    """({key: array}, weights description, config.json path or None) from a folder or a file."""
    files, source, config = _clip_files(path_or_dir)
    state: Dict[str, np.ndarray] = {}
    for file in files:
        state.update(read_safetensors(file))
    return state, source, config


def clip_model_of(path_or_dir: Union[str, os.PathLike]) -> CLIP:
    """The (unloaded) CLIP module of a transformers folder or file: its config.json, and which
    projections exist from the weight names (read from the safetensors headers, not the tensors)."""
    from safetensors import safe_open

    files, source, config = _clip_files(path_or_dir)
    if config is None:
        raise FileNotFoundError(f"{source}: no config.json beside it (the architecture is read from it)")
    keys = []
    for file in files:
        try:
            with safe_open(file, framework="numpy") as f:
                keys.extend(f.keys())
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise ValueError(f"{file}: not a readable safetensors file ({e})") from e
    text, vision = clip_configs_from_transformers(config, keys=keys)
    return CLIP(text=text, vision=vision)


def _supported_act(cfg: Mapping[str, Any], where: str) -> str:
    act = cfg.get("hidden_act", "quick_gelu")
    if act not in ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"transformers config field {where}hidden_act={act!r} is not supported")
    return act


def _text_config(cfg: Mapping[str, Any], projection_dim: Optional[int], where: str) -> CLIPTextConfig:
    eos = cfg.get("eos_token_id", 49407)
    return CLIPTextConfig(
        vocab_size=int(cfg.get("vocab_size", 49408)),
        max_length=int(cfg.get("max_position_embeddings", 77)),
        width=int(cfg.get("hidden_size", 512)),
        layers=int(cfg.get("num_hidden_layers", 12)),
        heads=int(cfg.get("num_attention_heads", 8)),
        mlp_dim=int(cfg.get("intermediate_size", 2048)),
        act=_supported_act(cfg, where),
        layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-5)),
        eos_token_id=None if eos is None or int(eos) == _LEGACY_EOS else int(eos),
        projection_dim=projection_dim,
    )


def _vision_config(cfg: Mapping[str, Any], projection_dim: Optional[int], where: str) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        image_size=int(cfg.get("image_size", 224)),
        patch_size=int(cfg.get("patch_size", 32)),
        num_channels=int(cfg.get("num_channels", 3)),
        width=int(cfg.get("hidden_size", 768)),
        layers=int(cfg.get("num_hidden_layers", 12)),
        heads=int(cfg.get("num_attention_heads", 12)),
        mlp_dim=int(cfg.get("intermediate_size", 3072)),
        act=_supported_act(cfg, where),
        layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-5)),
        projection_dim=projection_dim,
    )


def clip_configs_from_transformers(config: ConfigLike, keys: Optional[Iterable[str]] = None
                                   ) -> Tuple[Optional[CLIPTextConfig], Optional[CLIPVisionConfig]]:
    """(text config or None, vision config or None) from a transformers CLIP config.json / dict.

    Whether a tower has a projection is read from the weight `keys` when given (a
    `text_projection.weight` present), else from `architectures` (CLIPModel / *WithProjection).
    """
    cfg = read_config(config)
    kind = cfg.get("model_type")
    if keys is not None:
        keys = set(keys)
        has_text_proj = "text_projection.weight" in keys
        has_vision_proj = "visual_projection.weight" in keys
    else:
        arch = " ".join(cfg.get("architectures") or [])
        has_text_proj = has_vision_proj = "CLIPModel" in arch or "WithProjection" in arch
    if kind == "clip":
        dim = int(cfg.get("projection_dim", 512))
        text = _text_config(cfg.get("text_config") or {}, dim if has_text_proj else None, "text_config.")
        vision = _vision_config(cfg.get("vision_config") or {}, dim if has_vision_proj else None, "vision_config.")
        return text, vision
    dim = int(cfg.get("projection_dim", 512))
    if kind == "clip_text_model":
        return _text_config(cfg, dim if has_text_proj else None, ""), None
    if kind == "clip_vision_model":
        return None, _vision_config(cfg, dim if has_vision_proj else None, "")
    raise ValueError(f"transformers config field 'model_type'={kind!r} is not a CLIP model "
                     "(supported: 'clip', 'clip_text_model', 'clip_vision_model')")


# ------------------------------------------------------------------------------------------------
# Conversion
# ------------------------------------------------------------------------------------------------


def clip_param_shapes(model: CLIP) -> Dict[Tuple[str, ...], Any]:
    """{flax path: ShapeDtypeStruct} of `model`'s params, without allocating."""
    kwargs = {}
    if model.text is not None:
        kwargs["ids"] = jnp.zeros((1, 1), jnp.int32)
    if model.vision is not None:
        v = model.vision
        kwargs["images"] = jnp.zeros((1, v.image_size, v.image_size, v.num_channels))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), **kwargs))
    return traverse_util.flatten_dict(shapes["params"])


def _normalise_key(key: str, model: CLIP) -> str:
    """Adds the tower prefix to flat (transformers >= 5 single-tower) keys and applies `_RENAMES`."""
    if not key.startswith(_TOWERS + _TOP_LEVEL):
        towers = [p for p, c in zip(_TOWERS, (model.text, model.vision)) if c is not None]
        if len(towers) == 1:
            key = towers[0] + key
    for old, new in _RENAMES.items():
        key = key.replace(old, new)
    return key


def _raw_target(key: str) -> Optional[Tuple[str, ...]]:
    """Flax path for an embedding table / class embedding / logit_scale key, else None."""
    if key == "logit_scale":
        return ("logit_scale",)
    for suffix, leaf in _RAW_LEAVES.items():
        if key.endswith("." + suffix):
            parts = key[: -len(suffix) - 1].split(".") + suffix.split(".")
            return tuple(parts[:-1] + [leaf]) if leaf else tuple(parts)
    return None


def convert_clip_state_dict(state: Mapping[str, np.ndarray], model: CLIP, dtype: Any = jnp.float32,
                            source: str = "state dict") -> Dict[str, Any]:
    """transformers CLIP {key: array} -> nested params of `model`; errors name keys and `source`."""
    expected = clip_param_shapes(model)
    raw: Dict[Tuple[str, ...], np.ndarray] = {}
    rest: Dict[str, np.ndarray] = {}
    original: Dict[str, str] = {}
    for key, value in state.items():
        if key.endswith("position_ids"):  # integer buffer (0..n-1) kept by older files; recomputed here
            continue
        new = _normalise_key(key, model)
        original[new] = key
        target = _raw_target(new)
        if target is None:
            rest[new] = value
            continue
        if target not in expected:
            rest[new] = value  # reported as unexpected below
            continue
        want = tuple(expected[target].shape)
        value = np.asarray(value)
        if value.size == 1 and want == ():
            value = value.reshape(())
        if tuple(value.shape) != want:
            raise ValueError(f"{source}: transformers key {key!r}: shape {tuple(value.shape)} does not fit the Flax "
                             f"parameter {'/'.join(target)} of shape {want}; check config.json against the weights")
        raw[target] = np.asarray(value, dtype=dtype)
    remaining = {p: s for p, s in expected.items() if p not in raw}
    try:
        converted = convert_state_dict(rest, remaining, dtype=dtype, source=source)
    except ValueError as e:
        message = str(e)
        for new, key in original.items():
            if new != key:
                message = message.replace(repr(new), repr(key))
        for old, new in _RENAMES.items():  # missing keys are spelt from Flax paths
            message = message.replace(new[1:], old[1:])
        raise ValueError(message.replace("diffusers key", "transformers key")) from None
    flat = traverse_util.flatten_dict(converted)
    flat.update({p: jnp.asarray(v) for p, v in raw.items()})
    return traverse_util.unflatten_dict(flat)


def load_clip(path_or_dir: Union[str, os.PathLike], config: Union[CLIP, ConfigLike, None] = None,
              dtype: Any = jnp.float32) -> Tuple[CLIP, Dict[str, Any]]:
    """(CLIP module, params) from a transformers CLIP folder or `.safetensors` file.

    `config`: a `CLIP` module to load into, a transformers config (dict / config.json), or None
    (the config.json beside the weights). Towers and projections present in the file decide the
    module's shape; parameters are cast to `dtype`.
    """
    state, source, config_path = read_clip_state_dict(path_or_dir)
    if isinstance(config, CLIP):
        model = config
    else:
        if config is None:
            if config_path is None:
                raise FileNotFoundError(f"{source}: no config.json beside it; pass the config explicitly")
            config = config_path
        text, vision = clip_configs_from_transformers(config, keys=state.keys())
        model = CLIP(text=text, vision=vision)
    return model, convert_clip_state_dict(state, model, dtype=dtype, source=source)


# ------------------------------------------------------------------------------------------------
# Tokenizer of imported text weights
# ------------------------------------------------------------------------------------------------


def clip_tokenizer_folder(path_or_dir: Union[str, os.PathLike]) -> str:
    """Where a CLIP folder's BPE files are: the folder itself (openai/clip-vit-* snapshots) or its
    sibling `tokenizer/` (a Stable Diffusion pipeline's `text_encoder/` beside `tokenizer/`)."""
    path = os.fspath(path_or_dir)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    sibling = os.path.join(os.path.dirname(os.path.abspath(folder)), "tokenizer")
    for candidate in (folder, sibling):
        if any(all(os.path.exists(os.path.join(candidate, f)) for f in files) for files in TOKENIZER_FILES):
            return candidate
    raise FileNotFoundError(f"{path}: no vocab.json + merges.txt (or tokenizer.json) in it or in ../tokenizer "
                            "(Stable Diffusion's layout); a pretrained CLIP text encoder needs its own BPE files")


def load_clip_tokenizer(path_or_dir: Union[str, os.PathLike], max_length: int = 77) -> CLIPTokenizer:
    """The BPE tokenizer that goes with the CLIP weights at `path_or_dir` (see `clip_tokenizer_folder`)."""
    return CLIPTokenizer(clip_tokenizer_folder(path_or_dir), max_length=max_length)


# ------------------------------------------------------------------------------------------------
# Export (the inverse: our Flax CLIP -> a transformers CLIPModel folder)
# ------------------------------------------------------------------------------------------------


def _tower_to_transformers(c: Union[CLIPTextConfig, CLIPVisionConfig]) -> Dict[str, Any]:
    out = {"hidden_size": c.width, "num_hidden_layers": c.layers, "num_attention_heads": c.heads,
           "intermediate_size": c.mlp_dim, "hidden_act": c.act, "layer_norm_eps": c.layer_norm_eps}
    if isinstance(c, CLIPTextConfig):
        eos = _LEGACY_EOS if c.eos_token_id is None else c.eos_token_id  # 2: pool at the highest id
        return {**out, "vocab_size": c.vocab_size, "max_position_embeddings": c.max_length, "eos_token_id": eos}
    return {**out, "image_size": c.image_size, "patch_size": c.patch_size, "num_channels": c.num_channels}


def clip_config_to_transformers(model: CLIP) -> Dict[str, Any]:
    """transformers' CLIPConfig (config.json) of a two-tower CLIP with projections."""
    if not model.has_logit_scale:
        raise ValueError("save_transformers_clip writes a CLIPModel: both towers with a projection_dim are needed")
    return {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": model.text.projection_dim,
            "text_config": _tower_to_transformers(model.text), "vision_config": _tower_to_transformers(model.vision)}


def save_transformers_clip(folder: Union[str, os.PathLike], params: Mapping[str, Any], model: CLIP) -> str:
    """Writes `params` of a two-tower `model` as a transformers CLIPModel folder (model.safetensors
    + config.json), read back by `load_clip` and by transformers' `CLIPModel.from_pretrained`."""
    from safetensors.numpy import save_file

    config = clip_config_to_transformers(model)
    state = {}
    for key, value in to_state_dict(params, indexed=frozenset({"layers", "to_out"})).items():
        if key.endswith(".embedding"):  # nn.Embed tables: transformers' Embedding.weight
            key = key[: -len("embedding")] + "weight"
        for theirs, ours in _RENAMES.items():
            key = key.replace(ours, theirs)
        state[key] = value
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    save_file(state, os.path.join(folder, WEIGHTS_NAME))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return folder
