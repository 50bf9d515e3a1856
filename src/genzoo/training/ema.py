"""Exponential moving average of a model's parameters (Polyak averaging), used for sampling and validation.

theta_ema <- d * theta_ema + (1 - d) * theta, with d = min(decay, (1 + t) / (10 + t)) so that early averages are
not dominated by the random initialisation. Buffers (e.g. BatchNorm statistics) are taken from the live model.
Only the parameters of the model's ``ema_targets()`` are averaged (a GAN's generator, not its discriminator); the
others are saved as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from genzoo.runs.checkpoint import weight_tensors


class EMA:
    def __init__(self, model: nn.Module, decay: float, targets: list[nn.Module] | None = None) -> None:
        self.model = model
        self.decay = decay
        averaged = {id(p) for target in (targets or [model]) for p in target.parameters()}
        self.params = {k: p for k, p in model.named_parameters() if id(p) in averaged}
        self.shadow = {k: p.detach().clone() for k, p in self.params.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        # one foreach call instead of a kernel launch per tensor (same arithmetic)
        torch._foreach_lerp_(list(self.shadow.values()), [p.detach() for p in self.params.values()], 1.0 - d)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily put the EMA parameters into the model."""
        params = self.params
        backup = {k: p.detach().clone() for k, p in params.items()}
        with torch.no_grad():
            for key, param in params.items():
                param.copy_(self.shadow[key])
        try:
            yield
        finally:
            with torch.no_grad():
                for key, param in params.items():
                    param.copy_(backup[key])

    def model_tensors(self) -> dict[str, Tensor]:
        """Full weight dict (EMA parameters + live buffers) in the same layout as ``model.safetensors``."""
        with self.applied():
            return {k: v.clone() for k, v in weight_tensors(self.model).items()}

    def load_model_tensors(self, tensors: dict[str, Tensor]) -> None:
        for key in self.shadow:
            if key in tensors:
                self.shadow[key].copy_(tensors[key])
