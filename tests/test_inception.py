"""FID Inception-v3: layout, pickle-free weight import (zip + legacy torch formats), forward shapes.

The torch-format files are written here with ``pickle.Pickler`` (writing only) against stand-in
``torch`` modules, so the test needs no torch; the importer must read them without unpickling.
"""

import collections
import contextlib
import io
import os
import pickle
import struct
import sys
import types
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_gen.evaluation import torch_checkpoint
from xray_gen.evaluation import weights_import as wi
from xray_gen.nn import inception

# ---- the pytorch-fid state-dict layout, written independently of the Flax module -----------------


def _conv_specs():
    """(name, in_channels, out_channels, kh, kw) of every BasicConv2d in pytorch-fid's model."""
    s = [("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3),
         ("Conv2d_2b_3x3", 32, 64, 3, 3), ("Conv2d_3b_1x1", 64, 80, 1, 1),
         ("Conv2d_4a_3x3", 80, 192, 3, 3)]

    def block_a(n, cin, pool):
        return [(f"{n}.branch1x1", cin, 64, 1, 1), (f"{n}.branch5x5_1", cin, 48, 1, 1),
                (f"{n}.branch5x5_2", 48, 64, 5, 5), (f"{n}.branch3x3dbl_1", cin, 64, 1, 1),
                (f"{n}.branch3x3dbl_2", 64, 96, 3, 3), (f"{n}.branch3x3dbl_3", 96, 96, 3, 3),
                (f"{n}.branch_pool", cin, pool, 1, 1)]

    def block_c(n, c7):
        return [(f"{n}.branch1x1", 768, 192, 1, 1), (f"{n}.branch7x7_1", 768, c7, 1, 1),
                (f"{n}.branch7x7_2", c7, c7, 1, 7), (f"{n}.branch7x7_3", c7, 192, 7, 1),
                (f"{n}.branch7x7dbl_1", 768, c7, 1, 1), (f"{n}.branch7x7dbl_2", c7, c7, 7, 1),
                (f"{n}.branch7x7dbl_3", c7, c7, 1, 7), (f"{n}.branch7x7dbl_4", c7, c7, 7, 1),
                (f"{n}.branch7x7dbl_5", c7, 192, 1, 7), (f"{n}.branch_pool", 768, 192, 1, 1)]

    def block_e(n, cin):
        return [(f"{n}.branch1x1", cin, 320, 1, 1), (f"{n}.branch3x3_1", cin, 384, 1, 1),
                (f"{n}.branch3x3_2a", 384, 384, 1, 3), (f"{n}.branch3x3_2b", 384, 384, 3, 1),
                (f"{n}.branch3x3dbl_1", cin, 448, 1, 1), (f"{n}.branch3x3dbl_2", 448, 384, 3, 3),
                (f"{n}.branch3x3dbl_3a", 384, 384, 1, 3), (f"{n}.branch3x3dbl_3b", 384, 384, 3, 1),
                (f"{n}.branch_pool", cin, 192, 1, 1)]

    s += block_a("Mixed_5b", 192, 32) + block_a("Mixed_5c", 256, 64)
    s += block_a("Mixed_5d", 288, 64)
    s += [("Mixed_6a.branch3x3", 288, 384, 3, 3), ("Mixed_6a.branch3x3dbl_1", 288, 64, 1, 1),
          ("Mixed_6a.branch3x3dbl_2", 64, 96, 3, 3), ("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 3)]
    s += block_c("Mixed_6b", 128) + block_c("Mixed_6c", 160) + block_c("Mixed_6d", 160)
    s += block_c("Mixed_6e", 192)
    s += [("Mixed_7a.branch3x3_1", 768, 192, 1, 1), ("Mixed_7a.branch3x3_2", 192, 320, 3, 3),
          ("Mixed_7a.branch7x7x3_1", 768, 192, 1, 1), ("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7),
          ("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1), ("Mixed_7a.branch7x7x3_4", 192, 192, 3, 3)]
    s += block_e("Mixed_7b", 1280) + block_e("Mixed_7c", 2048)
    return s


def synthetic_state_dict(seed=0):
    rng = np.random.default_rng(seed)
    sd = collections.OrderedDict()
    for name, cin, cout, kh, kw in _conv_specs():
        std = np.sqrt(2.0 / (cin * kh * kw))
        sd[f"{name}.conv.weight"] = (rng.normal(size=(cout, cin, kh, kw)) * std).astype(np.float32)
        sd[f"{name}.bn.weight"] = rng.uniform(0.8, 1.2, cout).astype(np.float32)
        sd[f"{name}.bn.bias"] = rng.normal(scale=0.1, size=cout).astype(np.float32)
        sd[f"{name}.bn.running_mean"] = rng.normal(scale=0.1, size=cout).astype(np.float32)
        sd[f"{name}.bn.running_var"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
        sd[f"{name}.bn.num_batches_tracked"] = np.array(0, np.int64)
    sd["fc.weight"] = (rng.normal(size=(1008, 2048)) * 0.02).astype(np.float32)
    sd["fc.bias"] = np.zeros(1008, np.float32)
    return sd


# ---- a torch-format writer built on pickle's *writing* side --------------------------------------


@contextlib.contextmanager
def fake_torch_modules():
    """Stand-in torch modules so pickle can emit GLOBAL torch._utils._rebuild_tensor_v2 etc."""
    names = ["torch", "torch._utils"]
    saved = {n: sys.modules.get(n) for n in names}
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: the importer must not execute the pickle
        raise AssertionError("executed")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    for cls_name in ("FloatStorage", "LongStorage", "HalfStorage"):
        cls = type(cls_name, (), {"__module__": "torch"})
        setattr(torch, cls_name, cls)
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        yield torch
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


class _Storage:
    def __init__(self, key, array):
        self.key, self.array = key, array


class _Tensor:
    def __init__(self, storage, shape, torch_mod):
        self.storage, self.shape, self.torch = storage, shape, torch_mod

    def __reduce__(self):
        stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
        return (self.torch._utils._rebuild_tensor_v2,
                (self.storage, 0, tuple(self.shape), stride, False, collections.OrderedDict()))


def _pickle_state_dict(sd, torch_mod, legacy):
    storages = []
    obj = collections.OrderedDict()
    obj._metadata = collections.OrderedDict([("", {"version": 1})])  # exercised via BUILD
    for i, (k, v) in enumerate(sd.items()):
        st = _Storage(str(i), np.ascontiguousarray(v).reshape(-1))
        storages.append(st)
        obj[k] = _Tensor(st, v.shape, torch_mod)
    stype = {np.dtype(np.float32): torch_mod.FloatStorage,
             np.dtype(np.int64): torch_mod.LongStorage}

    class P(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, _Storage):
                pid = ("storage", stype[o.array.dtype], o.key, "cpu", o.array.size)
                return pid + (None,) if legacy else pid
            return None

    buf = io.BytesIO()
    P(buf, protocol=2).dump(obj)
    return buf.getvalue(), storages


def write_torch_zip(path, sd, root="pt_inception-2015-12-05"):
    with fake_torch_modules() as torch_mod:
        data, storages = _pickle_state_dict(sd, torch_mod, legacy=False)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{root}/data.pkl", data)
        zf.writestr(f"{root}/byteorder", "little")
        for st in storages:
            little = st.array.astype(st.array.dtype.newbyteorder("<"))
            zf.writestr(f"{root}/data/{st.key}", little.tobytes())
        zf.writestr(f"{root}/version", "3\n")


def write_torch_legacy(path, sd):
    with fake_torch_modules() as torch_mod:
        data, storages = _pickle_state_dict(sd, torch_mod, legacy=True)
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
        f.write(data)
        pickle.dump([st.key for st in storages], f, protocol=2)
        for st in storages:
            f.write(struct.pack("<q", st.array.size))
            f.write(st.array.astype(st.array.dtype.newbyteorder("<")).tobytes())


# ---- tests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state_dict():
    return synthetic_state_dict()


@pytest.fixture(scope="module")
def zip_path(tmp_path_factory, state_dict):
    path = str(tmp_path_factory.mktemp("w") / "pt_inception-2015-12-05-6726825d.pth")
    write_torch_zip(path, state_dict)
    return path


def test_state_dict_names_map_one_to_one(state_dict):
    flat = wi.flatten_variables(wi.torch_to_flax(state_dict))
    expected = wi._expected_shapes()
    assert set(flat) == set(expected)
    for k, shape in expected.items():
        assert flat[k].shape == shape, k
    n_torch = sum(1 for k in state_dict if not k.endswith("num_batches_tracked"))
    assert len(flat) == n_torch  # 1:1, nothing dropped or invented
    w = state_dict["Mixed_6b.branch7x7_2.conv.weight"]  # OIHW (128, 128, 1, 7)
    np.testing.assert_array_equal(flat["params/Mixed_6b/branch7x7_2/conv/kernel"],
                                  w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(flat["batch_stats/Mixed_7c/branch_pool/bn/var"],
                                  state_dict["Mixed_7c.branch_pool.bn.running_var"])
    np.testing.assert_array_equal(flat["params/fc/kernel"], state_dict["fc.weight"].T)


def test_zip_and_legacy_roundtrip_and_cli(tmp_path, zip_path, state_dict):
    sd = wi.read_state_dict(zip_path)
    assert list(sd) == list(state_dict)
    for k in state_dict:
        np.testing.assert_array_equal(sd[k], state_dict[k])
    legacy = str(tmp_path / "legacy.pth")
    small = collections.OrderedDict(list(state_dict.items())[:12])
    write_torch_legacy(legacy, small)
    sd_legacy = wi.read_state_dict(legacy)
    assert list(sd_legacy) == list(small)
    for k in small:
        np.testing.assert_array_equal(sd_legacy[k], small[k])

    dst = str(tmp_path / "inception.safetensors")
    # The synthetic file carries the published name but not its hash: flagged, still converted.
    with pytest.warns(RuntimeWarning, match="not the published FID weights"):
        assert wi.main(["--src", zip_path, "--dst", dst]) == 0
    info = wi.inception_weights_info(dst)
    assert info["source_sha256"] == wi.sha256_file(zip_path)
    assert info["sha256"] == wi.sha256_file(dst)
    variables = wi.load_inception_params(dst)
    np.testing.assert_array_equal(variables["params"]["Conv2d_1a_3x3"]["conv"]["kernel"],
                                  state_dict["Conv2d_1a_3x3.conv.weight"].transpose(2, 3, 1, 0))
    # npz with torch names converts the same way
    npz = str(tmp_path / "sd.npz")
    np.savez(npz, **state_dict)
    v2 = wi.load_inception_params(npz)
    np.testing.assert_array_equal(v2["params"]["fc"]["kernel"], variables["params"]["fc"]["kernel"])


def _malicious_zip(path, payload_obj):
    buf = io.BytesIO()
    pickle.Pickler(buf, protocol=2).dump(payload_obj)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/version", "3\n")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilEval:
    def __reduce__(self):
        return (eval, ("1+1",))


def test_malicious_pickle_refused(tmp_path):
    marker = tmp_path / "pwned"
    bad = str(tmp_path / "evil.pth")
    _malicious_zip(bad, collections.OrderedDict([("x", _Evil(marker))]))
    with pytest.raises(wi.UnsafePickleError, match="system"):
        wi.read_state_dict(bad)
    assert not marker.exists()
    _malicious_zip(bad, {"x": _EvilEval()})
    with pytest.raises(wi.UnsafePickleError, match="eval"):
        wi.read_state_dict(bad)
    # protocol-4 STACK_GLOBAL route and a legacy-format file are refused the same way
    with open(bad, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump(_Evil(marker), f, protocol=4)
    with pytest.raises(wi.UnsafePickleError, match="system"):
        wi.read_state_dict(bad)
    assert not marker.exists()
    with pytest.raises(wi.UnsafePickleError, match="opcode"):
        torch_checkpoint._interpret(io.BytesIO(pickle.dumps({1, 2}, protocol=4)))  # EMPTY_SET not allowed


def test_count_include_pad_false():
    x = jnp.ones((1, 5, 5, 1))
    np.testing.assert_allclose(inception._avg_pool_3x3_s1_no_pad_count(x), 1.0)


def test_first_conv_matches_reference_layout(state_dict):
    # The imported weights used through Flax equal a direct OIHW convolution + BN + ReLU.
    variables = wi.unflatten_variables(wi.flatten_variables(wi.torch_to_flax(state_dict)))
    sub = {c: variables[c]["Conv2d_1a_3x3"] for c in ("params", "batch_stats")}
    x = np.random.default_rng(1).normal(size=(1, 9, 9, 3)).astype(np.float32)
    got = np.asarray(inception.BasicConv2d(32, 3, strides=2).apply(sub, x))
    w = state_dict["Conv2d_1a_3x3.conv.weight"].astype(np.float64)
    ref = np.zeros((1, 4, 4, 32))
    for i in range(4):
        for j in range(4):
            patch = x[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :].astype(np.float64)  # (kh, kw, cin)
            ref[0, i, j] = np.einsum("hwc,ochw->o", patch, w)
    p = "Conv2d_1a_3x3.bn."
    ref = (ref - state_dict[p + "running_mean"]) / np.sqrt(state_dict[p + "running_var"] + 1e-3)
    ref = np.maximum(ref * state_dict[p + "weight"] + state_dict[p + "bias"], 0)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_forward_shapes_299(zip_path):
    variables = wi.load_inception_params(zip_path)
    x = jax.random.uniform(jax.random.key(0), (2, 299, 299, 3), minval=-1, maxval=1)
    out = jax.jit(inception.FIDInceptionV3().apply)(variables, x)
    assert out["pool"].shape == (2, inception.FEATURE_DIM)
    assert out["logits"].shape == (2, inception.NUM_CLASSES)
    assert np.all(np.isfinite(np.asarray(out["pool"])))
    assert np.all(np.asarray(out["pool"]) >= 0)  # mean of ReLU outputs
    assert not np.allclose(out["pool"][0], out["pool"][1])


def test_malformed_pickles_refused():
    for payload in (b"\x80\x02R.", b"\x80\x02]q\x00(]q\x01K\x01u.", b"\x80\x02", b"garbage"):
        with pytest.raises(wi.UnsafePickleError):
            torch_checkpoint._interpret(io.BytesIO(payload))


def test_inception_extractor_on_grey_uint8(tmp_path, zip_path):
    # The run-time path: converted file -> jitted extractor; grey 64x64 uint8 -> 299 RGB -> 2048.
    from xray_gen.evaluation import features

    dst = str(tmp_path / "inception.safetensors")
    with pytest.warns(RuntimeWarning):
        wi.convert(zip_path, dst)
    ext = features.inception_extractor(dst, output="pool", batch_size=2)
    assert ext.name == "inception_v3_fid_pool" and ext.resolution == (299, 299)
    assert ext.weights_checksum == wi.sha256_file(zip_path)
    imgs = np.random.default_rng(0).integers(0, 256, size=(3, 64, 64), dtype=np.uint8)
    f = ext(imgs)
    assert f.shape == (3, 2048) and f.dtype == np.float32 and np.all(np.isfinite(f))
