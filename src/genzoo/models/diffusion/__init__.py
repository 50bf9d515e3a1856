"""Diffusion models: noise schedules and samplers (independent of the network) and the ``ddpm`` model."""
