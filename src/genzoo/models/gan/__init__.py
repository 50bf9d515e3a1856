"""Generative adversarial networks: a generator trained against a discriminator (DCGAN) or a critic (WGAN-GP)."""
