"""Image datasets: scikit-learn's digits, MNIST IDX files, folders of PNG/JPEG images.

Every image dataset holds float (C, H, W) tensors in [0, 1] and says how many discrete values a pixel channel
takes (``DataInfo.levels``): 17 for sklearn digits, 256 for 8-bit files, 2 for binary data, None when continuous.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import struct
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from genzoo.contract import Batch, DataInfo, DataKind
from genzoo.data.base import SPLIT_SEED, TensorDataset, split_tensors
from genzoo.data.specs import IMAGE_OPTIONS, DataOptions, register_loader
from genzoo.errors import DataError
from genzoo.io import atomic_write_bytes, cache_dir

log = logging.getLogger(__name__)


def resize_images(x: Tensor, size: int, levels: int | None) -> tuple[Tensor, int | None]:
    """Resize (N, C, H, W) images in [0, 1] to ``size`` x ``size`` (bilinear, antialiased when shrinking).

    Interpolated pixels fall between the original levels, so the result is re-quantised: binary images are
    thresholded at 1/2 (they stay binary), other discrete images are rounded to 256 levels, continuous ones stay
    continuous. Returns the images and their new number of levels.
    """
    if tuple(x.shape[-2:]) == (size, size):
        return x, levels
    out = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                          antialias=True).clamp(0.0, 1.0)
    if levels == 2:
        return (out >= 0.5).float(), 2
    if levels is None:
        return out, None
    return (out * 255).round() / 255, 256


def _image_info(x: Tensor, levels: int | None, class_names: tuple[str, ...] | None) -> DataInfo:
    return DataInfo(kind=DataKind.IMAGE, shape=tuple(x.shape[1:]), levels=levels,
                    num_classes=len(class_names) if class_names else None, class_names=class_names)


@register_loader("digits", "digits[#binarize]  scikit-learn's 8x8 handwritten digits (17 grey levels, 10 classes; "
                 "binarize: thresholded at 1/2)", options=IMAGE_OPTIONS)
def load_digits(arg: str | None, options: DataOptions) -> TensorDataset:
    if arg:
        raise DataError(f"'digits' takes no argument, got 'digits:{arg}'")
    from sklearn.datasets import load_digits as sk_digits

    raw = sk_digits()
    x = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0  # 0..16 -> [0, 1], 17 levels
    y = torch.tensor(raw.target, dtype=torch.long)
    levels: int | None = 17
    if options.image_size:
        x, levels = resize_images(x, options.image_size, levels)
    train, val, test = split_tensors(x, y)
    return TensorDataset(_image_info(x, levels, tuple(str(i) for i in range(10))), train, val, test)


# ---------------------------------------------------------------------------------------------------- MNIST

#: the four standard files and the MD5 of their gzipped form (as published with the dataset)
MNIST_FILES = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://yann.lecun.com/exdb/mnist/")
#: share of the official training file held out for validation (the official t10k file is the test split)
MNIST_VAL_FRACTION = 0.1


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file of unsigned bytes (gzipped or not): magic 0x00000803-style header, big-endian dims."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read IDX file ({err})") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DataError(f"{path}: not an IDX file of unsigned bytes (header {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:start])
    if len(raw) - start != int(np.prod(dims)):
        raise DataError(f"{path}: truncated or oversized IDX file: header promises {'x'.join(map(str, dims))} "
                        f"= {int(np.prod(dims))} bytes, file holds {len(raw) - start}")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    """The file for ``stem``: its standard name (or the dotted "train-images.idx3-ubyte" some mirrors use),
    gzipped or not, else the one file whose name ends with it (e.g. "mnist-t10k-images-idx3-ubyte.gz")."""
    names = [name + gz for name in (stem, stem.replace("-idx", ".idx")) for gz in ("", ".gz")]
    for name in names:
        if (folder / name).is_file():
            return folder / name
    matches = sorted(p for p in folder.glob("*") if p.is_file() and p.name.endswith(tuple(names)))
    if len(matches) > 1:
        raise DataError(f"{folder}: several files could be {stem}: {', '.join(p.name for p in matches)}")
    return matches[0] if matches else None


def _read_mnist_pair(images_path: Path, labels_path: Path) -> tuple[Tensor, Tensor]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected images of shape (N, H, W), got {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{labels_path}: expected {len(images)} labels for {images_path.name}, "
                        f"got shape {labels.shape}")
    return torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _holdout(x: Tensor, y: Tensor, fraction: float) -> tuple[Batch, Batch]:
    """Split one file into train/validation with the fixed split permutation."""
    if len(x) < 2:
        raise DataError(f"need at least 2 training examples to hold out a validation split, got {len(x)}")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = min(len(x) - 1, max(1, round(fraction * len(x))))
    return Batch(x[perm[n_val:]], y[perm[n_val:]]), Batch(x[perm[:n_val]], y[perm[:n_val]])


def _fetch(name: str, md5: str) -> bytes:
    reasons = []
    for mirror in MNIST_MIRRORS:
        url = mirror + name
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                data = response.read()
        except (urllib.error.URLError, OSError) as err:
            reasons.append(f"{url}: {getattr(err, 'reason', err)}")
            continue
        if hashlib.md5(data, usedforsecurity=False).hexdigest() == md5:
            return data
        reasons.append(f"{url}: checksum mismatch")
    raise DataError(f"could not download MNIST file {name} ({'; '.join(reasons)}). If this machine is offline, "
                    f"put the four files {', '.join(s + '.gz' for s in MNIST_FILES)} in a folder and use "
                    f"'mnist:FOLDER'")


def _download_mnist() -> Path:
    """The cached copy of the four standard files, downloaded first if missing. Nothing is written unless all
    four files arrive intact."""
    target = cache_dir() / "mnist"
    missing = [stem for stem in MNIST_FILES if _find_idx(target, stem) is None]
    fetched = {}
    for stem in missing:
        log.info("downloading %s.gz", stem)
        fetched[stem] = _fetch(f"{stem}.gz", MNIST_FILES[stem])
    for stem, data in fetched.items():
        atomic_write_bytes(target / f"{stem}.gz", data)
    return target


@register_loader("mnist", "mnist[:DIR][#binarize]  MNIST IDX files in DIR (gzipped or not); plain 'mnist' downloads "
                 "them", options=IMAGE_OPTIONS)
def load_mnist(arg: str | None, options: DataOptions) -> TensorDataset:
    """The official training file gives train/validation (90/10), the official t10k file the test split; when
    only one of the two pairs is present it is cut 80/10/10. Fashion-MNIST and other sets in the same format
    load too."""
    if arg == "":
        raise DataError("'mnist:' needs a folder after the colon (or use plain 'mnist' to download the data)")
    folder = _download_mnist() if arg is None else Path(arg).expanduser()
    if not folder.is_dir():
        raise DataError(f"mnist:{arg}: no such folder")
    found = {stem: _find_idx(folder, stem) for stem in MNIST_FILES}
    pairs = {}
    for part in ("train", "t10k"):
        images, labels = found[f"{part}-images-idx3-ubyte"], found[f"{part}-labels-idx1-ubyte"]
        if (images is None) != (labels is None):
            have, lacking = (images, "labels-idx1") if labels is None else (labels, "images-idx3")
            raise DataError(f"{folder}: found {have.name} but not {part}-{lacking}-ubyte[.gz]")
        if images is not None and labels is not None:
            pairs[part] = _read_mnist_pair(images, labels)
    if not pairs:
        raise DataError(f"{folder}: no MNIST files found (expected {', '.join(s + '[.gz]' for s in MNIST_FILES)})")
    sizes = {tuple(x.shape[1:]) for x, _ in pairs.values()}
    if len(sizes) > 1:
        raise DataError(f"{folder}: train and t10k images have different sizes {sorted(sizes)}")
    if options.image_size:
        pairs = {part: (resize_images(x, options.image_size, 256)[0], y) for part, (x, y) in pairs.items()}
    if len(pairs) == 2:
        train, val = _holdout(*pairs["train"], MNIST_VAL_FRACTION)
        test = Batch(*pairs["t10k"])
    else:
        train, val, test = split_tensors(*next(iter(pairs.values())))
    num_classes = max(10, 1 + max(int(y.max()) for _, y in pairs.values()))
    info = _image_info(train.x, 256, tuple(str(i) for i in range(num_classes)))
    return TensorDataset(info, train, val, test)


# ---------------------------------------------------------------------------------------------- image folders

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GREY_MODES = ("1", "L", "LA")
_FILE_HINTS = {".npz": "npz", ".npy": "npy", ".csv": "csv"}


def _image_files(root: Path) -> list[Path]:
    # hidden files and folders are skipped (e.g. macOS "._x.png" resource forks are not images)
    return sorted(
        (p for p in root.rglob("*")
         if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
         and not any(part.startswith(".") for part in p.relative_to(root).parts)),
        key=lambda p: p.relative_to(root).as_posix(),
    )


def _folder_labels(root: Path, files: list[Path]) -> tuple[Tensor | None, tuple[str, ...] | None]:
    """Top-level subfolder names are class labels when at least two of them hold images."""
    tops = [p.relative_to(root).parts for p in files]
    classes = sorted({parts[0] for parts in tops if len(parts) > 1})
    if len(classes) < 2:
        return None, None
    loose = [files[i] for i, parts in enumerate(tops) if len(parts) == 1]
    if loose:
        raise DataError(f"{root}: has class subfolders ({', '.join(classes[:5])}...) but also images directly "
                        f"inside it, e.g. {loose[0].name}; move those into a subfolder")
    index = {name: i for i, name in enumerate(classes)}
    return torch.tensor([index[parts[0]] for parts in tops], dtype=torch.long), tuple(classes)


def _read_image(path: Path, size: int | None) -> np.ndarray:
    """One image as uint8 (H, W) when grey or (H, W, 3) otherwise, centre-cropped and resized when ``size``."""
    try:
        with Image.open(path) as img:
            img.load()  # decodes fully: truncated or corrupt files fail here, not later
            if img.mode.startswith(("I", "F")):
                raise DataError(f"{path}: {img.mode} pixels (16-bit or float) are not supported; save 8-bit images")
            img = ImageOps.exif_transpose(img)  # phone photos store their rotation as an EXIF tag
            img = img.convert("L" if img.mode in _GREY_MODES else "RGB")
            if size:
                img = ImageOps.fit(img, (size, size), method=Image.Resampling.LANCZOS)
            return np.asarray(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: unreadable or truncated image ({err})") from None


@register_loader("folder", "folder:DIR  (or just DIR) PNG/JPEG images found recursively; >=2 subfolders = classes",
                 options=IMAGE_OPTIONS)
def load_folder(arg: str | None, options: DataOptions) -> TensorDataset:
    """All images grey ('L') -> 1 channel, else RGB. Sizes must agree unless ``image_size`` is given, which
    centre-crops each image to a square and resizes it (Lanczos). 256 levels."""
    if not arg:
        raise DataError("'folder:' needs a folder path after the colon")
    root = Path(arg).expanduser()
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        hint = _FILE_HINTS.get(root.suffix.lower())
        raise DataError(f"{root}: is a file, not a folder of images" + (f"; use '{hint}:{arg}'" if hint else ""))
    files = _image_files(root)
    if not files:
        raise DataError(f"{root}: no PNG/JPEG images found in it or its subfolders")
    labels, class_names = _folder_labels(root, files)
    arrays = []
    for path in files:
        arr = _read_image(path, options.image_size)
        if arrays and arr.shape[:2] != arrays[0].shape[:2]:
            first = files[0]
            raise DataError(f"images differ in size: {first} is {arrays[0].shape[1]}x{arrays[0].shape[0]}, {path} "
                            f"is {arr.shape[1]}x{arr.shape[0]}; pass an image size (--image-size) to resize all")
        arrays.append(arr)
    if all(a.ndim == 2 for a in arrays):
        x = np.stack(arrays)[:, None]
    else:
        x = np.stack([np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays]).transpose(0, 3, 1, 2)
    images = torch.from_numpy(x.astype(np.float32) / 255.0)
    train, val, test = split_tensors(images, labels)
    return TensorDataset(_image_info(images, 256, class_names), train, val, test)
