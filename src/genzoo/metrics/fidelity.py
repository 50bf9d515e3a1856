"""Full-reference image fidelity: PSNR and SSIM of an image against the true one (super-resolution, restoration).

PSNR = 10 log10(L^2 / MSE) in dB for the data range L (1 for images in [0, 1]).

SSIM (Wang et al., 2004), per channel, averaged over the positions of a Gaussian window w (sigma = 1.5) slid over
the image without padding ("valid" positions) and over the channels:

    SSIM(x, y) = mean [(2 mu_x mu_y + C1)(2 s_xy + C2)] / [(mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)],

mu = w * x, s_x^2 = w * x^2 - mu_x^2, s_xy = w * (x y) - mu_x mu_y, C1 = (0.01 L)^2, C2 = (0.03 L)^2: the
standard constants and window of the paper and of scikit-image's ``gaussian_weights=True, use_sample_covariance=
False``. The window is 11 x 11; an image with a side below 11 gets the largest odd window that fits (7 x 7 on
8 x 8 digits), so the numbers on tiny images are SSIM at that window size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from genzoo.errors import GenzooError

#: side of the SSIM window on images large enough for it, and the standard deviation of its Gaussian weights
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def _check(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise GenzooError(f"image fidelity compares two (N, C, H, W) batches of one shape, got {tuple(x.shape)} and "
                          f"{tuple(y.shape)}")


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio of each image of ``x`` against ``y`` in dB, (N,); +inf where they are equal."""
    _check(x, y)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(data_range**2 / mse)).float()


def gaussian_window(size: int, sigma: float = SSIM_SIGMA) -> Tensor:
    """(size, size) Gaussian weights summing to 1 (float64)."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(offsets**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Structural similarity of each image of ``x`` against ``y``, (N,), in [-1, 1]; 1 for identical images."""
    _check(x, y)
    side = min(SSIM_WINDOW, *x.shape[-2:])
    side -= 1 - side % 2  # an odd window, so it has a centre
    channels = x.shape[1]
    window = gaussian_window(side).to(x.device).expand(channels, 1, side, side)
    x, y = x.double(), y.double()

    def local_mean(z: Tensor) -> Tensor:
        return F.conv2d(z, window, groups=channels)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x, var_y = local_mean(x * x) - mu_x**2, local_mean(y * y) - mu_y**2
    cov = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.flatten(1).mean(1).float()
