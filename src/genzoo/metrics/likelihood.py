"""Likelihood in one convention: negative log-likelihood in nats per example and bits per dimension.

Discrete data in [0, 1] with L levels sits on the grid k / (L - 1); each value owns the bin of width
delta = 1 / (L - 1) centred on it. A model of discrete values reports log P(x) directly. A continuous density p on
such data is turned into probabilities of the bins by uniform dequantization (Theis et al., 2016): with
u ~ U(-1/2, 1/2)^D,

    log P(x) = log integral_bin p  >=  E_u[log p(x + delta u)] + D log delta  =  E_u[log p(x + delta u)] - D log(L - 1)

by Jensen's inequality, so the dequantized value is a lower bound on log P(x) (an exact density gives a bound, a
lower bound stays one, an upper bound becomes an estimate). Bits/dim = NLL / (D ln 2). Continuous data
(``levels=None``) keeps the density: its "bits/dim" is a differential quantity and can be negative.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genzoo.contract import LogLikelihood
from genzoo.errors import GenzooError

# what Jensen's inequality does to each kind of value when a density is dequantized
_DEQUANTIZED_KIND = {"exact": "lower_bound", "lower_bound": "lower_bound", "upper_bound": "estimate",
                     "estimate": "estimate"}


def dequantize(x: Tensor, levels: int, generator: torch.Generator) -> Tensor:
    """x + delta u with u ~ U(-1/2, 1/2) per value and delta = 1 / (levels - 1): a uniform draw from x's bin."""
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype)
    return x + (u - 0.5).to(x.device) / (levels - 1)


def to_discrete(ll: LogLikelihood, dims: int, levels: int | None, dequantized: bool) -> LogLikelihood:
    """Express ``ll`` as log-probabilities of the data's levels when the data is discrete.

    ``dequantized`` says whether a density ``ll`` was evaluated at dequantized points (then it becomes a lower
    bound on log P); evaluated on the grid itself it is only an estimate.
    """
    if ll.discrete or levels is None:
        return ll
    if levels < 2:
        raise GenzooError(f"discrete data needs at least 2 levels, got {levels}")
    kind = _DEQUANTIZED_KIND[ll.kind] if dequantized else "estimate"
    values = ll.values - dims * math.log(levels - 1)
    return LogLikelihood(values, kind, True, f"{ll.method} + uniform dequantization (bin width 1/{levels - 1})")


def likelihood_summary(ll: LogLikelihood, dims: int) -> dict[str, object]:
    """Mean NLL in nats/example and bits/dim, with the kind of value (in log-likelihood terms) and how computed.

    A -inf or NaN value makes the NLL infinite: dropping it would score a model that gives some test points
    probability zero better than one that does not. ``nonfinite`` counts those values.
    """
    values = ll.values.detach().double().flatten().cpu()
    if not len(values):
        raise GenzooError(f"no log-likelihood values to summarise ({ll.method})")
    nonfinite = int((~torch.isfinite(values)).sum())
    nll = math.inf if bool((values.isnan() | (values == -math.inf)).any()) else float(-values.mean())
    return {
        "nll_nats": nll,
        "bits_per_dim": nll / (dims * math.log(2.0)),
        "kind": ll.kind,
        "discrete": ll.discrete,
        "method": ll.method,
        "n": len(values),
        "nonfinite": nonfinite,
    }
