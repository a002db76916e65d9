"""Test session setup: two fake CPU devices (sharded-vs-single checks) and parsed absl flags."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

import tempfile  # noqa: E402

import jax  # noqa: E402

# One persistent compilation cache for the session: the XRayGAN runs (smoke, resume) rebuild the same
# phase steps in each `main.run`, and identical programs then compile once. Set before any compile.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="xray_gen_jax_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
