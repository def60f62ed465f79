"""On-disk datasets: tiny files in each official format, read through torchvision's real loaders.

No network is used: an autouse fixture makes every torchvision download function fail loudly, and
the files are written here in the formats torchvision reads (CIFAR python pickles, MNIST idx files,
an ImageNet-layout folder of PNG/JPEG files).

torchvision checks every CIFAR file against the md5 sum of the official release, which a tiny file
cannot match. The CIFAR tests therefore replace the *expected* sums in the class's file table
(`train_list`, `test_list`, `meta`) with the sums of the tiny files: torchvision's integrity code
(`check_integrity` -> `calculate_md5`) still runs for real and still rejects a file that changes
afterwards (see test_cifar_corrupted_file); nothing in bench/core/data.py is patched, and one test shows
that the official table rejects tiny files in production.
"""

from __future__ import annotations

import functools
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.base.errors import UserError
from bench.core.data import DATASETS, IMAGEFOLDER_SIZES, load_dataset, random_crop_flip

ON_DISK = sorted(name for name, spec in DATASETS.items() if spec.needs_data_dir)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any download attempt fails like an offline machine, instead of reaching the network."""
    from urllib.error import URLError

    from torchvision.datasets import cifar, mnist

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("offline test: no network")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    monkeypatch.setattr(mnist, "download_and_extract_archive", offline)


def _standardized(raw: np.ndarray, train: np.ndarray) -> torch.Tensor:
    """What the loaders should return: raw uint8 (N, C, H, W) standardized with train's channel stats."""
    mean = train.astype(np.float64).mean(axis=(0, 2, 3), keepdims=True)
    std = train.astype(np.float64).std(axis=(0, 2, 3), keepdims=True)
    return torch.from_numpy((raw - mean) / std).float()


def _one_line(info: pytest.ExceptionInfo[UserError]) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------------- CIFAR


def _pickle(path: Path, obj: dict[str, object]) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))  # the official files are Python 2 pickles


