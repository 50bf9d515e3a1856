"""``gated-pixelcnn``: the gated PixelCNN (van den Oord et al., 2016, "Conditional Image Generation with PixelCNN
Decoders").

Two stacks replace PixelCNN's masked k x k convolutions (:class:`genzoo.nn.masked.GatedLayer`):

    vertical   v_l = tanh(W_f * v) . sigmoid(W_g * v)                      over the rows up to the current one
    horizontal h_l = h + 1x1(tanh(.) . sigmoid(.) of H * h + 1x1(shift_down(W * v)))   over the row, left of here

The vertical stack's field is a rectangle of rows above, so nothing up and to the right is missed (no blind spot),
and its shift by one row keeps the current row out; the horizontal stack covers the current row to the left, and
its masks order the colour channels inside the pixel. The multiplicative gates replace ReLUs (they model
interactions the original PixelCNN lacked, matching PixelRNN). The horizontal stack then goes through ReLU, 1x1,
ReLU, 1x1 to the output head (:mod:`genzoo.models.autoregressive.pixels`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field
from torch import Tensor, nn

from genzoo.contract import DataInfo
from genzoo.errors import ConfigError
from genzoo.models.autoregressive.pixels import PixelConfig, PixelModel
from genzoo.nn.masked import GatedLayer
from genzoo.registry import register


class GatedPixelCNNConfig(PixelConfig):
    channels: int = Field(32, ge=1, description="feature channels of each stack (rounded up to a multiple of the "
                          "image channels)")
    layers: int = Field(6, ge=1, description="gated layers (the first reads the image)")
    kernel: int = Field(3, ge=3, description="width k of the stacks' kernels (vertical (k//2+1) x k, horizontal "
                        "1 x (k//2+1)); odd")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout on the horizontal stack while training")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay on kernels")


@register
class GatedPixelCNN(PixelModel):
    """Gated PixelCNN: vertical + horizontal stacks with gated activations (no blind spot), exact likelihood."""

    name = "gated-pixelcnn"
    quick_steps = 400
    Config = GatedPixelCNNConfig
    smoke_config: ClassVar[dict[str, Any]] = {"channels": 8, "layers": 2}
    train_defaults: ClassVar[dict[str, Any]] = {"batch_size": 64, "eval_every": 100, "grad_clip": 1.0}
    config: GatedPixelCNNConfig

    def __init__(self, config: GatedPixelCNNConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        if config.kernel % 2 == 0:
            raise ConfigError(f"kernel must be odd (centred on the current column), got {config.kernel}")
        c, width = self.colors, self.colour_width(config.channels)
        self.layers = nn.ModuleList(
            GatedLayer(c if first else width, width, config.kernel, c, first, config.dropout)
            for first in [True] + [False] * (config.layers - 1))
        self.output = self.build_output(width)

    def features(self, x: Tensor) -> Tensor:
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h)
        return self.output(h)
