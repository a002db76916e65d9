"""The runner: clear errors for unknown models, sources and sampling options; prerequisite runs
trained once, before the task, and recorded with their weights' checksum."""

import json
import os

import jax
import pytest
from absl import flags

from xray_gen import runner
from xray_gen.configs import classifier as classifier_config
from xray_gen.configs import vcn as vcn_config
from xray_gen.evaluation.features import params_checksum
from xray_gen.training import loop

flags.FLAGS.mark_as_parsed()


def test_unknown_model_and_source_list_the_valid_choices():
    config = classifier_config.get_config("smoke")
    config.model = "stylegan"
    with pytest.raises(ValueError, match="valid models: classifier, vcn, xraygan"):
        runner.make_task(config)
    config = classifier_config.get_config("smoke")
    config.data.source = "padchest"
    with pytest.raises(ValueError, match="valid: phantom, openi, mimic_cxr, chestxray14, chexpert"):
        runner.make_task(config)


def test_sample_options_a_model_does_not_take_fail_before_restoring():
    from xray_gen.configs import pggan as pggan_config

    config = pggan_config.get_config("smoke")
    with pytest.raises(ValueError, match="'pggan' does not take --labels when sampling"):
        runner.run(config, "/nonexistent-workdir", "sample", labels="Cardiomegaly")
    config = classifier_config.get_config("smoke")
    with pytest.raises(ValueError, match="not generative"):
        runner.run(config, "/nonexistent-workdir", "sample")


def _vcn_config(widths=(8, 16)):
    c = vcn_config.get_config("smoke")
    c.train.num_steps, c.train.eval_every, c.train.checkpoint_every = 2, 0, 2
    c.vcn.widths = widths
    return c


class NeedsVCN(loop.Task):
    """A task whose only interest is the run it declares (twice, under two names: trained once)."""

    name = "needs_vcn"

    def __init__(self, config, workdir):
        super().__init__(config, workdir)
        self.mismatches = []

    def prerequisites(self):
        directory = os.path.join(self.workdir, "vcn")
        return [loop.Prerequisite("vcn", self.config, directory), loop.Prerequisite("same_vcn", self.config, directory)]

    def prerequisite_mismatch(self, prerequisite, error):
        self.mismatches.append(prerequisite.name)
        return ValueError(f"prerequisite {prerequisite.name} does not fit")

    def init(self, rng):
        raise NotImplementedError

    def train_step(self, state, frozen, batch):
        raise NotImplementedError

    def train_loader(self):
        raise NotImplementedError


def test_prerequisites_train_once_and_are_recorded(tmp_path, monkeypatch):
    saves = []
    save = loop.Checkpointer.save
    monkeypatch.setattr(loop.Checkpointer, "save", lambda self, step, *a, **k: (saves.append(step), save(self, step, *a, **k))[1])
    task = NeedsVCN(_vcn_config(), str(tmp_path))
    records = runner.train_prerequisites(task)
    assert saves == [2]  # one run for both names
    with open(tmp_path / runner.PREREQUISITES_FILE) as f:
        written = json.load(f)
    assert written == json.loads(json.dumps(records)) and set(written) == {"vcn", "same_vcn"}
    vcn = runner.make_task(task.config, str(tmp_path / "vcn"))
    state, _ = loop.restore_latest(vcn, task.config, str(tmp_path / "vcn"))
    assert written["vcn"]["weights_sha256"] == params_checksum(jax.device_get(state.params))
    assert written["vcn"]["step"] == 2 and written["vcn"]["model"] == "vcn"
    assert written["vcn"]["config"]["vcn"]["widths"] == [8, 16]

    assert runner.train_prerequisites(NeedsVCN(_vcn_config(), str(tmp_path))) == records and saves == [2]  # finished: only restored
    wider = NeedsVCN(_vcn_config(widths=(16, 16)), str(tmp_path))
    with pytest.raises(ValueError, match="prerequisite vcn does not fit"):
        runner.train_prerequisites(wider)
    assert wider.mismatches == ["vcn"]
