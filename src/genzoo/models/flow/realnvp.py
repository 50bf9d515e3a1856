"""Real NVP (Dinh et al., 2017): affine couplings, checkerboard and channel masks, squeezes, multi-scale.

Real NVP's layers are affine couplings y = m x + (1 - m)(x exp(s(m x)) + t(m x)) (log-scale soft-clamped,
s = c tanh(raw / c)). Images: at every scale but the last, 3 couplings with alternating checkerboard masks, a
squeeze (C, H, W) -> (4C, H/2, W/2), 3 couplings with alternating channel masks, then half of the channels are
factored out to the latent; the last scale has 4 checkerboard couplings. Vectors: ``couplings`` couplings with
alternating masks over the entries. Coupling networks are small conv nets (3x3, ``depth`` 1x1, 3x3; images) or
MLPs (vectors) whose last layer starts at zero, so training starts from the identity. A checkerboard coupling's
network sees the image through a squeeze (the four pixels of each 2x2 block as channels): the same receptive field
on a quarter of the positions, so that every convolution of a scale runs at half its resolution.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from genzoo.contract import (
    DataKind,
)
from genzoo.errors import ConfigError
from genzoo.models.flow.base import FLOW_TRAIN_DEFAULTS, FlowConfig, FlowModel
from genzoo.nn.flow import (
    FlowLayer,
    FlowSequential,
    MultiScale,
    Shape,
    Squeeze,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
)
from genzoo.registry import register
from genzoo.searchspace import Choice, LogUniform, Param, Uniform


class RealNVPConfig(FlowConfig):
    scales: int = Field(2, ge=1, description="images: scales of the multi-scale architecture")
    couplings: int = Field(8, ge=1, description="vectors: coupling layers (alternating masks)")


@register
class RealNVP(FlowModel):
    """Real NVP: affine couplings with checkerboard and channel masks, squeezes and multi-scale factor-out."""

    name = "realnvp"
    quick_steps = 800
    Config = RealNVPConfig
    search_space: ClassVar[dict[str, Param]] = {
        "lr": LogUniform(1e-4, 5e-3), "hidden": Choice(32, 48, 64), "dropout": Uniform(0.0, 0.3),
        "weight_decay": LogUniform(1e-6, 1e-2),
    }
    smoke_config: ClassVar[dict[str, Any]] = {"hidden": 8, "mlp_width": 8, "couplings": 4}
    train_defaults: ClassVar[dict[str, Any]] = FLOW_TRAIN_DEFAULTS
    config: RealNVPConfig

    def build_flow(self) -> FlowLayer:
        if self.data.kind is DataKind.VECTOR:
            dims = self.data.dims
            return FlowSequential(self.coupling(alternating_mask(dims, i % 2), (dims,))
                                  for i in range(self.config.couplings))
        shape = self._check_size(self.data.shape)
        levels = []
        for scale in range(self.config.scales):
            last = scale == self.config.scales - 1
            layers: list[FlowLayer] = [self.coupling(checkerboard_mask(shape, i % 2), shape, squeezed=True)
                                       for i in range(4 if last else 3)]
            if not last:
                layers.append(Squeeze())
                shape = layers[-1].output_shape(shape)
                layers += [self.coupling(channel_mask(shape, i % 2), shape) for i in range(3)]
                shape = (shape[0] - shape[0] // 2, *shape[1:])  # the kept half goes on to the next scale
            levels.append(FlowSequential(layers))
        return MultiScale(levels, self.data.shape)

    def _check_size(self, shape: Shape) -> Shape:
        """S - 1 squeezes between the scales, and one more inside the last scale's coupling networks."""
        _, height, width = shape
        factor = 2**self.config.scales
        if height % factor or width % factor:
            raise ConfigError(f"realnvp with scales={self.config.scales} halves the image sides "
                              f"{self.config.scales} times: they must be divisible by {factor}, got {height}x{width}: "
                              "use fewer scales (--set scales=...) or resize the images")
        return shape
