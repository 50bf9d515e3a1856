"""Gaussian mixture model: the classical baseline every deep family is read against.

    p(x) = sum_k pi_k N(x; mu_k, Sigma_k)

fitted by expectation-maximisation (scikit-learn's ``GaussianMixture``) to the whole training split in network units
(images in [-1, 1], vectors standardised). Discrete images are dequantized first (x + delta u, u ~ U(-1/2, 1/2)),
so the mixture is a density whose bins give probabilities over the data's levels, the convention of
:mod:`genzoo.metrics.likelihood`. The number of components K, the covariance form (full or diagonal)
and the regularisation r added to every covariance's diagonal (Sigma_k + r I, which keeps it invertible on small
data) are chosen by the held-out log-likelihood of the validation split over a grid (40 fits of a fraction of a
second each on 8x8 digits); the choice is logged.

The fitted mixture is stored as buffers sized for the largest K of the grid (unused components have weight 0), so
a run directory loads it with no scikit-learn object and nothing pickled.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from genzoo.contract import Batch, Cost, DataInfo, ModelConfig, SampleOptions
from genzoo.models.classical.base import FittedDensity
from genzoo.registry import register


class GMMConfig(ModelConfig):
    components: list[int] = Field([1, 2, 5, 10, 20], min_length=1, description="candidate numbers of components K")
    reg_covar: list[float] = Field([1e-4, 1e-3, 1e-2, 1e-1], min_length=1,
                                   description="candidate values r added to each covariance's diagonal")
    covariance: list[Literal["full", "diag"]] = Field(["full", "diag"], min_length=1,
                                                      description="candidate covariance forms: full or diagonal")
    max_iter: int = Field(200, ge=1, description="EM iterations per fit")


class GMMSampleOptions(SampleOptions):
    temperature: float = Field(1.0, ge=0, allow_inf_nan=False,
                               description="scale of each component's spread (0 = the component means)")


@register
class GaussianMixture(FittedDensity):
    """A Gaussian mixture fitted by EM, K and the covariance regularisation chosen by held-out likelihood."""

    name = "gmm"
    family = "classical"
    Config = GMMConfig
    SampleOptions = GMMSampleOptions
    method = "Gaussian mixture density"
    smoke_config: ClassVar[dict[str, Any]] = {"components": [1, 3], "reg_covar": [1e-2, 1e-1], "max_iter": 50}

    def __init__(self, config: GMMConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        k, d = max(config.components), data.dims
        # before fitting: one standard normal component in network units
        self.register_buffer("weights", torch.nn.functional.one_hot(torch.tensor(0), k).float())
        self.register_buffer("means", torch.zeros(k, d))
        self.register_buffer("scale_tril", torch.zeros(k, d, d))  # unused components stay all zero
        self.scale_tril[0] = torch.eye(d)

    # ----- the density ------------------------------------------------------------------------------------------
    def _mixture(self) -> MixtureSameFamily:
        active = self.weights > 0
        return MixtureSameFamily(Categorical(probs=self.weights[active].double()),
                                 MultivariateNormal(self.means[active].double(),
                                                    scale_tril=self.scale_tril[active].double()))

    def log_density(self, z: Tensor) -> Tensor:
        return self._mixture().log_prob(z)

    # ----- fitting ----------------------------------------------------------------------------------------------
    def fit_whole_data(self, train: Batch, val: Batch, generator: torch.Generator) -> dict[str, float]:
        """EM for every (K, form, r) of the grid; keep the fit with the best held-out log-likelihood."""
        from sklearn.mixture import GaussianMixture as SkMixture
        from threadpoolctl import threadpool_limits

        x_train, x_val = self.network_units(train.x, generator), self.network_units(val.x, generator)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        grid = [(k, form, reg) for k in sorted(set(self.config.components)) if k <= len(x_train)
                for form in self.config.covariance for reg in self.config.reg_covar]
        fits = []
        # numpy's BLAS threads follow torch's (--threads): spinning threads on a shared machine are slower
        with threadpool_limits(limits=torch.get_num_threads()):
            for k, form, reg in grid:
                fit = SkMixture(k, covariance_type=form, reg_covar=reg, max_iter=self.config.max_iter,
                                random_state=seed).fit(x_train)
                fits.append((float(fit.score(x_val)), fit))
        held_out, fit = max(fits, key=lambda pair: pair[0])
        k, form, reg = grid[fits.index((held_out, fit))]
        self._store(fit, k, form)
        return {"components": float(k), "diagonal": float(form == "diag"), "reg_covar": reg,
                "val_bpd": self.held_out_bits_per_dim(val.x, generator)}

    def _store(self, fit: Any, k: int, form: str) -> None:
        covariances = torch.as_tensor(fit.covariances_, dtype=torch.float64)
        if form == "diag":
            covariances = torch.diag_embed(covariances)
        self.weights.zero_()
        self.weights[:k] = torch.as_tensor(fit.weights_, dtype=torch.float32)
        self.means.zero_()
        self.means[:k] = torch.as_tensor(fit.means_, dtype=torch.float32)
        self.scale_tril.zero_()
        self.scale_tril[:k] = torch.linalg.cholesky(covariances).float()

    # ----- sampling ---------------------------------------------------------------------------------------------
    def draw(self, n: int, generator: torch.Generator, options: GMMSampleOptions) -> Tensor:
        """k ~ Categorical(pi), z = mu_k + temperature * L_k eps."""
        component = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=generator)
        eps = self.randn(n, self.data.dims, generator=generator)
        component = component.to(self.device)
        spread = (self.scale_tril[component] @ eps.unsqueeze(-1)).squeeze(-1)
        return self.means[component] + options.temperature * spread

    def cost(self, **options: Any) -> Cost:
        """No network: one triangular matrix-vector product per sample."""
        self.sample_options(**options)
        return Cost(nfe_per_sample=1, flops_per_sample=float(self.data.dims**2))
