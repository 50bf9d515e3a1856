"""Muon (Jordan et al. 2024): momentum whose update for a weight matrix is orthogonalised.

For a hidden weight matrix W (out x in) with gradient G, one step is

    M <- beta M + (1 - beta) G                     momentum, as a moving average
    U <- (1 - beta) G + beta M                     Nesterov look-ahead
    O <- NS(U) ~ U (U^T U)^(-1/2)                   U's singular values pushed towards 1, its singular vectors kept
    W <- (1 - lr wd) W - lr sqrt(max(1, out / in)) O

so every direction of the update moves by a similar amount instead of a few dominant ones. NS is a quintic
Newton-Schulz iteration on X_0 = U / ||U||_F (every singular value in (0, 1]),

    X <- a X + b (X X^T) X + c (X X^T)^2 X,   (a, b, c) = (3.4445, -4.7750, 2.0315),

whose coefficients favour a steep slope at zero over exact convergence: after five steps the singular values land
roughly in [0.7, 1.2], which trains as well as the exact polar factor. Only for 2-D weights inside the network;
embeddings, the output layer and gains/biases stay with AdamW.

Written here rather than taken from ``torch.optim.Muon``: that one iterates in bfloat16, and on CPUs without native
bf16 arithmetic it made ``gpt`` training several times slower; here the iteration runs in the weights' dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from genzoo.errors import ConfigError

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(update: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """The quintic Newton-Schulz approximation of ``update``'s polar factor (a 2-D tensor)."""
    a, b, c = NS_COEFFICIENTS
    tall = update.shape[0] > update.shape[1]
    x = update.T if tall else update  # iterate on the wide side: the Gram matrix X X^T is the smaller one
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A^2
        x = torch.addmm(x, poly, x, beta=a)  # a X + (b A + c A^2) X
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Muon over 2-D parameters: ``lr`` is the step of the orthogonalised update (~0.02 works for transformers of
    many sizes), ``weight_decay`` decoupled as in AdamW."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float = 0.02, momentum: float = 0.95,
                 nesterov: bool = True, weight_decay: float = 0.0, ns_steps: int = 5) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov,
                                  "weight_decay": weight_decay, "ns_steps": ns_steps})
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ConfigError(f"Muon updates 2-D weight matrices; got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - beta)
                update = p.grad.lerp(buf, beta) if group["nesterov"] else buf
                scale = max(1.0, p.shape[0] / p.shape[1]) ** 0.5
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(orthogonalize(update, group["ns_steps"]), alpha=-group["lr"] * scale)
        return loss
