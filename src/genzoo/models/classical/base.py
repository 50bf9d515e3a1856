"""What the classical density baselines share: fitted in one call, a density in network units, the likelihood
convention of :mod:`genzoo.metrics.likelihood`, and samples snapped to the data's levels.

A subclass fits itself in :meth:`fit_whole_data`, gives its log-density of network-unit points in
:meth:`log_density` and draws network-unit points in :meth:`draw`. Discrete images are dequantized before fitting
and scoring (x + delta u, u ~ U(-1/2, 1/2), delta = 1/(L-1)), so the density's bins give probabilities over the
levels:

    log P(x) >= E_u[log p(x + delta u)] - D log(L - 1)

which is what ``genzoo eval`` reports; validation reports the same number (``val_bpd``), so the best checkpoint is
chosen by what is reported.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from genzoo.contract import Batch, Capability, DataKind, GenerativeModel, LogLikelihood
from genzoo.metrics import dequantize, to_discrete


class FittedDensity(GenerativeModel):
    """Base of the classical baselines: a density fitted to the whole training split in one call."""

    data_kinds = frozenset({DataKind.IMAGE, DataKind.VECTOR})
    base_capabilities = frozenset({Capability.SAMPLE, Capability.EXACT_LIKELIHOOD})
    validation_metric = "val_bpd"
    fits_whole_data = True
    #: how the log-likelihood was computed (``LogLikelihood.method``)
    method: ClassVar[str]

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}  # fitted in one call, no gradient steps

    def num_parameters(self) -> int:
        """The fitted numbers in use (non-zero entries of the saved buffers): not trainable parameters, but what the
        model's size is."""
        return sum(int(torch.count_nonzero(b)) for b in self.state_dict().values())

    def log_density(self, z: Tensor) -> Tensor:
        """log p(z) of (B, D) points in network units, float64."""
        raise NotImplementedError

    def draw(self, n: int, generator: torch.Generator, options: Any) -> Tensor:
        """``n`` points (n, D) in network units."""
        raise NotImplementedError

    # ----- the likelihood convention ----------------------------------------------------------------------------
    def levels(self) -> int | None:
        """The discrete levels of image data (None for vectors: their density stays a density)."""
        return self.data.levels if self.data.kind is DataKind.IMAGE else None

    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> LogLikelihood:
        """log p(x) in data units: the log-density of preprocess(x) plus the preprocessing log-det."""
        z = self.preprocess(x.to(self.device)).reshape(len(x), -1)
        values = self.log_density(z.double()) + self.preprocess_log_det()
        return LogLikelihood(values.float(), "exact", discrete=False, method=self.method)

    def dequantized(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """x with uniform noise within its level's bin (unchanged for vectors)."""
        levels = self.levels()
        return dequantize(x, levels, generator) if levels else x

    def bits_per_dim(self, log_p: Tensor) -> float:
        """Mean bits/dim of densities ``log_p`` of dequantized points, as probabilities of the levels (the
        conversion ``genzoo eval`` applies, :func:`genzoo.metrics.to_discrete`)."""
        ll = to_discrete(LogLikelihood(log_p.double(), "exact", False, self.method), self.data.dims, self.levels(),
                         dequantized=True)
        return float(ll.bits_per_dim(self.data.dims).mean())

    def held_out_bits_per_dim(self, x: Tensor, generator: torch.Generator) -> float:
        """Held-out bits/dim in the evaluation convention (dequantized probabilities of the levels)."""
        return self.bits_per_dim(self.log_likelihood(self.dequantized(x, generator)).values)

    def network_units(self, x: Tensor, generator: torch.Generator) -> np.ndarray:
        """Examples as dequantized, flattened network-unit points (float64 numpy) for a fitting library."""
        return self.preprocess(self.dequantized(x, generator)).reshape(len(x), -1).double().cpu().numpy()

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        return {"val_bpd": self.held_out_bits_per_dim(batch.x, generator)}

    # ----- sampling ---------------------------------------------------------------------------------------------
    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, options: Any) -> Tensor:
        """Draw in network units, carry back to data units; images are snapped to the data's levels."""
        x = self.postprocess(self.draw(n, generator, options).reshape(n, *self.data.shape))
        levels = self.levels()
        return (x * (levels - 1)).round() / (levels - 1) if levels else x
