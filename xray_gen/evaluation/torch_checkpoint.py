"""Read PyTorch checkpoints as numpy state dicts without ever unpickling.

PyTorch checkpoints are pickles, and loading a pickle runs arbitrary code, so this module never
calls ``pickle.load``/``torch.load``. Instead it walks the opcode stream with
``pickletools.genops`` (which only parses) and interprets the small subset of opcodes a state dict
uses, resolving only an allow-list of globals (``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage`` and the other storage types, ...) to
local, data-only stand-ins. Any other global or opcode raises :class:`UnsafePickleError` before
anything is constructed from it.

Supported inputs of :func:`read_state_dict`:
- PyTorch zip checkpoints (``torch.save`` since 1.6): ``<root>/data.pkl`` + ``<root>/data/<key>``;
- PyTorch legacy checkpoints (before 1.6): magic, protocol, sys-info pickles, the state-dict
  pickle, the storage-key list, then the raw storages;
- ``.safetensors`` and ``.npz`` (``allow_pickle=False``).

Separate from :mod:`xray_gen.evaluation.weights_import`, which maps the names and layouts of one
network (the FID Inception-v3) onto Flax variables: reading a checkpoint safely knows nothing
about any network.
"""

from __future__ import annotations

import collections
import io
import pickletools
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

