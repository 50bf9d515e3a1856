"""``scenes:``: procedurally drawn captioned images whose match with their caption is checked by code.

A scene is one to three shapes on black, each with a size, a colour and a shape, and its caption states all of
them in one of three forms (a fixed grammar, so :func:`parse` is exact and ``caption(parse(c)) == c``):

* one object: ``"a small red circle"``;
* two objects and where the first is: ``"a large blue square left of a small yellow triangle"``;
* a count of identical objects: ``"three small green squares"``.

Drawing: a shape of side ``s`` (odd, ``SIDES`` times the image side) fills the pixels of an ``s x s`` box that lie
inside the circle, square or upward triangle inscribed in it, so every shape touches all four sides of its box;
boxes never touch (1 px apart). Colours are pure palette colours, so every pixel is exactly 0 or 1 (2 levels). The
relation of object A to B is the axis on which their centres differ most: A is *above* B when
``(y_B - y_A) > |x_B - x_A|``; scenes are placed so that it holds strictly.

Checking (:func:`detect`, :func:`judge`): each pixel takes its nearest palette colour (or the black background);
each connected region of one colour with at least ``MIN_AREA_FRACTION`` of a small shape's box is an object, its
shape the inscribed shape of its bounding box that overlaps it best (intersection over union), its size the nearer
of the two sides, its position the box centre. On drawn images this recovers the scene exactly; on generated ones
it is the judge of caption accuracy.

Options: ``scenes:#n=20000,image_size=48,caption=tokens`` (``n`` scenes, default 5,000, cut 80/10/10; 32x32 by
default; the caption form as for every captioned dataset, see :mod:`genzoo.data.captions`). Scenes are drawn from
:data:`SCENES_SEED`, so the same options give the same data on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from genzoo.data.base import SPLITS, split_tensors
from genzoo.data.captions import CAPTION_OPTIONS, CaptionDataset, caption_dataset
from genzoo.data.specs import DataOptions, register_loader
from genzoo.errors import DataError

SCENES_SEED = 20261219
DEFAULT_SCENES = 5000
DEFAULT_SIZE = 32
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "yellow": (1, 1, 0), "cyan": (0, 1, 1),
    "magenta": (1, 0, 1),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
#: side of a shape's box as a fraction of the image side (rounded to an odd number of pixels)
SIDES = {"small": 0.22, "large": 0.36}
SIZES = tuple(SIDES)
MIN_SIDE = 5
RELATIONS = ("above", "below", "left of", "right of")
NUMBERS = {"two": 2, "three": 3}
#: every word a caption can use (the token vocabulary of ``caption=tokens``, whatever ``n``)
VOCABULARY = ["a", *NUMBERS, *SIZES, *COLOURS, *SHAPES, *(s + "s" for s in SHAPES),
              *dict.fromkeys(w for r in RELATIONS for w in r.split())]
#: a region smaller than this share of a small shape's box is noise, not an object
MIN_AREA_FRACTION = 0.25


@dataclass(frozen=True, order=True)
class Thing:
    size: str
    colour: str
    shape: str

    def words(self, plural: bool = False) -> str:
        return f"{self.size} {self.colour} {self.shape}{'s' if plural else ''}"


@dataclass(frozen=True)
class Scene:
    """One object; two objects with ``relation`` (of the first to the second); or 2-3 identical objects."""

    things: tuple[Thing, ...]
    relation: str | None = None


# ----- caption <-> scene ---------------------------------------------------------------------------------------------
def caption(scene: Scene) -> str:
    """The scene's caption in the fixed grammar."""
    first = scene.things[0]
    if len(scene.things) == 1:
        return f"a {first.words()}"
    if scene.relation is not None:
        return f"a {first.words()} {scene.relation} a {scene.things[1].words()}"
    number = next(word for word, k in NUMBERS.items() if k == len(scene.things))
    return f"{number} {first.words(plural=True)}"


def _thing(words: list[str], text: str, plural: bool = False) -> Thing:
    if len(words) != 3:
        raise DataError(f"caption {text!r}: expected 'SIZE COLOUR SHAPE', got {' '.join(words)!r}")
    size, colour, shape = words
    shape = shape.removesuffix("s") if plural else shape
    for word, known, what in ((size, SIZES, "size"), (colour, COLOURS, "colour"), (shape, SHAPES, "shape")):
        if word not in known:
            raise DataError(f"caption {text!r}: unknown {what} '{word}' (known: {', '.join(known)})")
    return Thing(size, colour, shape)


