"""Every notebooks/*.ipynb runs top to bottom in a real kernel on its model's `smoke` config.

A new notebook needs no change here: the glob picks it up, and it must follow the conventions of
notebooks/README.md (cells tagged `install`, `parameters`, `grid`, `metrics`; VARIANT and WORKDIR read
from the environment in the parameters cell).
"""

import base64
import glob
import importlib.util
import io
import json
import math
import os
import sys

import jax
import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need the test extra: pip install -e '.[test]'")
nbclient = pytest.importorskip("nbclient", reason="the notebook tests need the test extra: pip install -e '.[test]'")
ipykernel_spec = pytest.importorskip("ipykernel.kernelspec", reason="the notebook tests need the test extra: pip install -e '.[test]'")

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "notebooks")
NOTEBOOKS = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))
KERNEL = "xray_gen_tests"
CELL_TIMEOUT_S = 600  # a smoke cell takes seconds; the limit only catches a hang (or a non-smoke run)


def _ids(paths):
    return [os.path.splitext(os.path.basename(p))[0] for p in paths]


def _tagged(nb, tag):
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected exactly one cell tagged {tag!r}, found {len(cells)} (see notebooks/README.md)"
    return cells[0]


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def _pngs(cell):
    from PIL import Image

    return [Image.open(io.BytesIO(base64.b64decode(o.data["image/png"])))
            for o in cell.get("outputs", []) if o.output_type in ("display_data", "execute_result") and "image/png" in o.data]


def _json(path):
    with open(path) as f:
        return json.load(f)


def _numbers(tree):
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in _numbers(v)]
    return [float(tree)] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


def test_notebooks_are_found():
    assert {"xraygan_quickstart", "pggan_quickstart"} <= set(_ids(NOTEBOOKS))


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory):
    """A kernelspec for this interpreter (sys.executable) in a private JUPYTER_PATH, so that a
    system-wide `python3` kernel of another Python can never be picked."""
    prefix = tmp_path_factory.mktemp("jupyter")
    ipykernel_spec.install(kernel_name=KERNEL, prefix=str(prefix), display_name="xray_gen tests")
    with open(prefix / "share" / "jupyter" / "kernels" / KERNEL / "kernel.json") as f:
        assert json.load(f)["argv"][0] == sys.executable
    return str(prefix / "share" / "jupyter")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_on_smoke_config(path, tmp_path, monkeypatch, jupyter_path):
    workdir = tmp_path / "workdir"
    monkeypatch.setenv("JUPYTER_PATH", jupyter_path)
    monkeypatch.setenv("XRAY_GEN_NOTEBOOK_VARIANT", "smoke")
    monkeypatch.setenv("XRAY_GEN_NOTEBOOK_WORKDIR", str(workdir))
    # The kernel inherits this session's XLA_FLAGS (two fake devices, from conftest) and its
    # persistent compilation cache, so identical programs (the smoke runs of the model tests) compile once.
    if jax.config.jax_compilation_cache_dir:
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
        monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", str(jax.config.jax_persistent_cache_min_compile_time_secs))
        monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", str(jax.config.jax_persistent_cache_min_entry_size_bytes))
        monkeypatch.setenv("JAX_COMPILATION_CACHE_MAX_SIZE", str(jax.config.jax_compilation_cache_max_size))  # the lock, if any

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError (with the cell and traceback) on any error

    assert "install skipped" in _stdout(_tagged(nb, "install"))
    assert "variant 'smoke'" in _stdout(_tagged(nb, "parameters"))  # the env var reached the kernel
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]

    images = [im for c in nb.cells for im in _pngs(c)]
    grid = _pngs(_tagged(nb, "grid"))
    assert grid, "the grid cell displayed no PNG"
    for im in images:
        im.load()  # decodes
    pixels = np.asarray(grid[0].convert("L"), np.float32)
    assert min(pixels.shape) >= 16 and pixels.std() > 0, f"sample grid {pixels.shape} is blank"

    records = glob.glob(str(workdir / "eval" / "*.json"))
    records = [r for r in records if "metrics" in _json(r)]
    assert len(records) == 1, f"expected one evaluation record in {workdir / 'eval'}, found {records}"
    printed = json.loads(_stdout(_tagged(nb, "metrics")))
    assert printed == _json(records[0])["metrics"]
    assert any(math.isfinite(x) for x in _numbers(printed)), printed
    pages = glob.glob(str(workdir / "eval" / "*.html"))
    for page in pages:
        with open(page) as f:
            assert "data:image/png;base64," in f.read(), f"{page} embeds no image"
    assert pages, f"no HTML report in {workdir / 'eval'}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_install_cell_clones_and_installs_only_without_xray_gen(path, tmp_path, monkeypatch):
    """The install branch that the kernel run skips (no network here): with a stand-in shell."""
    from IPython.core.inputtransformer2 import TransformerManager

    source = TransformerManager().transform_cell(_tagged(nbformat.read(path, as_version=4), "install").source)
    calls = []

    class Shell:
        def system(self, cmd):
            calls.append(("!", cmd))

        def run_line_magic(self, name, line):
            calls.append((name, line))

    monkeypatch.chdir(tmp_path)
    exec(source, {"get_ipython": Shell})  # xray_gen is importable here: nothing to do
    assert calls == []

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "xray_gen" else real_find_spec(name, *a))
    with pytest.raises(RuntimeError, match="set REPO_URL"):
        exec(source, {"get_ipython": Shell})
    assert 'REPO_URL = ""' in source
    monkeypatch.setattr(sys, "path", list(sys.path))
    exec(source.replace('REPO_URL = ""', 'REPO_URL = "https://example.invalid/xray_gen.git"'), {"get_ipython": Shell})
    assert [name for name, _ in calls] == ["!", "pip"]
    assert calls[0][1].startswith("git clone") and "{REPO_URL}" in calls[0][1] and calls[0][1].endswith(" xray_gen_repo")
    assert calls[1][1].startswith("install") and "-e" in calls[1][1] and "xray_gen_repo" in calls[1][1]
    assert sys.path[0] == str(tmp_path / "xray_gen_repo")
