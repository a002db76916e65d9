"""xray_gen: generative models of chest X-rays and radiology reports in JAX/Flax."""

__version__ = "0.1.0"
