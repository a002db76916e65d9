"""FSDP (`mesh.model` > 1): parameters and optimiser state split over the model axis, the same training."""

import jax
import numpy as np
import pytest

from xray_gen.configs import classifier as classifier_config
from xray_gen.models.classifier.task import ClassifierTask
from xray_gen.training import loop
from xray_gen.training.sharding import MODEL_AXIS, make_mesh, parse_shard_rules, state_shardings


def _config(model: int, **train):
    c = classifier_config.get_config("smoke")
    c.train.update(dict(num_steps=3, eval_every=0, checkpoint_every=2, log_every=1, **train))
    c.mesh.model = model
    c.mesh.shard_min_size = 1  # the smoke network is tiny: shard everything the axis divides
    return c


def _sharded_leaves(tree):
    return [x for x in jax.tree.leaves(tree) if MODEL_AXIS in jax.tree.leaves(tuple(x.sharding.spec))]


def test_fsdp_trains_like_data_parallel_and_resumes_sharded(tmp_path):
    assert jax.device_count() >= 2, "conftest sets two fake CPU devices"
    plain = loop.train(ClassifierTask(_config(1)), _config(1), str(tmp_path / "plain"))
    assert not _sharded_leaves(plain.params)

    loop.train(ClassifierTask(_config(2, stop_at_step=2)), _config(2, stop_at_step=2), str(tmp_path / "fsdp"))
    fsdp = loop.train(ClassifierTask(_config(2)), _config(2), str(tmp_path / "fsdp"))  # resumes at step 2
    assert int(fsdp.step) == 3
    sharded = _sharded_leaves(fsdp.params)
    assert len(sharded) > len(jax.tree.leaves(fsdp.params)) // 2  # kernels came back split after the restore
    assert _sharded_leaves(fsdp.opt_state)  # Adam moments follow their parameters
    one = sharded[0]
    assert {s.data.shape for s in one.addressable_shards} != {one.shape}  # each device holds a slice only
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5),
                 plain.params, fsdp.params)


def test_state_shardings_default_rule_min_size_and_overrides():
    mesh = make_mesh(1, 2)
    state = {"params": {"conv": {"kernel": jax.ShapeDtypeStruct((3, 3, 16, 64), np.float32),
                                 "bias": jax.ShapeDtypeStruct((64,), np.float32)},
                        "embed": {"embedding": jax.ShapeDtypeStruct((1001, 32), np.float32)},
                        "odd": jax.ShapeDtypeStruct((3, 5), np.float32)},
             "step": jax.ShapeDtypeStruct((), np.int32)}
    specs = jax.tree.map(lambda s: tuple(s.spec), state_shardings(mesh, state, min_size=100))
    assert specs["params"]["conv"]["kernel"] == (None, None, None, MODEL_AXIS)  # largest divisible dim
    assert specs["params"]["conv"]["bias"] == ()  # under min_size: replicated
    assert specs["params"]["embed"]["embedding"] == (None, MODEL_AXIS)  # 1001 is odd: next largest dim
    assert specs["params"]["odd"] == () and specs["step"] == ()
    rules = parse_shard_rules('[["conv/kernel", 2], ["embed", null]]')
    specs = jax.tree.map(lambda s: tuple(s.spec), state_shardings(mesh, state, rules, min_size=100))
    assert specs["params"]["conv"]["kernel"] == (None, None, MODEL_AXIS, None)
    assert specs["params"]["embed"]["embedding"] == ()
    with pytest.raises(ValueError, match="does not divide"):
        state_shardings(mesh, state, parse_shard_rules('[["embed", 0]]'))
    with pytest.raises(ValueError, match="mesh.shard_rules"):
        parse_shard_rules('[["(unclosed", 0]]')
    with pytest.raises(ValueError, match="mesh.model=3"):
        make_mesh(-1, 3)