__all__ = ["UnsafePickleError", "read_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class UnsafePickleError(ValueError):
    """The pickle stream uses an opcode or global that a plain state dict never needs."""


# ------------------------------------------------------------------------------------------------
# Data-only stand-ins for the allowed globals
# ------------------------------------------------------------------------------------------------


class _StorageType:
    def __init__(self, name: str, dtype: str):
        self.name, self.dtype = name, dtype

    def __repr__(self):
        return f"torch.{self.name}"


_STORAGE_TYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
    "BFloat16Storage": "bfloat16", "LongStorage": "<i8", "IntStorage": "<i4",
    "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}


class _Storage:
    """A reference to raw storage bytes, resolved after the pickle has been read."""

    def __init__(self, stype: _StorageType, key: str, numel: int):
        self.stype, self.key, self.numel = stype, key, int(numel)
        self.array: Optional[np.ndarray] = None


class _LazyTensor:
    def __init__(self, storage: _Storage, offset: int, size: Tuple[int, ...],
                 stride: Tuple[int, ...]):
        if not isinstance(storage, _Storage):
            raise UnsafePickleError("tensor rebuilt from something that is not a storage")
        for name, v in (("size", size), ("stride", stride)):
            if not isinstance(v, tuple) or not all(isinstance(i, int) and i >= 0 for i in v):
                raise UnsafePickleError(f"bad tensor {name}: {v!r}")
        if len(size) != len(stride) or not isinstance(offset, int) or offset < 0:
            raise UnsafePickleError("inconsistent tensor geometry")
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def materialize(self) -> np.ndarray:
        data = self.storage.array
        if data is None:
            raise ValueError(f"storage {self.storage.key!r} was never loaded")
        if 0 in self.size:
            return np.zeros(self.size, dtype=data.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= data.shape[0]:
            raise ValueError(f"tensor view exceeds storage {self.storage.key!r} "
                             f"({last} >= {data.shape[0]})")
        base = data[self.offset:]
        view = np.lib.stride_tricks.as_strided(
            base, shape=self.size, strides=[s * data.itemsize for s in self.stride],
            writeable=False)
        return np.array(view, copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _LazyTensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _LazyTensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, _LazyTensor):
        raise UnsafePickleError("Parameter rebuilt from a non-tensor")
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return _rebuild_parameter(data)


class _TypeMarker:
    def __init__(self, name):
        self.name = name


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in (_rebuild_tensor_v2, _rebuild_tensor) or not isinstance(new_type, _TypeMarker):
        raise UnsafePickleError("_rebuild_from_type_v2 with an unexpected function or type")
    return func(*args)


def _ordered_dict(*args):
    if args:
        raise UnsafePickleError("OrderedDict called with arguments")
    return collections.OrderedDict()


_ALLOWED_GLOBALS: Dict[Tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TypeMarker("torch.Tensor"),
    ("torch.nn.parameter", "Parameter"): _TypeMarker("torch.nn.Parameter"),
}
for _name, _dtype in _STORAGE_TYPES.items():
    _ALLOWED_GLOBALS[("torch", _name)] = _StorageType(_name, _dtype)
_ALLOWED_NAMES = ", ".join(sorted(f"{m}.{q}" for m, q in _ALLOWED_GLOBALS))


# ------------------------------------------------------------------------------------------------
# The restricted pickle interpreter
# ------------------------------------------------------------------------------------------------


class _Mark:
    pass


_MARK = _Mark()

_CONST_OPS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_TUPLE": ()}
_VALUE_OPS = {  # opcodes whose parsed argument is the value to push
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
    "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "BINBYTES", "SHORT_BINBYTES",
    "BINBYTES8",
}


def _interpret(stream, persistent_load=None) -> Any:
    """Evaluates one pickle from ``stream`` with the allow-list above. Never imports anything."""
    try:
        return _interpret_unchecked(stream, persistent_load)
    except UnsafePickleError:
        raise
    except (IndexError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise UnsafePickleError(f"malformed pickle stream ({type(e).__name__}: {e})") from e


def _interpret_unchecked(stream, persistent_load) -> Any:
    stack: List[Any] = []
    memo: Dict[int, Any] = {}

    def pop_mark() -> List[Any]:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is _MARK:
                items = stack[i + 1:]
                del stack[i:]
                return items
        raise UnsafePickleError("MARK expected on the stack")

    def callable_of(obj, what):
        if not any(obj is v for v in _ALLOWED_GLOBALS.values()) or not callable(obj):
            raise UnsafePickleError(f"{what} on a non-callable or disallowed object {obj!r}")
        return obj

    for op, arg, pos in pickletools.genops(stream):
        name = op.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            if len(stack) != 1:
                raise UnsafePickleError(f"STOP with {len(stack)} items on the stack")
            return stack.pop()
        if name in _CONST_OPS:
            stack.append(_CONST_OPS[name])
        elif name in _VALUE_OPS:
            stack.append(arg)
        elif name in ("SHORT_BINSTRING", "BINSTRING"):
            stack.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
        elif name == "MARK":
            stack.append(_MARK)
        elif name == "POP":
            stack.pop()
        elif name == "POP_MARK":
            pop_mark()
        elif name == "DUP":
            stack.append(stack[-1])
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "LIST":
            stack.append(pop_mark())
        elif name == "DICT":
            items = pop_mark()
            stack.append(dict(zip(items[::2], items[1::2])))
        elif name == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name == "APPEND":
            value = stack.pop()
            if not isinstance(stack[-1], list):
                raise UnsafePickleError("APPEND to a non-list")
            stack[-1].append(value)
        elif name == "APPENDS":
            items = pop_mark()
            if not isinstance(stack[-1], list):
                raise UnsafePickleError("APPENDS to a non-list")
            stack[-1].extend(items)
        elif name == "SETITEM":
            value = stack.pop()
            key = stack.pop()
            if not isinstance(stack[-1], dict):
                raise UnsafePickleError("SETITEM on a non-dict")
            stack[-1][key] = value
        elif name == "SETITEMS":
            items = pop_mark()
            if not isinstance(stack[-1], dict):
                raise UnsafePickleError("SETITEMS on a non-dict")
            for k, v in zip(items[::2], items[1::2]):
                stack[-1][k] = v
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if int(arg) not in memo:
                raise UnsafePickleError(f"memo key {arg} missing")
            stack.append(memo[int(arg)])
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "GLOBAL":
                module, _, qualname = str(arg).partition(" ")
            else:
                qualname, module = stack.pop(), stack.pop()
                if not isinstance(module, str) or not isinstance(qualname, str):
                    raise UnsafePickleError("STACK_GLOBAL with non-string operands")
            if (module, qualname) not in _ALLOWED_GLOBALS:
                raise UnsafePickleError(
                    f"refusing global {module}.{qualname} at byte {pos}: only the globals of a "
                    f"tensor state dict are allowed ({_ALLOWED_NAMES})")
            stack.append(_ALLOWED_GLOBALS[(module, qualname)])
        elif name == "REDUCE":
            args = stack.pop()
            func = callable_of(stack.pop(), "REDUCE")
            if not isinstance(args, tuple):
                raise UnsafePickleError("REDUCE arguments are not a tuple")
            try:
                stack.append(func(*args))
            except TypeError as e:
                raise UnsafePickleError(f"bad arguments for {func}: {e}") from e
        elif name == "BUILD":
            state = stack.pop()
            obj = stack[-1]
            if not isinstance(obj, collections.OrderedDict) or not isinstance(state, dict):
                raise UnsafePickleError(f"BUILD on {type(obj).__name__} is not allowed")
            # A state dict's `_metadata` (module versions) is not needed: dropped.
        elif name == "BINPERSID":
            if persistent_load is None:
                raise UnsafePickleError("persistent id outside a checkpoint")
            stack.append(persistent_load(stack.pop()))
        else:
            raise UnsafePickleError(f"refusing pickle opcode {name} at byte {pos}")
    raise UnsafePickleError("pickle stream ended without STOP")


def _persistent_loader(storages: Dict[str, _Storage]):
    def load(pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {pid!r}")
        stype, key, _location, numel = pid[1], str(pid[2]), pid[3], pid[4]
        if not isinstance(stype, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise UnsafePickleError(f"bad storage record {pid!r}")
        if len(pid) == 6 and pid[5] is not None:
            raise UnsafePickleError("legacy storage views are not supported")
        if key not in storages:
            storages[key] = _Storage(stype, key, numel)
        return storages[key]

    return load


def _decode_storage(buf: bytes, storage: _Storage, byteorder: str = "little") -> np.ndarray:
    dtype = storage.stype.dtype
    if dtype == "bfloat16":
        dt = np.dtype("<u2" if byteorder == "little" else ">u2")
        raw = np.frombuffer(buf, dtype=dt, count=storage.numel)
        return (raw.astype(np.uint32) << 16).view(np.float32)
    dt = np.dtype(dtype)
    if byteorder == "big" and dt.itemsize > 1:
        dt = dt.newbyteorder(">")
    need = storage.numel * dt.itemsize
    if len(buf) < need:
        raise ValueError(f"storage {storage.key!r}: {len(buf)} bytes < {need} expected")
    return np.frombuffer(buf, dtype=dt, count=storage.numel).astype(dt.newbyteorder("="))


def _materialize(obj):
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _read_torch_zip(path: str):
    storages: Dict[str, _Storage] = {}
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise ValueError(f"{path}: not a torch zip checkpoint (no single <root>/data.pkl)")
        root = pkl[0].rsplit("/", 1)[0]
        byteorder = "little"
        if f"{root}/byteorder" in names:
            byteorder = zf.read(f"{root}/byteorder").decode().strip()
        with zf.open(pkl[0]) as f:
            obj = _interpret(io.BytesIO(f.read()), _persistent_loader(storages))
        for key, st in storages.items():
            st.array = _decode_storage(zf.read(f"{root}/data/{key}"), st, byteorder)
    return _materialize(obj)


def _read_torch_legacy(path: str):
    storages: Dict[str, _Storage] = {}
    with open(path, "rb") as f:
        magic = _interpret(f)
        if magic != _LEGACY_MAGIC:
            raise ValueError(f"{path}: not a PyTorch checkpoint (bad magic number)")
        protocol = _interpret(f)
        if protocol != _LEGACY_PROTOCOL:
            raise ValueError(f"{path}: unsupported legacy protocol {protocol}")
        sys_info = _interpret(f)
        little = True
        if isinstance(sys_info, dict):
            little = bool(sys_info.get("little_endian", True))
        obj = _interpret(f, _persistent_loader(storages))
        keys = _interpret(f)
        if not isinstance(keys, list):
            raise UnsafePickleError("legacy storage key list is not a list")
        for key in keys:
            st = storages.get(str(key))
            if st is None:
                raise ValueError(f"{path}: storage {key!r} listed but never referenced")
            numel = int.from_bytes(f.read(8), "little")
            if numel != st.numel:
                raise ValueError(f"{path}: storage {key!r} has {numel} elements, "
                                 f"expected {st.numel}")
            itemsize = 2 if st.stype.dtype == "bfloat16" else np.dtype(st.stype.dtype).itemsize
            buf = f.read(numel * itemsize)
            st.array = _decode_storage(buf, st, "little")
        del little  # storages are always written little-endian by torch
    return _materialize(obj)


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
    """Reads a flat ``{name: array}`` from a torch checkpoint, ``.safetensors`` or ``.npz``.

    Never unpickles: torch checkpoints go through the restricted interpreter above. A checkpoint
    that wraps the state dict (``{"state_dict": ...}``) is unwrapped.
    """
    lower = path.lower()
    if lower.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return dict(load_file(path))
    if lower.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    if zipfile.is_zipfile(path):
        obj = _read_torch_zip(path)
    else:
        obj = _read_torch_legacy(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: checkpoint holds a {type(obj).__name__}, not a state dict")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, np.ndarray):
            raise ValueError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        out[str(k)] = v
    return out
