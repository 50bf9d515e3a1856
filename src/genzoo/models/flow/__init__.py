"""Normalizing flows: invertible networks with an exact likelihood by the change of variables (RealNVP, Glow)."""
