"""Diffusion model: EDM preconditioning and loss, spherical noise, DPM-Solver++ 2S sampler."""
