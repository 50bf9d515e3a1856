"""Data layer: every spec form on tiny fixtures, splits and batches, toy densities, and every bad input."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import math
import pickle
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import multivariate_normal

from genzoo.contract import DataKind
from genzoo.data import images as image_loaders
from genzoo.data import load_dataset
from genzoo.data.base import TensorDataset
from genzoo.data.toy import TOYS
from genzoo.errors import DataError

# ------------------------------------------------------------------------------------------------- fixtures


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    raw = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def mnist_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def write_mnist(folder: Path, part: str, n: int, gz: bool, seed: int = 0,
                prefix: str = "") -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    x, y = mnist_arrays(n, seed)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{prefix}{part}-images-idx3-ubyte{suffix}", x, gz)
    write_idx(folder / f"{prefix}{part}-labels-idx1-ubyte{suffix}", y, gz)
    return x, y


def write_png(path: Path, value: int | tuple[int, int, int], size: tuple[int, int] = (6, 5), mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def snapshot(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*")}


def all_rows(ds: TensorDataset) -> torch.Tensor:
    return torch.cat([ds.split(s).x for s in ("train", "val", "test")])


def assert_data_error(spec: str, *needles: str, image_size: int | None = None) -> None:
    with pytest.raises(DataError) as info:
        load_dataset(spec, image_size=image_size)
    for needle in needles:
        assert needle in str(info.value), f"{needle!r} not in {info.value}"


# ---------------------------------------------------------------------------------------------------- MNIST


def test_mnist_gzipped_and_plain_files(tmp_path: Path) -> None:
    write_mnist(tmp_path, "train", 20, gz=True, seed=1)
    x_test, y_test = write_mnist(tmp_path, "t10k", 6, gz=False, seed=2)
    ds = load_dataset(f"mnist:{tmp_path}")
    assert ds.info.kind == DataKind.IMAGE and ds.info.shape == (1, 28, 28)
    assert ds.info.levels == 256 and ds.info.num_classes == 10 and ds.info.spec == f"mnist:{tmp_path}"
    assert (ds.size("train"), ds.size("val"), ds.size("test")) == (18, 2, 6)  # official test file = test split
    assert torch.equal(ds.test.x, torch.from_numpy(x_test).float().unsqueeze(1) / 255)
    assert torch.equal(ds.test.y, torch.from_numpy(y_test).long())
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.long


def test_mnist_only_t10k_files_and_resize(tmp_path: Path) -> None:
    x, y = write_mnist(tmp_path, "t10k", 10, gz=True, prefix="mnist-")  # prefixed names are found too
    ds = load_dataset(f"mnist:{tmp_path}")
    assert sum(ds.size(s) for s in ("train", "val", "test")) == 10
    splits = [ds.split(s) for s in ("train", "val", "test")]
    pairs = {(round(float(xi.sum()) * 255), int(yi)) for b in splits for xi, yi in zip(b.x, b.y, strict=True)}
    assert pairs == {(int(xi.astype(int).sum()), int(yi)) for xi, yi in zip(x, y, strict=True)}
    small = load_dataset(f"mnist:{tmp_path}", image_size=16)
    assert small.info.shape == (1, 16, 16) and small.info.levels == 256
    assert torch.equal((small.train.x * 255).round(), small.train.x * 255)  # still on the 256-level grid
    assert small.info.extra["image_size"] == 16


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A local HTTP server serving tiny gzipped MNIST files, with the checksums patched to match."""
    served = tmp_path / "served"
    write_mnist(served, "train", 9, gz=True)
    write_mnist(served, "t10k", 4, gz=True)
    monkeypatch.setattr(image_loaders, "MNIST_FILES", {
        stem: hashlib.md5((served / f"{stem}.gz").read_bytes()).hexdigest() for stem in image_loaders.MNIST_FILES})
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(image_loaders, "MNIST_MIRRORS", (f"http://127.0.0.1:{server.server_port}/",))
    monkeypatch.setenv("GENZOO_CACHE", str(tmp_path / "cache"))
    yield server
    server.shutdown()
    server.server_close()