def parse(text: str) -> Scene:
    """The scene a caption describes; a :class:`DataError` naming the problem if it is not in the grammar."""
    words = text.split()
    if len(words) == 4 and words[0] in NUMBERS:
        if not words[3].endswith("s"):
            raise DataError(f"caption {text!r}: a count needs a plural shape ('{words[3]}s')")
        return Scene((_thing(words[1:], text, plural=True),) * NUMBERS[words[0]])
    if not words or words[0] != "a":
        raise DataError(f"caption {text!r}: must start with 'a' or a count ({', '.join(NUMBERS)})")
    first = _thing(words[1:4], text)
    rest = words[4:]
    if not rest:
        return Scene((first,))
    relation = next((r for r in RELATIONS if rest[: len(r.split())] == r.split()), None)
    if relation is None:
        raise DataError(f"caption {text!r}: expected a relation ({', '.join(RELATIONS)}) after the first object")
    rest = rest[len(relation.split()):]
    if not rest or rest[0] != "a":
        raise DataError(f"caption {text!r}: expected 'a SIZE COLOUR SHAPE' after '{relation}'")
    return Scene((first, _thing(rest[1:], text)), relation)


# ----- geometry shared by drawer and checker -------------------------------------------------------------------------
def side(size: str, image_size: int) -> int:
    """Pixels of a shape's box: ``SIDES[size]`` of the image side, odd (so a triangle has one apex pixel), at least
    ``MIN_SIDE`` (smaller boxes cannot tell a circle from a square) and large ones 2 more than small ones."""
    odd = max(MIN_SIDE, 2 * round((SIDES[size] * image_size - 1) / 2) + 1)
    return odd if size == "small" else max(odd, side("small", image_size) + 2)


def shape_mask(shape: str, height: int, width: int) -> np.ndarray:
    """The pixels of a ``height x width`` box inside the inscribed circle (ellipse), square or apex-up triangle."""
    v = (np.arange(height)[:, None] + 0.5) / height  # 0 at the top edge, 1 at the bottom
    u = (np.arange(width)[None, :] + 0.5) / width
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "square":
        return np.ones((height, width), dtype=bool)
    return np.abs(u - 0.5) <= v / 2 + 0.25 / width  # half-width grows from the apex to the base


