"""The command line: clear errors for unknown models, variants, sources and config keys; --help."""

import os
import subprocess
import sys

import pytest

from xray_gen import main
from xray_gen.configs import classifier as classifier_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_unknown_model_and_source_list_the_valid_choices():
    config = classifier_config.get_config("smoke")
    config.model = "stylegan"
    with pytest.raises(ValueError, match="valid models: classifier, vcn, xraygan"):
        main.make_task(config)
    config = classifier_config.get_config("smoke")
    config.data.source = "padchest"
    with pytest.raises(ValueError, match="valid: phantom, openi, mimic_cxr, chestxray14, chexpert"):
        main.make_task(config)


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid variants: '', 'cpu', 'smoke'"):
        classifier_config.get_config("tpu-pod")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "xray_gen.main", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_unknown_config_key_names_it_and_the_valid_keys():
    result = _cli("--config=configs/classifier.py:smoke", "--workdir=unused", "--config.train.num_stepz=3")
    assert result.returncode != 0
    assert "unknown config key 'train.num_stepz'" in result.stderr
    assert "num_steps" in result.stderr and "Traceback" not in result.stderr


def test_cli_help_explains_modes_with_an_example():
    result = _cli("--help")  # absl exits with status 1 after printing help
    assert "Traceback" not in result.stderr
    for text in ("train", "evaluate", "sample", "--config=configs/classifier.py:cpu"):
        assert text in result.stdout


def test_sample_options_a_model_does_not_take_fail_before_restoring():
    from xray_gen.configs import pggan as pggan_config

    config = pggan_config.get_config("smoke")
    with pytest.raises(ValueError, match="'pggan' does not take --labels when sampling"):
        main.run(config, "/nonexistent-workdir", "sample", labels="Cardiomegaly")
    config = classifier_config.get_config("smoke")
    with pytest.raises(ValueError, match="not generative"):
        main.run(config, "/nonexistent-workdir", "sample")
