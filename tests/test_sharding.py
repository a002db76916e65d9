"""Data-parallel steps over two fake CPU devices give the single-device losses and gradients."""

import jax
import numpy as np
import pytest

from xray_gen.configs import classifier as classifier_config
from xray_gen.configs import vcn as vcn_config
from xray_gen.models.classifier.task import ClassifierTask
from xray_gen.models.vcn.task import VCNTask
from xray_gen.training.sharding import batch_sharding, make_mesh, replicated, to_global


@pytest.mark.parametrize("task_cls,config_module", [(ClassifierTask, classifier_config), (VCNTask, vcn_config)])
def test_sharded_loss_and_grads_equal_single_device(task_cls, config_module):
    assert jax.device_count() >= 2, "conftest sets two fake CPU devices"
    task = task_cls(config_module.get_config("smoke"))
    batch = next(iter(task.train_loader()))
    results = []
    for n in (1, 2):
        mesh = make_mesh(n)
        state = jax.jit(task.init, out_shardings=replicated(mesh))(jax.random.PRNGKey(0))
        fn = jax.jit(task.loss_and_grads, in_shardings=(replicated(mesh), batch_sharding(mesh)))
        (loss, _), grads = fn(state, to_global(batch, mesh))
        if n == 2:
            assert len(to_global(batch, mesh)["frontal"].sharding.device_set) == 2
        results.append(jax.device_get((loss, grads)))
    (loss1, grads1), (loss2, grads2) = results
    np.testing.assert_allclose(loss1, loss2, rtol=1e-5)
    # float32 sums in another order (per-device partial sums, then the all-reduce): ~1e-4 relative
    # on a small gradient entry; a sharding bug (a missing all-reduce, a batch counted twice) is O(1).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5), grads1, grads2)