def relation_between(a: tuple[float, float], b: tuple[float, float]) -> str | None:
    """Where centre ``a`` = (x, y) is relative to ``b``, on the axis where they differ most; None on a tie."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    if abs(dx) == abs(dy):
        return None
    if abs(dy) > abs(dx):
        return "above" if dy > 0 else "below"
    return "left of" if dx > 0 else "right of"


# ----- drawing ------------------------------------------------------------------------------------------------------
Box = tuple[int, int, int]  # x0, y0, side


def _centre(box: Box) -> tuple[float, float]:
    return box[0] + (box[2] - 1) / 2, box[1] + (box[2] - 1) / 2


def _apart(a: Box, b: Box) -> bool:
    """Boxes with at least one background pixel between them."""
    return a[0] + a[2] < b[0] or b[0] + b[2] < a[0] or a[1] + a[2] < b[1] or b[1] + b[2] < a[1]


def place(scene: Scene, image_size: int, rng: np.random.Generator, tries: int = 200) -> list[Box]:
    """Boxes for the scene's objects: inside the image, apart, and in the stated relation (each box drawn until it
    fits with the earlier ones; the whole scene again when one never does)."""
    sides = [side(t.size, image_size) for t in scene.things]
    for _ in range(tries if max(sides) <= image_size else 0):
        boxes: list[Box] = []
        for s in sides:
            for _ in range(tries):
                box = (int(rng.integers(0, image_size - s + 1)), int(rng.integers(0, image_size - s + 1)), s)
                if all(_apart(box, other) for other in boxes):
                    boxes.append(box)
                    break
        if len(boxes) == len(sides) and (
                scene.relation is None or relation_between(_centre(boxes[0]), _centre(boxes[1])) == scene.relation):
            return boxes
    raise DataError(f"cannot place '{caption(scene)}' in a {image_size}x{image_size} image; use a larger image_size")


def draw(scene: Scene, boxes: list[Box], image_size: int) -> np.ndarray:
    """The scene as a float32 (3, H, W) image in {0, 1}."""
    image = np.zeros((3, image_size, image_size), dtype=np.float32)
    for thing, (x0, y0, s) in zip(scene.things, boxes, strict=True):
        mask = shape_mask(thing.shape, s, s)
        for channel, value in enumerate(PALETTE[thing.colour]):
            image[channel, y0 : y0 + s, x0 : x0 + s][mask] = value
    return image


def random_scene(rng: np.random.Generator) -> Scene:
    """One of the three caption forms with equal chance; every attribute uniform."""
    thing = lambda: Thing(str(rng.choice(SIZES)), str(rng.choice(COLOURS)), str(rng.choice(SHAPES)))  # noqa: E731
    form = int(rng.integers(3))
    if form == 0:
        return Scene((thing(),))
    if form == 1:
        first, second = thing(), thing()
        while second == first:  # two identical objects are a count, not a relation
            second = thing()
        return Scene((first, second), str(rng.choice(RELATIONS)))
    return Scene((thing(),) * int(rng.integers(2, 4)))


def make_scenes(n: int, image_size: int = DEFAULT_SIZE, seed: int = SCENES_SEED) -> tuple[np.ndarray, list[str]]:
    """``n`` drawn scenes (float32 [n, 3, H, W]) and their captions, the same for the same arguments."""
    rng = np.random.default_rng(seed)
    images, texts = np.zeros((n, 3, image_size, image_size), dtype=np.float32), []
    for i in range(n):
        scene = random_scene(rng)
        images[i] = draw(scene, place(scene, image_size, rng), image_size)
        texts.append(caption(scene))
    return images, texts


# ----- checking -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Found:
    """An object seen in an image: its attributes and box centre (x, y)."""

    thing: Thing
    centre: tuple[float, float]


def detect(image: np.ndarray | torch.Tensor) -> list[Found]:
    """The objects of a (3, H, W) image in [0, 1]: palette segmentation, then shape, size and centre per region."""
    image = np.asarray(torch.as_tensor(image, dtype=torch.float32).cpu())
    image_size = image.shape[-1]
    colours = np.array([(0.0, 0.0, 0.0), *PALETTE.values()], dtype=np.float32)  # index 0: background
    nearest = ((image[None] - colours[:, :, None, None]) ** 2).sum(1).argmin(0)
    small, large = side("small", image_size), side("large", image_size)
    found = []
    for k, colour in enumerate(COLOURS, start=1):
        regions, _ = ndimage.label(nearest == k)
        for label, slices in enumerate(ndimage.find_objects(regions), start=1):
            region = regions[slices] == label  # only this region, not a neighbour reaching into its box
            if region.sum() < MIN_AREA_FRACTION * small * small:
                continue
            h, w = region.shape
            iou = {s: (region & shape_mask(s, h, w)).sum() / (region | shape_mask(s, h, w)).sum() for s in SHAPES}
            size = "small" if max(h, w) < (small + large) / 2 else "large"
            centre = (slices[1].start + (w - 1) / 2, slices[0].start + (h - 1) / 2)
            found.append(Found(Thing(size, colour, max(iou, key=iou.get)), centre))
    return found


def judge(scene: Scene, found: list[Found]) -> dict[str, bool | None]:
    """Which attributes of ``scene`` the detected objects match: ``count``; ``colour``, ``shape`` and ``size`` (the
    multiset over objects); ``relation`` (two-object scenes only, else None: some pair of objects matching the first
    and second object fully stands in the stated relation); ``all`` (every object exactly, and the relation)."""
    want, got = scene.things, [f.thing for f in found]
    same = lambda attr: sorted(getattr(t, attr) for t in want) == sorted(getattr(t, attr) for t in got)  # noqa: E731
    relation = None
    if scene.relation is not None:
        relation = any(a.thing == want[0] and b.thing == want[1]
                       and relation_between(a.centre, b.centre) == scene.relation
                       for a in found for b in found if a is not b)
    objects = sorted(want) == sorted(got)
    return {"count": len(got) == len(want), "colour": same("colour"), "shape": same("shape"), "size": same("size"),
            "relation": relation, "all": objects and relation is not False}


def check(image: np.ndarray | torch.Tensor, text: str) -> dict[str, bool | None]:
    """:func:`judge` of the image's detected objects against the caption's scene."""
    return judge(parse(text), detect(image))


def caption_accuracy(images: torch.Tensor, texts: list[str]) -> dict[str, float]:
    """Share of images matching their caption per attribute (``relation`` over two-object captions only) and in
    ``all`` attributes, named ``caption_<attribute>_accuracy``."""
    if len(images) != len(texts):
        raise DataError(f"{len(images)} images for {len(texts)} captions")
    verdicts = [check(image, text) for image, text in zip(images, texts, strict=True)]
    out = {}
    for key in ("colour", "shape", "size", "count", "relation", "all"):
        values = [v[key] for v in verdicts if v[key] is not None]
        if values:
            out[f"caption_{key}_accuracy"] = sum(values) / len(values)
    return out


# ----- the loader ---------------------------------------------------------------------------------------------------
@register_loader("scenes", "scenes[:][#n=5000,image_size=32,caption=embedding|tokens|none]  drawn shapes with "
                 "exact captions ('a small red circle above a large blue square'), checkable by code",
                 options=("n", *CAPTION_OPTIONS), path_arg=False)
def load_scenes(arg: str | None, options: DataOptions) -> CaptionDataset:
    if arg:
        raise DataError(f"'scenes' takes no argument, got 'scenes:{arg}' (options go after #: scenes:#n=20000)")
    n, image_size = options.n or DEFAULT_SCENES, options.image_size or DEFAULT_SIZE
    images, texts = make_scenes(n, image_size)
    parts = split_tensors(torch.from_numpy(images), torch.arange(n))
    split_images = {split: part.x for split, part in zip(SPLITS, parts, strict=True)}
    captions = {split: [texts[i] for i in part.y.tolist()] for split, part in zip(SPLITS, parts, strict=True)}
    extra = {"scenes": {"n": n, "image_size": image_size, "seed": SCENES_SEED}}
    return caption_dataset(split_images, captions, options, levels=2, extra=extra, vocabulary=VOCABULARY)
