"""Energy-based models: a neural energy trained by contrastive divergence, and a restricted Boltzmann machine."""
