"""XRayGAN (Yang et al. 2021): multi-scale conditional generators, patch discriminators and losses."""