def _write_cifar(root: Path, hundred: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny CIFAR-10 (5 train batches of 4 + 6 test) or CIFAR-100 (12 + 6) release under root.

    Rows are 3072 bytes in the official channel-major order (1024 red, 1024 green, 1024 blue).
    Returns the images as (N, 3, 32, 32) and the labels.
    """
    rng = np.random.default_rng(seed)
    classes = 100 if hundred else 10
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    # Per-channel offsets so the standardization statistics differ by channel.
    offset = np.array([0, 60, 120], dtype=np.int64)[None, :, None, None]

    def images(n: int) -> np.ndarray:
        return (rng.integers(0, 136, size=(n, 3, 32, 32)) + offset).astype(np.uint8)

    x_train, x_test = images(20 if not hundred else 12), images(6)
    y_train = rng.integers(0, classes, size=len(x_train))
    y_test = rng.integers(0, classes, size=len(x_test))
    y_train[:2] = [0, classes - 1]  # the extreme labels appear
    if hundred:
        for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
            _pickle(
                folder / name,
                {
                    "filenames": [f"{i}.png" for i in range(len(y))],
                    "batch_label": f"tiny {name}",
                    "fine_labels": y.tolist(),
                    "coarse_labels": (y // 5).tolist(),
                    "data": x.reshape(len(x), -1),
                },
            )
        _pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": []})
    else:
        for b in range(5):
            sl = slice(4 * b, 4 * b + 4)
            _pickle(
                folder / f"data_batch_{b + 1}",
                {"batch_label": f"batch {b + 1}", "labels": y_train[sl].tolist(), "data": x_train[sl].reshape(4, -1)},
            )
        _pickle(
            folder / "test_batch", {"batch_label": "test", "labels": y_test.tolist(), "data": x_test.reshape(6, -1)}
        )
        _pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072})
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _accept_tiny_cifar(monkeypatch: pytest.MonkeyPatch, root: Path, hundred: bool) -> None:
    """Point torchvision's table of expected md5 sums at the tiny files (the check itself still runs)."""
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.utils import calculate_md5

    cls = CIFAR100 if hundred else CIFAR10
    folder = root / cls.base_folder
    monkeypatch.setattr(cls, "train_list", [[f, calculate_md5(folder / f)] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, calculate_md5(folder / f)] for f, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": calculate_md5(folder / cls.meta["filename"])})


@pytest.fixture
def cifar10_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, np.ndarray]]:
    arrays = _write_cifar(tmp_path, hundred=False)
    _accept_tiny_cifar(monkeypatch, tmp_path, hundred=False)
    return tmp_path, arrays


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_loads_through_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hundred: bool) -> None:
    name = "cifar100" if hundred else "cifar10"
    raw = _write_cifar(tmp_path, hundred)
    _accept_tiny_cifar(monkeypatch, tmp_path, hundred)
    ds = load_dataset(name, seed=0, data_dir=str(tmp_path))
    assert ds.name == name and ds.num_classes == (100 if hundred else 10)
    assert ds.input_shape == (3, 32, 32)
    assert ds.x_train.shape == (len(raw["y_train"]), 3, 32, 32) and ds.x_test.shape == (6, 3, 32, 32)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    # Same order as the files, channel-major pixels back in (C, H, W), standardized per channel with
    # train statistics only.
    assert torch.equal(ds.y_train, torch.from_numpy(raw["y_train"]))
    assert torch.equal(ds.y_test, torch.from_numpy(raw["y_test"]))
    torch.testing.assert_close(ds.x_train, _standardized(raw["x_train"], raw["x_train"]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ds.x_test, _standardized(raw["x_test"], raw["x_train"]), atol=1e-5, rtol=1e-5)
    mean, std = ds.x_train.double().mean(dim=(0, 2, 3)), ds.x_train.double().std(dim=(0, 2, 3), correction=0)
    assert torch.allclose(mean, torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(std, torch.ones(3, dtype=torch.float64), atol=1e-5)
    # The usual CIFAR augmentation rides along: 4-pixel-pad random crop and flip.
    assert isinstance(ds.augment, functools.partial) and ds.augment.func is random_crop_flip
    assert ds.augment.keywords == {"pad": 4}


def test_cifar_deterministic_and_seed_independent(cifar10_dir: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = cifar10_dir
    a, b, c = (load_dataset("cifar10", seed=s, data_dir=str(root)) for s in (0, 0, 5))
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field))
        # Official train/test files: the seed does not re-split them.
        assert torch.equal(getattr(a, field), getattr(c, field))
    a.x_train.zero_()  # each load owns its tensors
    assert not torch.equal(a.x_train, b.x_train)


def test_cifar_official_md5_table_rejects_tiny_files(tmp_path: Path) -> None:
    # Without the test's table, torchvision's integrity check is live: production never accepts these.
    _write_cifar(tmp_path, hundred=False)
    with pytest.raises(UserError, match=r"cifar10: torchvision could not load .*cifar-10-batches-py.*corrupted"):
        load_dataset("cifar10", data_dir=str(tmp_path))


def test_cifar_corrupted_file(cifar10_dir: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = cifar10_dir
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="official python-pickle release.*re-extract") as info:
        load_dataset("cifar10", data_dir=str(root))
    _one_line(info)


def test_cifar_missing_files(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        load_dataset("cifar10", data_dir=str(tmp_path))
    message = _one_line(info)
    expected = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    assert f"cifar10: expected {expected} (7 of data_batch_1" in message
    assert "pass --data-dir pointing at the folder that contains cifar-10-batches-py/" in message
    # A partial folder names the first file that is missing.
    _write_cifar(tmp_path, hundred=False)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(UserError, match=r"expected .*test_batch \(1 of "):
        load_dataset("cifar10", data_dir=str(tmp_path))
    with pytest.raises(UserError, match=r"cifar100: expected .*cifar-100-python.train \(3 of train, test, meta"):
        load_dataset("cifar100", data_dir=str(tmp_path))


def test_download_is_passed_to_torchvision_only_when_asked(
    cifar10_dir: tuple[Path, dict[str, np.ndarray]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchvision.datasets import CIFAR10

    root, _ = cifar10_dir
    calls: list[str] = []
    real_download = CIFAR10.download

    def spy(self: CIFAR10) -> None:
        calls.append(self.root)
        real_download(self)  # the files pass the integrity check, so torchvision fetches nothing

    monkeypatch.setattr(CIFAR10, "download", spy)
    load_dataset("cifar10", data_dir=str(root))
    assert calls == []  # never by default
    load_dataset("cifar10", data_dir=str(root), download=True)
    assert calls == [str(root), str(root)]  # train and test


def test_failed_download_is_a_user_error(tmp_path: Path) -> None:
    target = tmp_path / "new"  # download creates the folder, so it need not exist
    with pytest.raises(UserError, match="cifar10: torchvision could not load .*no network") as info:
        load_dataset("cifar10", data_dir=str(target), download=True)
    _one_line(info)
    with pytest.raises(UserError, match="mnist-full: torchvision could not load .*Error downloading") as info:
        load_dataset("mnist-full", data_dir=str(target), download=True)
    _one_line(info)


# ------------------------------------------------------------------------------------------- MNIST (idx)


def _write_idx(raw: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST's big-endian idx files: magic 0x0803 (ubyte, 3 dims) for images, 0x0801 for labels."""
    n, h, w = images.shape
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, h, w) + images.tobytes())
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, len(labels)) + labels.tobytes())


def _write_mnist(root: Path, folder: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    out = {}
    for prefix, split, n in (("train", "train", 12), ("t10k", "test", 5)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        _write_idx(raw, prefix, x, y)
        out[f"x_{split}"], out[f"y_{split}"] = x[:, None], y.astype(np.int64)
    return out


@pytest.mark.parametrize(("name", "folder"), [("mnist-full", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_sets_load_through_torchvision(tmp_path: Path, name: str, folder: str) -> None:
    raw = _write_mnist(tmp_path, folder)
    ds = load_dataset(name, seed=0, data_dir=str(tmp_path))
    assert ds.name == name and ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    assert torch.equal(ds.y_train, torch.from_numpy(raw["y_train"]))
    assert torch.equal(ds.y_test, torch.from_numpy(raw["y_test"]))
    torch.testing.assert_close(ds.x_train, _standardized(raw["x_train"], raw["x_train"]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ds.x_test, _standardized(raw["x_test"], raw["x_train"]), atol=1e-5, rtol=1e-5)
    assert ds.augment is None  # flips and shifts would change what a digit means
    again = load_dataset(name, seed=3, data_dir=str(tmp_path))
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.y_test, again.y_test)


def test_idx_missing_and_gzipped(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        load_dataset("fashion-mnist", data_dir=str(tmp_path))
    message = _one_line(info)
    assert f"expected {tmp_path / 'FashionMNIST' / 'raw' / 'train-images-idx3-ubyte'} (4 of" in message
    assert "pass --data-dir pointing at the folder that contains FashionMNIST/raw/" in message
    # The release ships .gz files; torchvision reads them uncompressed.
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(UserError, match=r"gunzip .*train-images-idx3-ubyte\.gz"):
        load_dataset("mnist-full", data_dir=str(tmp_path))


def test_idx_malformed(tmp_path: Path) -> None:
    _write_mnist(tmp_path, "MNIST")
    bad = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x07" + bad.read_bytes()[4:])  # 7 dimensions: not an idx file
    with pytest.raises(UserError, match="mnist-full: torchvision could not load the idx files") as info:
        load_dataset("mnist-full", data_dir=str(tmp_path))
    _one_line(info)
    # Well-formed files that disagree: 5 test images, 4 labels.
    _write_idx(tmp_path / "MNIST" / "raw", "t10k", np.zeros((5, 28, 28), np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(UserError, match="holds 5 images but 4 labels"):
        load_dataset("mnist-full", data_dir=str(tmp_path))
    _write_idx(tmp_path / "MNIST" / "raw", "t10k", np.zeros((5, 28, 28), np.uint8), np.full(5, 12, np.uint8))
    with pytest.raises(UserError, match=r"labels under .* fall outside 0\.\.9"):
        load_dataset("mnist-full", data_dir=str(tmp_path))


# ----------------------------------------------------------------------------------------- ImageFolder

# (class, file, size (h, w), colour, PIL mode, format): constant colours survive resizing exactly, so the
# expected pixels are known without reimplementing the resize.
_IMAGES = [
    ("cat", "a.png", (40, 48), (200, 10, 30), "RGB", "PNG"),
    ("cat", "b.png", (20, 20), (90, 90, 90), "L", "PNG"),  # grey files become RGB
    ("dog", "c.png", (64, 32), (0, 250, 128), "RGBA", "PNG"),  # alpha is dropped
    ("dog", "d.jpg", (33, 35), (120, 60, 10), "RGB", "JPEG"),
]
_VAL = [("cat", "e.png", (50, 50), (10, 20, 30), "RGB", "PNG"), ("dog", "f.png", (31, 45), (1, 2, 3), "RGB", "PNG")]


def _write_images(root: Path, split: str, images: list[tuple]) -> None:
    from PIL import Image

    for cls, file, (h, w), colour, mode, fmt in images:
        folder = root / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.broadcast_to(np.array(colour, np.uint8), (h, w, 3))
        img = Image.fromarray(np.ascontiguousarray(pixels))
        img = img.convert("L") if mode == "L" else img.convert("RGBA") if mode == "RGBA" else img
        img.save(folder / file, format=fmt, quality=100)


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    _write_images(tmp_path, "train", _IMAGES)
    _write_images(tmp_path, "val", _VAL)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image: skipped by extension")
    return tmp_path


def _expected_colours(images: list[tuple]) -> np.ndarray:
    # Grey files hold the luma of the colour, repeated to RGB on load.
    out = []
    for _, _, _, colour, mode, _ in images:
        out.append([round(0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2])] * 3 if mode == "L" else colour)
    return np.array(out, dtype=np.float64)


@pytest.mark.parametrize("name", sorted(IMAGEFOLDER_SIZES))
def test_imagefolder_loads_through_torchvision(image_dir: Path, name: str) -> None:
    size = IMAGEFOLDER_SIZES[name]
    ds = load_dataset(name, seed=0, data_dir=str(image_dir))
    assert ds.num_classes == 2 and ds.input_shape == (3, size, size)
    assert ds.x_train.shape == (4, 3, size, size) and ds.x_test.shape == (2, 3, size, size)
    # Classes are numbered by sorted folder name, files in sorted order.
    assert ds.y_train.tolist() == [0, 0, 1, 1] and ds.y_test.tolist() == [0, 1]
    # Every image stays one constant colour; standardized with per-channel train statistics.
    colours = _expected_colours(_IMAGES)
    mean, std = colours.mean(axis=0), colours.std(axis=0)
    for x, rows in ((ds.x_train, colours), (ds.x_test, _expected_colours(_VAL))):
        per_image = x.double().mean(dim=(2, 3))
        assert torch.allclose(x.double(), per_image[:, :, None, None].expand_as(x), atol=1e-5)
        expected = torch.from_numpy((rows - mean) / std)
        lossless = [i for i, row in enumerate(_IMAGES if x is ds.x_train else _VAL) if row[5] == "PNG"]
        torch.testing.assert_close(per_image[lossless], expected[lossless], atol=1e-4, rtol=1e-4)
        # JPEG is lossy: within a few grey levels.
        assert torch.allclose(per_image, expected, atol=5 / std.min())
    assert ds.augment is not None and ds.augment.keywords == {"pad": size // 8}
    again = load_dataset(name, seed=9, data_dir=str(image_dir))
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.x_test, again.x_test)


def test_imagefolder_user_errors(tmp_path: Path) -> None:
    def fails(match: str, download: bool = False) -> None:
        with pytest.raises(UserError, match=match) as info:
            load_dataset("imagefolder", data_dir=str(tmp_path), download=download)
        _one_line(info)

    fails(r"imagefolder: expected the folder .*train with one sub-folder of images per class.*train/ and val/")
    (tmp_path / "train").mkdir()
    fails(r"Couldn't find any class folder in .*train; put the images under .*train/<class>/")
    _write_images(tmp_path, "train", _IMAGES)
    fails(r"expected the folder .*val")
    (tmp_path / "val" / "cat").mkdir(parents=True)
    fails(r"Found no valid file for the classes cat")
    _write_images(tmp_path, "val", [*_VAL, ("bird", "g.png", (8, 8), (0, 0, 0), "RGB", "PNG")])
    fails(r"train/ and val/ must hold the same class folders; bird is in only one")
    (tmp_path / "val" / "bird" / "g.png").unlink()
    (tmp_path / "val" / "bird").rmdir()
    (tmp_path / "val" / "dog" / "broken.png").write_bytes(b"\x89PNG but not really")
    fails(r"cannot decode image .*broken\.png.*delete or replace it")
    fails(r"imagefolder: an image folder cannot be downloaded", download=True)


# ----------------------------------------------------------------------------------------- common errors


@pytest.mark.parametrize("name", ON_DISK)
def test_data_dir_required(name: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"dataset '{name}' is read from disk.*pass --data-dir") as info:
        load_dataset(name)
    _one_line(info)
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match=f"{name}: data folder .*nope does not exist.*pass --data-dir"):
        load_dataset(name, data_dir=str(missing))


# ---------------------------------------------------------------------------------------- augmentation


def _batch(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_augment_shape_determinism_and_change() -> None:
    x = _batch()
    before = x.clone()
    a = random_crop_flip(x, torch.Generator().manual_seed(1))
    b = random_crop_flip(x, torch.Generator().manual_seed(1))
    c = random_crop_flip(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == x.dtype and a.is_contiguous()
    assert torch.equal(x, before)  # the input batch is not modified
    assert torch.equal(a, b) and not torch.equal(a, c)
    changed = [not torch.equal(a[i], x[i]) for i in range(len(x))]
    assert sum(changed) >= len(x) - 2  # P(no shift and no flip) = 1/162 per image
    # A generator advances, so consecutive batches are augmented differently.
    gen = torch.Generator().manual_seed(1)
    assert not torch.equal(random_crop_flip(x, gen), random_crop_flip(x, gen))


def test_augment_is_a_padded_crop_then_flip() -> None:
    """Every output image equals some crop of the zero-padded input, possibly mirrored; all kinds occur."""
    pad = 4
    x = _batch(n=48, seed=3)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), pad=pad)
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    seen = set()
    for i in range(len(x)):
        matches = [
            (dy, dx, flip)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for flip in (False, True)
            if torch.equal(
                out[i],
                (lambda crop, f: crop.flip(2) if f else crop)(padded[i, :, dy : dy + 32, dx : dx + 32], flip),
            )
        ]
        assert len(matches) == 1, (i, matches)
        seen.add(matches[0])
    assert {flip for _, _, flip in seen} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in seen}) > 20  # offsets spread over the 9x9 range


def test_augment_pad_zero_is_flip_only() -> None:
    x = _batch(n=32)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), pad=0)
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(len(x))]
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 4 < sum(flipped) < 28


def test_augment_from_dataset_on_a_training_batch(cifar10_dir: tuple[Path, dict[str, np.ndarray]]) -> None:
    # How the training loop uses it: one generator per node, applied to each sampled training batch.
    root, _ = cifar10_dir
    ds = load_dataset("cifar10", data_dir=str(root))
    assert ds.augment is not None
    batch = ds.x_train[torch.tensor([3, 1, 4, 1, 5])]
    out = ds.augment(batch, torch.Generator().manual_seed(7))
    assert out.shape == batch.shape and not torch.equal(out, batch)
    assert torch.equal(out, ds.augment(batch, torch.Generator().manual_seed(7)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augment_on_cuda_batch_with_cpu_generator() -> None:
    x = _batch()
    on_gpu = random_crop_flip(x.cuda(), torch.Generator().manual_seed(5))
    assert on_gpu.device.type == "cuda"
    # The draws come from the CPU generator, so the GPU result equals the CPU one bit for bit.
    assert torch.equal(on_gpu.cpu(), random_crop_flip(x, torch.Generator().manual_seed(5)))
