"""Built-in unpaired image pairs whose true mapping is known: ``pair:digits-thick``.

Domain A is scikit-learn's 8x8 digits; domain B the same digits stroke-thickened by a grey-level dilation with the
3x3 cross (plus-shaped) structuring element,

    thick(a)[i, j] = max(a[i, j], a[i-1, j], a[i+1, j], a[i, j-1], a[i, j+1])    (outside the image: 0),

a maximum of grey levels, so B stays on the digits' 17-level grid. The training split of B is
``thick(A_train)`` in a derangement of A's order (no position holds the thickened version of the A example at
that position; the pair dataset draws B's batches in its own order besides), so training is unpaired. The
validation and test splits keep the alignment, ``B_test[i] = thick(A_test[i])``, and the dataset says so with
``info.extra["aligned_heldout"] = True``: a translation model can then be scored against the known mapping
(``task_metrics``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from genzoo.contract import Batch
from genzoo.data.base import SPLIT_SEED, TensorDataset
from genzoo.data.images import load_digits
from genzoo.data.pair import PairedDataset
from genzoo.data.specs import DataOptions, register_loader
from genzoo.errors import DataError


def thicken(x: Tensor) -> Tensor:
    """Grey-level dilation of (N, C, H, W) images by the 3x3 cross: each pixel becomes the maximum of itself and
    its four edge neighbours (zero outside the image)."""
    p = F.pad(x, (1, 1, 1, 1))
    centre, up, down = p[..., 1:-1, 1:-1], p[..., :-2, 1:-1], p[..., 2:, 1:-1]
    left, right = p[..., 1:-1, :-2], p[..., 1:-1, 2:]
    return torch.stack([centre, up, down, left, right]).amax(0)


#: the built-in pairs: name -> (domain A loader, the known A -> B mapping)
PAIRS: dict[str, tuple[Callable[[], TensorDataset], Callable[[Tensor], Tensor]]] = {
    "digits-thick": (lambda: load_digits(None, DataOptions()), thicken),
}


def derangement(n: int, generator: torch.Generator) -> Tensor:
    """A random permutation of 0..n-1 with no fixed point (n >= 2): a random order, each position sent to the
    next in it."""
    order = torch.randperm(n, generator=generator)
    sigma = torch.empty(n, dtype=torch.long)
    sigma[order] = order.roll(-1)
    return sigma


def unpaired_pair(a: TensorDataset, mapping: Callable[[Tensor], Tensor], name: str) -> PairedDataset:
    """Domain ``a`` and domain B = ``mapping(a)``: the training split of B deranged (unpaired), the held-out splits
    aligned position by position (declared in ``extra["aligned_heldout"]``)."""
    sigma = derangement(len(a.train), torch.Generator().manual_seed(SPLIT_SEED))
    b_train = Batch(mapping(a.train.x[sigma]), None if a.train.y is None else a.train.y[sigma])
    b_val, b_test = (Batch(mapping(s.x), s.y) for s in (a.val, a.test))
    b = TensorDataset(replace(a.info, spec=name), b_train, b_val, b_test)
    pair = PairedDataset(a, b)
    pair.info = replace(pair.info, extra={**pair.info.extra, "aligned_heldout": True, "pair": name})
    return pair


@register_loader("pair", "pair:digits-thick  unpaired translation: digits (A) and the same digits stroke-thickened "
                 "by a 3x3-cross dilation (B); held-out splits aligned", path_arg=False)
def load_pair(arg: str | None, options: DataOptions) -> PairedDataset:
    if arg not in PAIRS:
        raise DataError(f"unknown built-in pair 'pair:{arg or ''}' (known: "
                        f"{', '.join(f'pair:{name}' for name in PAIRS)})")
    if options.image_size:
        raise DataError(f"pair:{arg} is defined at its own size; --image-size does not apply to it")
    load_a, mapping = PAIRS[arg]
    return unpaired_pair(load_a(), mapping, f"pair:{arg}")
