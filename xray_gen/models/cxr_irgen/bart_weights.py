"""Import transformers BART (BartForConditionalGeneration / BartModel, also mBART) weights into
`xray_gen.nn.bart.Bart`.

Input is a folder written by `save_pretrained(..., safe_serialization=True)`: `model.safetensors`
(or shards listed in `model.safetensors.index.json`) plus `config.json`. Only safetensors are read;
pickled `pytorch_model.bin` files are refused, never unpickled.

Mapping (on top of `weights.convert_state_dict`'s mechanical rule, `layers.0` -> `layers_0`,
weight -> kernel/scale, Linear transposed):
- a leading `model.` (BartForConditionalGeneration) is dropped;
- attention projections `q_proj/k_proj/v_proj/out_proj` are the shared `Attention` block's
  `to_q/to_k/to_v/to_out.0` (error messages show these names);
- the token embedding may be stored as `shared.weight`, `encoder.embed_tokens.weight`,
  `decoder.embed_tokens.weight` or `lm_head.weight` (tied copies); copies must be identical;
- `final_logits_bias` (1, V) is optional (BartModel has none: zeros).
The tokenizer files beside the weights (vocab.json + merges.txt) are read by
`load_bart_tokenizer` (`xray_gen.data.bart_tokenizer`, plain Python); `BartConfig` carries their
PAD/BOS/EOS ids. `save_transformers_bart` is the inverse: our params -> a folder that transformers'
`BartForConditionalGeneration.from_pretrained` reads.

    cfg = bart_config_from_transformers("bart-base/")   # folder or config.json or dict
    params = load_bart("bart-base/", cfg)                # -> Bart(cfg)'s "params" collection
    tok = load_bart_tokenizer("bart-base/")             # its ids for the reports
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from xray_gen.data.bart_tokenizer import BartTokenizer
from xray_gen.models.cxr_irgen.weights import (ConfigLike, convert_state_dict, read_config, read_safetensors,
                                               to_state_dict)
from xray_gen.nn.bart import ACTIVATIONS, Bart, BartConfig, bart_config

__all__ = ["WEIGHTS_NAME", "INDEX_NAME", "bart_config_from_transformers", "bart_config_of",
           "bart_config_to_transformers", "bart_param_shapes", "convert_bart_state_dict", "load_bart", "load_bart_tokenizer", "read_bart_state_dict",
           "save_transformers_bart"]

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

_EMBEDDING_ALIASES = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                      "lm_head.weight")
_ATTENTION_NAMES = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "out_proj": "to_out.0"}
_MODEL_TYPES = {"bart": (False, False), "mbart": (True, True)}  # (normalize_before, add_final_layer_norm)


def bart_config_from_transformers(config: ConfigLike) -> BartConfig:
    """`BartConfig` from a transformers BART/mBART config (dict, config.json or model folder).

    Pre-/post-LN follows `model_type` exactly as transformers does (legacy fairseq keys such as
    `normalize_before` in old BART configs are ignored by transformers and here). Training-only
    options (layerdrop, attention_dropout) are not carried.
    """
    cfg = read_config(config)
    model_type = cfg.get("model_type", "bart")
    if model_type not in _MODEL_TYPES:
        raise ValueError(f"transformers config field 'model_type'={model_type!r} is not supported "
                         f"(supported: {sorted(_MODEL_TYPES)})")
    if not cfg.get("tie_word_embeddings", True):
        raise ValueError("transformers config field 'tie_word_embeddings'=False is not supported "
                         "(the LM head is tied to the token embedding)")
    act = cfg.get("activation_function", "gelu")
    if act not in ACTIVATIONS:
        raise ValueError(f"transformers config field 'activation_function'={act!r} is not supported "
                         f"(supported: {sorted(ACTIVATIONS)})")
    eos = cfg.get("eos_token_id", 2)
    if isinstance(eos, (list, tuple)):
        if len(eos) != 1:
            raise ValueError(f"transformers config field 'eos_token_id'={eos!r}: only one EOS id is supported")
        eos = eos[0]
    pre_ln, final_ln = _MODEL_TYPES[model_type]
    defaults = bart_config("bart-large")  # transformers' BartConfig defaults are bart-large's

    def get(field, default=None):
        """The config's value, else `default`, else transformers' default."""
        value = cfg.get(field)
        if value is not None:
            return value
        return getattr(defaults, field) if default is None else default

    return BartConfig(
        vocab_size=int(get("vocab_size")),
        d_model=int(get("d_model")),
        encoder_layers=int(get("encoder_layers")),
        decoder_layers=int(get("decoder_layers")),
        encoder_attention_heads=int(get("encoder_attention_heads")),
        decoder_attention_heads=int(get("decoder_attention_heads")),
        encoder_ffn_dim=int(get("encoder_ffn_dim")),
        decoder_ffn_dim=int(get("decoder_ffn_dim")),
        max_position_embeddings=int(get("max_position_embeddings")),
        activation_function=act,
        scale_embedding=bool(cfg.get("scale_embedding", False)),
        normalize_before=pre_ln,
        layernorm_embedding=True,
        add_final_layer_norm=final_ln,
        dropout=float(get("dropout")),
        activation_dropout=float(get("activation_dropout")),
        pad_token_id=int(get("pad_token_id")),
        bos_token_id=int(get("bos_token_id")),
        eos_token_id=int(eos),
        decoder_start_token_id=int(get("decoder_start_token_id", eos)),
    )


def _weights_files(path_or_dir: Union[str, os.PathLike]) -> Tuple[list, Optional[str]]:
    """([safetensors files], config.json beside them or None) for a model folder or weights file."""
    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        single, index = os.path.join(path, WEIGHTS_NAME), os.path.join(path, INDEX_NAME)
        if os.path.exists(single):
            files = [single]
        elif os.path.exists(index):
            with open(index, encoding="utf-8") as f:
                try:
                    weight_map = json.load(f)["weight_map"]
                except (json.JSONDecodeError, KeyError) as e:
                    raise ValueError(f"{index}: not a safetensors index (no readable 'weight_map': {e})") from e
            files = [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
        else:
            raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME} or {INDEX_NAME} (found {sorted(os.listdir(path))}); "
                                    "only safetensors are read; re-save pickled pytorch_model.bin with "
                                    "save_pretrained(safe_serialization=True) in a trusted environment")
        folder = path
    else:
        files, folder = [path], os.path.dirname(path)
    for f in files:
        if not f.endswith(".safetensors"):
            raise ValueError(f"{f}: not a .safetensors file; pickled checkpoints are never loaded")
        if not os.path.exists(f):
            raise FileNotFoundError(f"{f}: no such file")
    config = os.path.join(folder, "config.json")
    return files, config if os.path.exists(config) else None


def read_bart_state_dict(path_or_dir: Union[str, os.PathLike]) -> Dict[str, np.ndarray]:
    """{transformers key: array} from a model folder (single file or shards) or a safetensors file."""
    state: Dict[str, np.ndarray] = {}
    for f in _weights_files(path_or_dir)[0]:
        state.update(read_safetensors(f))
    return state


def bart_param_shapes(config: BartConfig) -> Dict[Tuple[str, ...], Any]:
    """{flax path: ShapeDtypeStruct} of `Bart(config)`, without allocating."""
    ids = jnp.zeros((1, 1), jnp.int32)
    shapes = jax.eval_shape(lambda: Bart(config).init(jax.random.key(0), ids, jnp.ones((1, 1)), ids))
    return traverse_util.flatten_dict(shapes["params"])


def _rename(key: str) -> str:
    parts = key.split(".")
    if len(parts) >= 2 and parts[-2] in _ATTENTION_NAMES:
        parts = parts[:-2] + _ATTENTION_NAMES[parts[-2]].split(".") + parts[-1:]
    return ".".join(parts)


def convert_bart_state_dict(state: Mapping[str, np.ndarray], config: BartConfig, dtype: Any = jnp.float32,
                            source: str = "state dict") -> Dict[str, Any]:
    """transformers {key: array} -> params of `Bart(config)`; ValueError naming `source` and keys."""
    state = {(k[len("model."):] if k.startswith("model.") else k): np.asarray(v) for k, v in state.items()}
    expected = bart_param_shapes(config)
    d, v = config.d_model, config.vocab_size
    special: Dict[Tuple[str, ...], np.ndarray] = {}

    # Token embedding: one tensor under up to four tied names.
    found = [(k, state.pop(k)) for k in _EMBEDDING_ALIASES if k in state]
    if not found:
        raise ValueError(f"{source}: no token embedding (looked for {', '.join(_EMBEDDING_ALIASES)})")
    first_key, emb = found[0]
    for k, other in found[1:]:
        if other.shape != emb.shape or not np.array_equal(other, emb):
            raise ValueError(f"{source}: {k!r} differs from {first_key!r}; untied embeddings / LM head are "
                             "not supported")
    special[("shared", "embedding")] = (first_key, emb, (v, d))
    for stack in ("encoder", "decoder"):
        key = f"{stack}.embed_positions.weight"
        if key not in state:
            raise ValueError(f"{source}: missing {key!r}")
        special[(stack, "embed_positions", "embedding")] = (key, state.pop(key), expected[(stack, "embed_positions",
                                                                                          "embedding")].shape)
    bias = state.pop("final_logits_bias", np.zeros((1, v), np.float32))
    special[("final_logits_bias",)] = ("final_logits_bias", bias.reshape(-1), (v,))

    params = {}
    for path, (key, value, shape) in special.items():
        if tuple(value.shape) != tuple(shape):
            hint = " (check vocab_size / max_position_embeddings in the config)"
            raise ValueError(f"{source}: {key!r} has shape {tuple(value.shape)}, expected {tuple(shape)}{hint}")
        params[path] = jnp.asarray(np.asarray(value, dtype=np.float32), dtype=dtype)
    rest = {k: val for k, val in expected.items() if k not in special}
    converted = convert_state_dict({_rename(k): val for k, val in state.items()}, rest, dtype=dtype, source=source)
    params.update(traverse_util.flatten_dict(converted))
    return traverse_util.unflatten_dict(params)


def load_bart(path_or_dir: Union[str, os.PathLike], config: Union[BartConfig, ConfigLike, None] = None,
              dtype: Any = jnp.float32) -> Dict[str, Any]:
    """Params of `Bart(config)` from a transformers BART folder or safetensors file.

    `config` may be a `BartConfig`, a transformers config (dict / config.json / folder) or None
    (read the config.json beside the weights). Parameters are cast to `dtype`.
    """
    files, config_path = _weights_files(path_or_dir)
    if config is None:
        if config_path is None:
            raise FileNotFoundError(f"{files[0]}: no config.json beside it; pass the config explicitly")
        config = bart_config_from_transformers(config_path)
    elif not isinstance(config, BartConfig):
        config = bart_config_from_transformers(config)
    return convert_bart_state_dict(read_bart_state_dict(path_or_dir), config, dtype=dtype,
                                   source=os.fspath(path_or_dir))


def bart_config_of(path_or_dir: Union[str, os.PathLike]) -> BartConfig:
    """The `BartConfig` of a BART folder (or a safetensors file with config.json beside it), after
    checking its weights are there and are safetensors (so a pickle is refused before any use)."""
    files, config_path = _weights_files(path_or_dir)
    if config_path is None:
        folder, name = os.path.split(files[0])
        raise FileNotFoundError(f"{folder or '.'}: no config.json beside {name}")
    return bart_config_from_transformers(config_path)


def load_bart_tokenizer(path_or_dir: Union[str, os.PathLike], max_length: int = 1024) -> BartTokenizer:
    """The BART tokenizer whose files (vocab.json + merges.txt, or tokenizer.json) are in the
    folder of the weights at `path_or_dir`."""
    path = os.fspath(path_or_dir)
    return BartTokenizer(path if os.path.isdir(path) else os.path.dirname(path) or ".", max_length=max_length)


# ------------------------------------------------------------------------------------------------
# Export (the inverse: our Flax BART -> a transformers BartForConditionalGeneration folder)
# ------------------------------------------------------------------------------------------------


def bart_config_to_transformers(config: BartConfig) -> Dict[str, Any]:
    """transformers' BartConfig / MBartConfig (config.json) of `config`."""
    layer_norms = (config.normalize_before, config.add_final_layer_norm)
    model_type = next((t for t, ln in _MODEL_TYPES.items() if ln == layer_norms), None)
    if model_type is None or not config.layernorm_embedding or config.layer_norm_eps != 1e-5:
        raise ValueError(f"{config} has no transformers counterpart (BART: post-LN; mBART: pre-LN with final "
                         "layer norms; both with layernorm_embedding and eps 1e-5)")
    arch = "BartForConditionalGeneration" if model_type == "bart" else "MBartForConditionalGeneration"
    fields = ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
              "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings",
              "activation_function", "scale_embedding", "dropout", "activation_dropout", "pad_token_id",
              "bos_token_id", "eos_token_id", "decoder_start_token_id")
    return {"architectures": [arch], "model_type": model_type, **{f: getattr(config, f) for f in fields},
            "attention_dropout": 0.0, "is_encoder_decoder": True, "tie_word_embeddings": True}


