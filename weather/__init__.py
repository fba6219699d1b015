"""Diffusion-based ensemble weather forecasting (GenCast-style), in JAX."""

__version__ = "0.1.0"
