"""Vector quantisation with a learned codebook (van den Oord et al., 2017, "Neural Discrete Representation Learning").

An encoder output z in R^D is replaced by the nearest of K codebook vectors e_1 .. e_K,

    k(z) = argmin_k ||z - e_k||^2,    z_q = e_{k(z)}.

argmin has no gradient: the straight-through estimator z_q_st = z + sg(z_q - z) equals z_q going forward and passes
the decoder's gradient to the encoder unchanged (d z_q_st / d z = I). The commitment loss beta ||z - sg(z_q)||^2
keeps the encoder close to the codes it picks. The codebook learns one of two ways:

* ``loss``: the codebook loss ||sg(z) - e_k||^2 pulls each chosen code towards its encoder outputs;
* ``ema`` (the paper's Appendix A.1): each code is the running average of the encoder outputs assigned to it,

      N_k <- g N_k + (1 - g) n_k,    m_k <- g m_k + (1 - g) sum_{i: k(z_i) = k} z_i,    e_k = m_k / N~_k,

  with n_k the batch's count of code k and Laplace smoothing N~_k = (N_k + eps) / (N + K eps) * N (N = sum_k N_k),
  so a rarely used code never divides by a count near zero.

A code left unused for ``restart_after`` consecutive updates is dead: it is re-initialised from a random encoder
output of the current batch (as in Jukebox, Dhariwal et al., 2020), so the codebook stays in use. Losses are means
over the elements of z (one scale whatever D is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CodebookUpdate = Literal["ema", "loss"]


@dataclass
class Quantized:
    """What :meth:`VectorQuantizer.forward` returns for N vectors: ``z_q`` (N, D) with the straight-through gradient,
    the chosen ``codes`` (N,), and the quantiser's ``loss`` (commitment, plus the codebook loss in ``loss`` mode)."""

    z_q: Tensor
    codes: Tensor
    loss: Tensor


def code_perplexity(codes: Tensor, num_codes: int) -> tuple[float, int]:
    """exp(entropy) of the histogram of ``codes`` (K when all K codes are used equally, 1 when one code is), and
    the number of distinct codes used."""
    p = torch.bincount(codes.flatten(), minlength=num_codes).float()
    p = p / p.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float(entropy.exp()), int((p > 0).sum())


class VectorQuantizer(nn.Module):
    """K codes of dimension D; ``forward`` quantises (N, D) vectors, ``update`` learns the codebook (EMA mode) and
    restarts dead codes after each training step."""

    def __init__(self, num_codes: int, dim: int, update: CodebookUpdate = "ema", beta: float = 0.25,
                 decay: float = 0.99, eps: float = 1e-5, restart_after: int = 20) -> None:
        super().__init__()
        self.num_codes, self.dim, self.mode = num_codes, dim, update
        self.beta, self.decay, self.eps, self.restart_after = beta, decay, eps, restart_after
        embed = torch.randn(num_codes, dim)
        if update == "ema":
            self.register_buffer("embed", embed)
            # one pseudo-observation per code: an unused code decays towards nothing but keeps its vector
            self.register_buffer("ema_count", torch.ones(num_codes))
            self.register_buffer("ema_sum", embed.clone())
        else:
            self.embed = nn.Parameter(embed)
        #: consecutive updates each code went unused (a buffer: saved, so a resumed run restarts the same codes)
        self.register_buffer("idle", torch.zeros(num_codes, dtype=torch.long))

    def nearest(self, z: Tensor) -> Tensor:
        """k(z) = argmin_k ||z - e_k||^2 for (N, D) vectors, via ||z||^2 - 2 z.e_k + ||e_k||^2."""
        e = self.embed.detach()
        distances = z.pow(2).sum(1, keepdim=True) - 2 * z @ e.T + e.pow(2).sum(1)
        return distances.argmin(1)

    def lookup(self, codes: Tensor) -> Tensor:
        """Codes (any shape) -> their vectors (shape + (D,))."""
        return F.embedding(codes, self.embed)

    def forward(self, z: Tensor) -> Quantized:
        codes = self.nearest(z.detach())
        e = self.lookup(codes)
        loss = self.beta * F.mse_loss(z, e.detach())
        if self.mode == "loss":
            loss = loss + F.mse_loss(e, z.detach())
        return Quantized(z_q=z + (e - z).detach(), codes=codes, loss=loss)

    @torch.no_grad()
    def update(self, z: Tensor, codes: Tensor) -> None:
        """After a training step on encoder outputs ``z`` (N, D) with their ``codes``: the EMA step (``ema`` mode),
        then dead-code restarts."""
        counts = torch.bincount(codes, minlength=self.num_codes).to(z.dtype)
        if self.mode == "ema":
            sums = torch.zeros_like(self.ema_sum).index_add_(0, codes, z)
            self.ema_count.lerp_(counts, 1 - self.decay)
            self.ema_sum.lerp_(sums, 1 - self.decay)
            total = self.ema_count.sum()
            smoothed = (self.ema_count + self.eps) / (total + self.num_codes * self.eps) * total
            self.embed.copy_(self.ema_sum / smoothed.unsqueeze(1))
        self.idle.add_(1).masked_fill_(counts > 0, 0)
        if self.restart_after:
            dead = (self.idle >= self.restart_after).nonzero().squeeze(1)
            if len(dead):
                self.reinitialise(dead, z[torch.randint(len(z), (len(dead),)).to(z.device)])

    @torch.no_grad()
    def reinitialise(self, which: Tensor, vectors: Tensor) -> None:
        """Set codes ``which`` to ``vectors`` (EMA statistics: one observation of that vector) and mark them used."""
        self.embed.data[which] = vectors
        if self.mode == "ema":
            self.ema_count[which] = 1.0
            self.ema_sum[which] = vectors
        self.idle[which] = 0

    @torch.no_grad()
    def initialise_from(self, z: Tensor) -> None:
        """Data-dependent start: every code set to a distinct random encoder output (drawn with replacement when
        there are fewer outputs than codes)."""
        pick = (torch.randperm(len(z)) if len(z) >= self.num_codes else torch.randint(len(z), (self.num_codes,)))
        self.reinitialise(torch.arange(self.num_codes, device=z.device), z[pick[: self.num_codes].to(z.device)])
