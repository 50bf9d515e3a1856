"""``pixelcnn``: PixelCNN (van den Oord et al., 2016, "Pixel Recurrent Neural Networks", section 3.5).

A stack of masked convolutions computes every conditional p(x_{c,i,j} | earlier sub-pixels) of the raster-order
factorisation (:mod:`genzoo.models.autoregressive.pixels`) in one pass:

    f_0 = MaskedConv_A^{k x k}(x),      f_l = f_{l-1} + MaskedConv_B^{1x1}(ReLU(MaskedConv_B^{3x3}(ReLU(f_{l-1})))),

then ReLU, 1x1, ReLU, 1x1 to the output head. Type A at the first layer hides the value being predicted; type B
afterwards lets a colour group read itself (it already carries only earlier information).

Blind spot: a masked 3x3 kernel at (i, j) reads (i-1, j-1 .. j+1) and (i, j-1); composed, the reachable region
widens by one column per layer to the left but never to the right of the column above, so pixels up and to the
right (e.g. (i-1, j+2)) are never seen, however deep the stack. ``gated-pixelcnn`` removes it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field
from torch import Tensor, nn

from genzoo.contract import DataInfo
from genzoo.errors import ConfigError
from genzoo.models.autoregressive.pixels import PixelConfig, PixelModel
from genzoo.nn.masked import MaskedConv2d
from genzoo.registry import register
from genzoo.searchspace import Choice, IntRange, LogUniform, Param, Uniform


class PixelCNNConfig(PixelConfig):
    channels: int = Field(32, ge=1, description="feature channels (rounded up to a multiple of the image channels)")
    layers: int = Field(6, ge=0, description="residual blocks after the first masked convolution")
    first_kernel: int = Field(7, ge=3, description="side of the first (type A) kernel; odd")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout inside each residual block while training")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay on kernels")


class MaskedResidualBlock(nn.Module):
    """f + 1x1_B(ReLU(3x3_B(ReLU(f)))), with dropout before the 1x1."""

    def __init__(self, channels: int, colors: int, dropout: float) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.ReLU(), MaskedConv2d(channels, channels, (3, 3), (1, 1), "B", colors),
                                   nn.ReLU(), nn.Dropout(dropout),
                                   MaskedConv2d(channels, channels, (1, 1), (0, 0), "B", colors))

    def forward(self, f: Tensor) -> Tensor:
        return f + self.block(f)


@register
class PixelCNN(PixelModel):
    """PixelCNN: masked convolutions (type A, then B), categorical or logistic-mixture pixels, exact likelihood."""

    name = "pixelcnn"
    quick_steps = 600
    Config = PixelCNNConfig
    search_space: ClassVar[dict[str, Param]] = {
        "lr": LogUniform(3e-4, 1e-2), "channels": Choice(16, 32, 64), "layers": IntRange(2, 8),
        "dropout": Uniform(0.0, 0.3), "weight_decay": Uniform(0.0, 0.1),
    }
    smoke_config: ClassVar[dict[str, Any]] = {"channels": 8, "layers": 1, "first_kernel": 3}
    train_defaults: ClassVar[dict[str, Any]] = {"batch_size": 64, "eval_every": 100, "grad_clip": 1.0}
    config: PixelCNNConfig

    def __init__(self, config: PixelCNNConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        if config.first_kernel % 2 == 0:
            raise ConfigError(f"first_kernel must be odd (centred on the current pixel), got {config.first_kernel}")
        k, c, width = config.first_kernel, self.colors, self.colour_width(config.channels)
        self.first = MaskedConv2d(c, width, (k, k), (k // 2, k // 2), "A", c)
        self.blocks = nn.Sequential(*(MaskedResidualBlock(width, c, config.dropout) for _ in range(config.layers)))
        self.output = self.build_output(width)

    def features(self, x: Tensor) -> Tensor:
        return self.output(self.blocks(self.first(x)))