def test_mnist_download_then_cache(mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = load_dataset("mnist")
    assert sorted(snapshot(tmp_path / "cache" / "mnist")) == sorted(f"{s}.gz" for s in image_loaders.MNIST_FILES)
    assert (ds.size("train") + ds.size("val"), ds.size("test")) == (9, 4)
    monkeypatch.setattr(image_loaders, "MNIST_MIRRORS", ("http://127.0.0.1:1/",))  # offline now: cache is used
    assert torch.equal(load_dataset("mnist").test.x, ds.test.x)


def test_mnist_offline_or_corrupt_download_writes_nothing(mirror, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(image_loaders.MNIST_FILES, "t10k-labels-idx1-ubyte", "0" * 32)
    assert_data_error("mnist", "t10k-labels-idx1-ubyte.gz", "checksum mismatch", "mnist:FOLDER")
    monkeypatch.setattr(image_loaders, "MNIST_MIRRORS", ("http://127.0.0.1:1/",))
    assert_data_error("mnist", "could not download", "offline")
    assert not (tmp_path / "cache").exists()


def test_mnist_bad_inputs(tmp_path: Path) -> None:
    assert_data_error(f"mnist:{tmp_path / 'nope'}", "nope", "no such folder")
    assert_data_error(f"mnist:{tmp_path}", "no MNIST files found")
    assert_data_error("mnist:", "needs a folder")
    x, y = mnist_arrays(5, 0)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", x, gz=False)
    assert_data_error(f"mnist:{tmp_path}", "t10k-images-idx3-ubyte", "t10k-labels")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", y[:4], gz=False)
    assert_data_error(f"mnist:{tmp_path}", "t10k-labels-idx1-ubyte", "expected 5 labels")
    raw = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw[:-100])
    assert_data_error(f"mnist:{tmp_path}", "t10k-images-idx3-ubyte", "truncated")
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw)[:-20])
    assert_data_error(f"mnist:{tmp_path}", "t10k-images-idx3-ubyte.gz", "cannot read")


# -------------------------------------------------------------------------------------------- image folders


def test_folder_with_class_subfolders(tmp_path: Path) -> None:
    for i in range(4):
        write_png(tmp_path / "cats" / f"{i}.png", 10 + i)
        write_png(tmp_path / "dogs" / "deep" / f"{i}.png", 200 + i)
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    (tmp_path / "dogs" / "._0.png").write_bytes(b"macOS resource fork")
    ds = load_dataset(str(tmp_path))  # a bare path means a folder
    assert ds.info.kind == DataKind.IMAGE and ds.info.shape == (1, 5, 6) and ds.info.levels == 256
    assert ds.info.class_names == ("cats", "dogs") and ds.info.num_classes == 2
    x = all_rows(ds)
    y = torch.cat([ds.split(s).y for s in ("train", "val", "test")])
    assert torch.equal(y, (x[:, 0, 0, 0] > 0.5).long())  # the label follows the folder
    assert sorted((x[:, 0, 0, 0] * 255).round().long().tolist()) == [10, 11, 12, 13, 200, 201, 202, 203]
    assert torch.equal(load_dataset(f"folder:{tmp_path}").train.x, ds.train.x)


