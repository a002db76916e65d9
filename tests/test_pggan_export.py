"""PGGAN archive options and the critic re-purposed as a classifier."""

import jax
import numpy as np
import pytest

from xray_gen.configs import pggan as pggan_config
from xray_gen.data.schema import CHEXPERT_LABELS, NUM_LABELS
from xray_gen.models.pggan.export import class_proportions


def test_class_proportions_from_json_and_training_labels():
    config = pggan_config.get_config("smoke")
    default = class_proportions(config)  # positives per class among the training labels
    assert default.shape == (NUM_LABELS,) and default.sum() > 0 and np.all(default >= 0)
    config.archive.class_proportions = '{"Cardiomegaly": 2, "Edema": 1}'
    given = class_proportions(config)
    assert given[CHEXPERT_LABELS.index("Cardiomegaly")] == 2 and given[CHEXPERT_LABELS.index("Edema")] == 1
    assert given.sum() == 3
    for bad, message in (('{"Cardiomegally": 1}', "unknown label"), ("[1, 2]", "JSON object"),
                         ("{oops", "must be JSON"), ('{"Edema": -1}', "non-negative")):
        config.archive.class_proportions = bad
        with pytest.raises(ValueError, match=message):
            class_proportions(config)


def test_critic_classifier_starts_from_the_trained_critic():
    from xray_gen.models.pggan.critic_classifier import critic_classifier
    from xray_gen.models.pggan.task import PGGANTask

    task = PGGANTask(pggan_config.get_config("smoke"), workdir="unused")
    gan_state = task.init(jax.random.PRNGKey(0))
    cls_task, cc, _ = critic_classifier(task, gan_state.d_params)
    state = cls_task.init(jax.random.PRNGKey(1))
    trunk = state.params["critic"]
    for name, value in gan_state.d_params["params"].items():
        if name != "head":
            jax.tree.map(np.testing.assert_array_equal, trunk[name], value)
    assert trunk["head"]["kernel"].shape == (task.channels[0], NUM_LABELS)
    res = cc.data.resolution
    logits, _ = cls_task.net.apply({"params": state.params}, np.zeros((3, res, res, 1), np.float32))
    assert logits.shape == (3, NUM_LABELS)
    # Images are scored one by one (no minibatch statistic): a row's logits do not depend on the others.
    x = np.random.default_rng(0).normal(size=(3, res, res, 1)).astype(np.float32)
    alone = cls_task.net.apply({"params": state.params}, x[:1])[0]
    np.testing.assert_allclose(cls_task.net.apply({"params": state.params}, x)[0][:1], alone, rtol=1e-5, atol=1e-6)
