"""xray_gen: generative models of chest X-rays and radiology reports in JAX/Flax."""

__version__ = "0.1.0"

from xray_gen.xla_flags import apply_cpu_defaults as _apply_cpu_defaults

_apply_cpu_defaults()
