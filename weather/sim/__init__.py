"""Simulated ERA5-style archives from the primitive equations (dinosaur, Held-Suarez forcing)."""