def test_folder_colour_flat_and_resize(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", 7, size=(8, 4))
    write_png(tmp_path / "b.png", (255, 0, 0), size=(8, 4), mode="RGB")
    Image.new("RGB", (8, 4), (0, 0, 255)).save(tmp_path / "c.JPEG", quality=95)
    write_png(tmp_path / "d.png", (0, 255, 0, 128), size=(8, 4), mode="RGBA")
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.info.shape == (3, 4, 8) and ds.info.num_classes is None and ds.train.y is None
    pixels = {tuple((all_rows(ds)[i, :, 0, 0] * 255).round().long().tolist()) for i in range(4)}
    assert (7, 7, 7) in pixels and (255, 0, 0) in pixels and (0, 255, 0) in pixels  # grey replicated to RGB
    write_png(tmp_path / "e.png", 9, size=(5, 5))
    assert_data_error(f"folder:{tmp_path}", "a.png", "e.png", "8x4", "5x5", "--image-size")
    square = load_dataset(f"folder:{tmp_path}", image_size=3)
    assert square.info.shape == (3, 3, 3) and square.info.levels == 256


def test_folder_bad_inputs(tmp_path: Path) -> None:
    assert_data_error(f"folder:{tmp_path / 'missing'}", "missing", "no such folder")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert_data_error(str(tmp_path / "empty"), "empty", "no PNG/JPEG images")
    good = tmp_path / "imgs"
    write_png(good / "ok.png", 3)
    write_png(good / "bad.png", 3, size=(64, 64))
    data = (good / "bad.png").read_bytes()
    (good / "bad.png").write_bytes(data[: len(data) // 2])
    before = snapshot(tmp_path)
    assert_data_error(str(good), "bad.png", "truncated")
    (good / "bad.png").write_bytes(b"this is not a png")
    assert_data_error(str(good), "bad.png", "unreadable")
    assert snapshot(tmp_path) == before | {"imgs/bad.png": 17}
    np.save(tmp_path / "arr.npy", np.zeros((3, 2)))
    assert_data_error(str(tmp_path / "arr.npy"), "is a file", "npy:")
    mixed = tmp_path / "mixed"
    write_png(mixed / "a" / "1.png", 1)
    write_png(mixed / "b" / "2.png", 2)
    write_png(mixed / "3.png", 3)
    assert_data_error(str(mixed), "3.png", "class subfolders")


# -------------------------------------------------------------------------------------------- array files


def test_npz_images_with_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 5, 7, 3), dtype=np.uint8)  # (N, H, W, C)
    y = np.arange(12) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert ds.info.kind == DataKind.IMAGE and ds.info.shape == (3, 5, 7) and ds.info.levels == 256
    assert ds.info.num_classes == 3 and ds.info.class_names == ("0", "1", "2")
    whole = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    for split in ("train", "val", "test"):
        batch = ds.split(split)
        for xi, yi in zip(batch.x, batch.y, strict=True):
            index = int((whole - xi).abs().flatten(1).sum(1).argmin())
            assert torch.equal(whole[index], xi) and int(y[index]) == int(yi)  # labels travel with their images
    np.savez(tmp_path / "first.npz", images=(x[..., 0] > 127), other=np.zeros(3))  # no 'x': first array, (N,H,W)
    binary = load_dataset(f"npz:{tmp_path / 'first.npz'}", image_size=10)
    assert binary.info.shape == (1, 10, 10) and binary.info.levels == 2
    assert set(all_rows(binary).unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize(("array", "shape", "levels"), [
    (np.random.default_rng(0).random((10, 1, 4, 4)), (1, 4, 4), None),  # floats in [0, 1]: continuous
    (np.random.default_rng(0).integers(0, 2, (10, 4, 4, 1)), (1, 4, 4), 2),  # integers in {0, 1}: binary
    (np.random.default_rng(0).integers(0, 256, (10, 3, 4, 4)), (3, 4, 4), 256),  # int64 0..255: 8-bit
])
def test_npy_image_levels(tmp_path: Path, array: np.ndarray, shape: tuple, levels: int | None) -> None:
    np.save(tmp_path / "a.npy", array)
    ds = load_dataset(f"npy:{tmp_path / 'a.npy'}")
    assert ds.info.kind == DataKind.IMAGE and ds.info.shape == shape and ds.info.levels == levels
    x = all_rows(ds)
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1


def test_npy_vectors_mean_std_from_train(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(3.0, 2.0, (50, 4))
    x[:, 3] = 1.0  # a constant feature
    np.save(tmp_path / "v.npy", x)
    ds = load_dataset(f"npy:{tmp_path / 'v.npy'}")
    assert ds.info.kind == DataKind.VECTOR and ds.info.shape == (4,) and ds.info.levels is None
    assert np.allclose(ds.info.mean, ds.train.x.mean(0).numpy(), atol=1e-6)
    assert np.allclose(ds.info.std[:3], ds.train.x[:, :3].std(0, correction=0).numpy(), atol=1e-6)
    assert ds.info.std[3] == 1.0  # constant feature: standardising must not divide by zero


def test_array_bad_inputs(tmp_path: Path) -> None:
    assert_data_error(f"npz:{tmp_path / 'missing.npz'}", "missing.npz", "no such file")
    assert_data_error("npy:", "needs a file path")
    bad = np.ones((6, 3))
    bad[4, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=bad)
    assert_data_error(f"npz:{tmp_path / 'nan.npz'}", "nan.npz", "NaN/Inf", "(4, 1)")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    assert_data_error(f"npy:{tmp_path / 'obj.npy'}", "obj.npy", "pickled")
    np.savez(tmp_path / "objy.npz", x=np.zeros((4, 2)), y=np.array(["a", 1, None, 2.0], dtype=object))
    assert_data_error(f"npz:{tmp_path / 'objy.npz'}", "objy.npz", "pickled")
    np.save(tmp_path / "float255.npy", np.full((5, 4, 4), 200.0))
    assert_data_error(f"npy:{tmp_path / 'float255.npy'}", "float255.npy", "[0, 1]", "200")
    np.save(tmp_path / "text.npy", np.array(["a", "b", "c"]))
    assert_data_error(f"npy:{tmp_path / 'text.npy'}", "text.npy", "numeric")
    np.savez(tmp_path / "badlabels.npz", x=np.zeros((5, 2)), y=np.arange(4))
    assert_data_error(f"npz:{tmp_path / 'badlabels.npz'}", "badlabels.npz", "labels", "(5,)")
    np.save(tmp_path / "five.npy", np.zeros((3, 2, 2, 2, 2)))
    assert_data_error(f"npy:{tmp_path / 'five.npy'}", "five.npy", "shape")
    (tmp_path / "trunc.npy").write_bytes((tmp_path / "five.npy").read_bytes()[:-40])
    assert_data_error(f"npy:{tmp_path / 'trunc.npy'}", "trunc.npy", "not a readable")


class _Planted:
    """Unpickling this would create a marker file: proves the loader never unpickles."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_file_is_never_unpickled(tmp_path: Path) -> None:
    planted = _Planted()
    planted.marker = tmp_path / "pwned"
    (tmp_path / "evil.npy").write_bytes(pickle.dumps(planted))
    assert_data_error(f"npy:{tmp_path / 'evil.npy'}", "evil.npy", "pickled")
    assert not planted.marker.exists()


# ---------------------------------------------------------------------------------------------------- CSV


def test_csv_with_and_without_header(tmp_path: Path) -> None:
    (tmp_path / "h.csv").write_text("a,b,c\n1,2,3\n4,5.5,-6\n\n7,8e1,9\n10,11,12\n")
    ds = load_dataset(f"csv:{tmp_path / 'h.csv'}")
    assert ds.info.kind == DataKind.VECTOR and ds.info.shape == (3,) and ds.info.levels is None
    got = sorted(map(tuple, all_rows(ds).tolist()))
    assert got == [(1, 2, 3), (4, 5.5, -6), (7, 80, 9), (10, 11, 12)]
    (tmp_path / "n.csv").write_text("1;2\n3;4\n5;6\n")
    assert load_dataset(f"csv:{tmp_path / 'n.csv'}").info.shape == (2,)
    (tmp_path / "one.csv").write_text("0.5\n1.5\n2.5\n")
    assert sorted(all_rows(load_dataset(f"csv:{tmp_path / 'one.csv'}")).flatten().tolist()) == [0.5, 1.5, 2.5]


@pytest.mark.parametrize(("text", "needles"), [
    ("x,y\n1,2\n3,abc\n5,6\n", ("line 3", "column 2", "'y'", "non-numeric", "'abc'")),
    ("1,2\n3,\n5,6\n", ("line 2", "column 2", "empty cell")),
    ("x,y\n1,2\nnan,4\n5,6\n", ("line 3", "column 1", "'x'", "NaN")),
    ("1,2\n3,inf\n5,6\n", ("line 2", "NaN/Inf")),
    ("1,2\n3,4,5\n5,6\n", ("line 2", "3 cells", "expected 2")),
    ("a,b\n", ("no data rows",)),
    ("", ("empty",)),
])
def test_csv_bad_inputs(tmp_path: Path, text: str, needles: tuple[str, ...]) -> None:
    (tmp_path / "bad.csv").write_text(text)
    assert_data_error(f"csv:{tmp_path / 'bad.csv'}", "bad.csv", *needles)


# ------------------------------------------------------------------------------------------- splits, batches


def test_splits_deterministic_disjoint_and_independent_of_training_seed(tmp_path: Path) -> None:
    np.save(tmp_path / "ids.npy", np.arange(103, dtype=np.float32)[:, None])
    torch.manual_seed(0)
    first = load_dataset(f"npy:{tmp_path / 'ids.npy'}")
    torch.manual_seed(1)
    torch.rand(7)
    second = load_dataset(f"npy:{tmp_path / 'ids.npy'}")
    ids = {s: first.split(s).x.flatten().long().tolist() for s in ("train", "val", "test")}
    assert sorted(ids["train"] + ids["val"] + ids["test"]) == list(range(103))  # disjoint and complete
    assert [len(v) for v in ids.values()] == [82, 10, 11]
    for s in ("train", "val", "test"):
        assert torch.equal(first.split(s).x, second.split(s).x)
    toy_a, toy_b = load_dataset("toy:moons"), load_dataset("toy:moons")
    assert torch.equal(toy_a.val.x, toy_b.val.x)
    rows = {tuple(r) for r in all_rows(toy_a).tolist()}
    assert len(rows) == sum(toy_a.size(s) for s in ("train", "val", "test"))


def test_batch_at_deterministic_and_covers_each_epoch(tmp_path: Path) -> None:
    np.save(tmp_path / "ids.npy", np.arange(60, dtype=np.float32)[:, None])
    ds = load_dataset(f"npy:{tmp_path / 'ids.npy'}")  # 48 train examples, batches of 10 -> 4 per epoch
    assert ds.size("train") == 48
    per_epoch = 4
    train_ids = sorted(ds.train.x.flatten().long().tolist())
    for epoch in range(3):
        seen = torch.cat([ds.batch_at(epoch * per_epoch + i, 10, seed=5).x for i in range(per_epoch)]).flatten()
        assert len(seen) == 40 and len(set(seen.tolist())) == 40 and set(seen.tolist()) <= set(train_ids)
    assert torch.equal(ds.batch_at(9, 10, seed=5).x, ds.batch_at(9, 10, seed=5).x)
    assert not torch.equal(ds.batch_at(9, 10, seed=5).x, ds.batch_at(9, 10, seed=6).x)
    fresh = load_dataset(f"npy:{tmp_path / 'ids.npy'}")  # stateless: a new object gives the same batch
    assert torch.equal(fresh.batch_at(9, 10, seed=5).x, ds.batch_at(9, 10, seed=5).x)
    assert [len(b) for b in ds.batches("val", 4)] == [4, 2] and sum(len(b) for b in ds.batches("train", 7, 20)) == 20


# ---------------------------------------------------------------------------------------------- toy densities


def _grid(lim: float, step: float) -> torch.Tensor:
    axis = torch.arange(-lim + step / 2, lim, step, dtype=torch.float64)
    return torch.cartesian_prod(axis, axis)


@pytest.mark.parametrize("name", list(TOYS))
def test_toy_density_sampler_and_log_prob_agree(name: str) -> None:
    ds = load_dataset(f"toy:{name}")
    assert ds.info.kind == DataKind.VECTOR and ds.info.shape == (2,) and ds.info.levels is None
    assert (ds.size("train"), ds.size("val"), ds.size("test")) == (16000, 2000, 2000)
    assert np.allclose(ds.info.mean, ds.train.x.mean(0).numpy(), atol=1e-5)
    assert np.allclose(ds.info.std, ds.train.x.std(0, correction=0).numpy(), atol=1e-5)
    gen = torch.Generator().manual_seed(3)
    a = ds.reference.sample(5000, gen)
    assert a.shape == (5000, 2) and a.dtype == torch.float32
    assert torch.equal(a, ds.reference.sample(5000, torch.Generator().manual_seed(3)))
    assert torch.isfinite(ds.reference.log_prob(a)).all()  # every sample lies in the support
    # the density integrates to one, and the sampler's histogram matches it (total variation on a coarse grid)
    # midpoints of a 180 x 180 grid (edges on the checkerboard's lines; fine enough for std 0.1: the midpoint
    # rule's error on a Gaussian is ~exp(-2 pi^2 std^2 / step^2)), summed into 9 x 9 unit cells
    step, lim, coarse, fine = 0.05, 4.5, 9, 20
    density = ds.reference.log_prob(_grid(lim, step)).exp()
    assert density.sum().item() * step**2 == pytest.approx(1.0, abs=2e-3)
    cell_mass = density.reshape(coarse, fine, coarse, fine).sum((1, 3)) * step**2
    b = ds.reference.sample(20000, gen).double()
    hist = torch.histogramdd(b, bins=[coarse, coarse], range=[-lim, lim, -lim, lim]).hist / len(b)
    assert 0.5 * (hist - cell_mass).abs().sum().item() < 0.03


def test_eight_gaussians_matches_scipy_mixture() -> None:
    ds = load_dataset("toy:8gaussians")
    x = torch.cat([ds.reference.sample(200, torch.Generator().manual_seed(0)), torch.tensor([[0.0, 0.0], [3.0, -1.0]])])
    angles = np.arange(8) * np.pi / 4
    pdf = sum(multivariate_normal(2 * np.array([np.cos(a), np.sin(a)]), 0.2**2 * np.eye(2)).pdf(x.numpy())
              for a in angles) / 8
    assert np.allclose(ds.reference.log_prob(x.double()).numpy(), np.log(pdf), rtol=1e-9, atol=1e-9)


def test_checkerboard_support() -> None:
    ds = load_dataset("toy:checkerboard")
    inside = torch.tensor([[-1.5, -1.5], [0.5, 0.5], [1.5, -0.5]])
    outside = torch.tensor([[-0.5, -1.5], [0.5, -0.5], [2.5, 0.5], [0.0, -2.5]])
    assert torch.allclose(ds.reference.log_prob(inside), torch.full((3,), -math.log(8)))
    assert torch.isneginf(ds.reference.log_prob(outside)).all()


def test_spec_naming_nothing(tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    assert_data_error(str(tmp_path / "no_such_thing"), "no_such_thing", "names nothing")
    assert_data_error("toy:swissroll", "toy:swissroll", "toy:moons")
    assert_data_error("toy", "needs a name")
    assert_data_error("folder:", "needs a folder")
    assert_data_error("  ", "empty data spec")
    assert_data_error("digits:extra", "takes no argument")
    assert snapshot(tmp_path) == before


def test_binarize_thresholds_images_at_one_half(tmp_path: Path) -> None:
    plain, binary = load_dataset("digits"), load_dataset("digits#binarize")
    assert binary.info.levels == 2 and plain.info.levels == 17
    assert torch.equal(binary.train.x, (plain.train.x >= 0.5).float())
    assert torch.equal(binary.test.y, plain.test.y)
    write_mnist(tmp_path, "t10k", 30, gz=True)
    mnist = load_dataset(f"mnist:{tmp_path}#binarize", image_size=8)
    assert mnist.info.levels == 2 and set(mnist.train.x.unique().tolist()) <= {0.0, 1.0}
    assert mnist.train.x.shape[-1] == 8  # resized first, then thresholded
    assert load_dataset("digits#binarize=no").info.levels == 17


def test_binarize_errors_name_the_problem() -> None:
    assert_data_error("digits#binarize=maybe", "binarize must be true or false", "maybe")
    assert_data_error("toy:moons#binarize", "toy data takes no #options")
    assert_data_error("digits#context=3", "unknown data spec option 'context'")