def save_transformers_bart(folder: Union[str, os.PathLike], params: Mapping[str, Any], config: BartConfig) -> str:
    """Writes `Bart(config)`'s params as a transformers folder (model.safetensors + config.json),
    read back by `load_bart` and by `BartForConditionalGeneration.from_pretrained` (the tied
    embedding stored once, as `model.shared.weight`)."""
    from safetensors.numpy import save_file

    inverse = {ours: theirs for theirs, ours in _ATTENTION_NAMES.items()}
    state = {}
    for key, value in to_state_dict(params, indexed=frozenset({"layers", "to_out"})).items():
        if key == "final_logits_bias":
            state[key] = value.reshape(1, -1)
            continue
        if key.endswith(".embedding"):  # nn.Embed tables: torch's Embedding.weight
            key = key[: -len("embedding")] + "weight"
        parts = key.split(".")
        for ours, theirs in inverse.items():  # to_q -> q_proj, to_out.0 -> out_proj
            n = len(ours.split("."))
            if ".".join(parts[-1 - n:-1]) == ours:
                parts = parts[:-1 - n] + [theirs, parts[-1]]
                break
        state["model." + ".".join(parts)] = value
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    save_file(state, os.path.join(folder, WEIGHTS_NAME))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(bart_config_to_transformers(config), f, indent=2)
    return folder
