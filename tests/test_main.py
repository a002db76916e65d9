"""The command line: clear errors for unknown config keys; --help."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
