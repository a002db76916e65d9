"""Test session setup: two fake CPU devices (sharded-vs-single checks) and parsed absl flags."""

import os

# Two fake CPU devices; and the CPU compiler's cheap optimisation level: the suite's smoke runs are
# dominated by compiling (an XRayGAN smoke run: 3 min 17 s -> 1 min 53 s), not by running, and the
# programs compute the same functions (numbers move in the last float digits; every comparison in
# the suite is between runs made under the same flags). Subprocesses and notebook kernels inherit it.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0 "
                                   "--xla_llvm_disable_expensive_passes=true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

import tempfile  # noqa: E402

import jax  # noqa: E402

# One persistent compilation cache for the session: the XRayGAN runs (smoke, resume) rebuild the same
# phase steps in each `main.run`, and identical programs then compile once. Set before any compile.
# Under pytest-xdist (pyproject's addopts) the workers of one run share it: their run id names it,
# and a size limit switches on JAX's file lock, so two workers never read a half-written entry.
_run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if _run_id:
    _cache_dir = os.path.join(tempfile.gettempdir(), f"xray_gen_jax_cache_{_run_id}")
    os.makedirs(_cache_dir, exist_ok=True)
    jax.config.update("jax_compilation_cache_max_size", 16 * 2**30)
else:
    _cache_dir = tempfile.mkdtemp(prefix="xray_gen_jax_cache_")
jax.config.update("jax_compilation_cache_dir", _cache_dir)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# The slowest files start first: under `--dist loadfile` each file runs whole on one worker, in
# collection order, so a long file collected late (the notebooks, alphabetically) would run alone
# at the end while the other worker idles. Order inside each file is kept.
_SLOW_FILES_FIRST = ("test_notebooks.py", "test_cxr_irgen_task.py", "test_emixer_task.py", "test_xraygan_resume.py",
                     "test_xraygan_task.py", "test_multiprocess.py", "test_kill_resume.py", "test_benchmarks.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))
