"""Datasets load offline, deterministically and standardized; partitions are disjoint, covering, skewed."""

from __future__ import annotations

import pytest
import torch

from bench.base.errors import UserError
from bench.core.data import DATASETS, DEFAULT_DATASET, Dataset, load_dataset, partition

# name -> (input shape, train size, test size)
EXPECTED = {
    "mnist": ((1, 28, 28), 4000, 1000),
    "digits": ((1, 8, 8), 1438, 359),
    "synthetic": ((32,), 4000, 1000),
}
# Read from --data-dir through torchvision's loaders; tested with tiny real-format files in
# tests/test_torchvision_data.py.
ON_DISK = {"cifar10", "cifar100", "mnist-full", "fashion-mnist", "imagefolder", "imagefolder-64", "wikitext2"}
TEXT = {"embedded-text"}  # language modelling, embedded: tests/test_lm.py


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def dataset(request: pytest.FixtureRequest) -> Dataset:
    return load_dataset(request.param, seed=0)


def test_registry_matches_expected() -> None:
    assert set(DATASETS) == set(EXPECTED) | ON_DISK | TEXT
    assert DEFAULT_DATASET in EXPECTED
    for name, spec in DATASETS.items():
        assert spec.name == name
        assert spec.description and "\n" not in spec.description
        assert spec.needs_data_dir == (name in ON_DISK)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_embedded_sets_ignore_data_dir_and_download(name: str, tmp_path) -> None:
    a = load_dataset(name, seed=1, data_dir=str(tmp_path), download=True)
    b = load_dataset(name, seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.augment is None
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing downloaded


def test_shapes_dtypes_and_split(dataset: Dataset) -> None:
    shape, n_train, n_test = EXPECTED[dataset.name]
    assert dataset.input_shape == shape
    assert dataset.x_train.shape == (n_train, *shape)
    assert dataset.x_test.shape == (n_test, *shape)
    assert dataset.x_train.dtype == dataset.x_test.dtype == torch.float32
    assert dataset.y_train.dtype == dataset.y_test.dtype == torch.int64
    assert dataset.y_train.shape == (n_train,) and dataset.y_test.shape == (n_test,)
    assert dataset.num_classes == 10
    assert torch.isfinite(dataset.x_train).all() and torch.isfinite(dataset.x_test).all()
    # Stratified: every class in both splits, in about the global 80/20 ratio.
    train_counts = torch.bincount(dataset.y_train, minlength=10)
    test_counts = torch.bincount(dataset.y_test, minlength=10)
    assert int(dataset.y_train.max()) == int(dataset.y_test.max()) == 9
    ratio = test_counts.double() / (train_counts + test_counts).double()
    assert torch.allclose(ratio, torch.full_like(ratio, n_test / (n_train + n_test)), atol=0.01)


def test_standardized_with_train_statistics(dataset: Dataset) -> None:
    # Per channel for images, per feature for vectors.
    dims = [0] + list(range(2, dataset.x_train.ndim))
    mean = dataset.x_train.double().mean(dim=dims)
    std = dataset.x_train.double().std(dim=dims)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-4)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-3)
    # The test set is transformed with the same statistics, so it is only roughly standardized.
    assert dataset.x_test.double().mean().abs() < 0.2


def test_train_and_test_disjoint() -> None:
    # MNIST images are distinct, so a shared image would mean the split leaked.
    ds = load_dataset("mnist", seed=0)
    train = {row.numpy().tobytes() for row in ds.x_train.flatten(1)}
    assert not any(row.numpy().tobytes() in train for row in ds.x_test.flatten(1))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_deterministic_per_seed(name: str) -> None:
    a, b, c = load_dataset(name, seed=3), load_dataset(name, seed=3), load_dataset(name, seed=4)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.y_train, c.y_train) or not torch.equal(a.x_train, c.x_train)
    # Each load owns its tensors, so a caller that edits one in place cannot corrupt the next load.
    a.x_train.zero_()
    assert torch.equal(b.x_train, load_dataset(name, seed=3).x_train)


def test_unknown_dataset_suggests_closest() -> None:
    with pytest.raises(UserError, match="did you mean 'mnist'") as info:
        load_dataset("mnsit")
    choices = "cifar10, cifar100, digits, embedded-text, fashion-mnist, imagefolder, imagefolder-64, mnist, "
    choices += "mnist-full, synthetic, wikitext2"
    assert "\n" not in str(info.value) and choices in str(info.value)
    with pytest.raises(UserError, match="did you mean 'imagefolder'"):
        load_dataset("imagenet")
    with pytest.raises(UserError, match="unknown dataset 'svhn'; use --dataset with one of: cifar10"):
        load_dataset("svhn")


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True])
def test_bad_seed(seed: object) -> None:
    with pytest.raises(UserError, match="seed"):
        load_dataset("synthetic", seed=seed)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ partition


def _labels(n_per_class: int = 100, classes: int = 10) -> torch.Tensor:
    return torch.arange(classes).repeat_interleave(n_per_class)


def _check_disjoint_covering(parts: list[torch.Tensor], n: int) -> None:
    assert all(p.dtype == torch.int64 and p.ndim == 1 for p in parts)
    everything = torch.cat(parts)
    assert everything.numel() == n
    assert torch.equal(everything.sort().values, torch.arange(n))


def _mean_label_tv(labels: torch.Tensor, parts: list[torch.Tensor], classes: int = 10) -> float:
    """Mean total-variation distance between each node's label histogram and the global one."""
    glob = torch.bincount(labels, minlength=classes).double()
    glob /= glob.sum()
    tvs = []
    for p in parts:
        h = torch.bincount(labels[p], minlength=classes).double()
        tvs.append(0.5 * (h / h.sum() - glob).abs().sum().item())
    return sum(tvs) / len(tvs)


@pytest.mark.parametrize("nodes", [1, 3, 7, 16])
def test_iid_disjoint_covering_balanced(nodes: int) -> None:
    labels = _labels()
    parts = partition(labels, nodes, "iid", alpha=1.0, seed=0)
    assert len(parts) == nodes
    _check_disjoint_covering(parts, labels.numel())
    sizes = [p.numel() for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_deterministic_and_seeded() -> None:
    labels = _labels()
    a = partition(labels, 4, "iid", alpha=1.0, seed=5)
    b = partition(labels, 4, "iid", alpha=1.0, seed=5)
    c = partition(labels, 4, "iid", alpha=1.0, seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    assert _mean_label_tv(labels, a) < 0.15


@pytest.mark.parametrize("nodes", [2, 8, 32])
@pytest.mark.parametrize("alpha", [0.01, 0.1, 1.0, 100.0])
def test_dirichlet_disjoint_covering_nonempty(nodes: int, alpha: float) -> None:
    labels = _labels()
    parts = partition(labels, nodes, "dirichlet", alpha=alpha, seed=1)
    assert len(parts) == nodes
    _check_disjoint_covering(parts, labels.numel())
    assert min(p.numel() for p in parts) >= 1


def test_dirichlet_nonempty_when_nodes_equal_samples() -> None:
    labels = _labels(n_per_class=3)
    parts = partition(labels, labels.numel(), "dirichlet", alpha=0.05, seed=0)
    _check_disjoint_covering(parts, labels.numel())
    assert all(p.numel() == 1 for p in parts)


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    labels = _labels()
    skewed = _mean_label_tv(labels, partition(labels, 10, "dirichlet", alpha=0.1, seed=0))
    mild = _mean_label_tv(labels, partition(labels, 10, "dirichlet", alpha=100.0, seed=0))
    assert skewed > 0.5 and mild < 0.15 and skewed > 4 * mild


def test_dirichlet_deterministic() -> None:
    labels = _labels()
    a = partition(labels, 8, "dirichlet", alpha=0.3, seed=2)
    b = partition(labels, 8, "dirichlet", alpha=0.3, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_partition_real_dataset_labels() -> None:
    ds = load_dataset("digits", seed=0)
    parts = partition(ds.y_train, 5, "dirichlet", alpha=0.5, seed=0)
    _check_disjoint_covering(parts, ds.y_train.numel())


@pytest.mark.parametrize(
    ("nodes", "scheme", "alpha", "match"),
    [
        (4, "shards", 1.0, "unknown partition scheme 'shards'"),
        (4, "dirichlett", 1.0, "did you mean 'dirichlet'"),
        (0, "iid", 1.0, "--nodes with an integer >= 1"),
        (-2, "dirichlet", 1.0, "--nodes with an integer >= 1"),
        (1001, "iid", 1.0, "--nodes <= 1000"),
        (4, "dirichlet", 0.0, "alpha must be"),
        (4, "dirichlet", -1.0, "alpha must be"),
        (4, "dirichlet", float("nan"), "alpha must be"),
    ],
)
def test_partition_user_errors(nodes: int, scheme: str, alpha: float, match: str) -> None:
    with pytest.raises(UserError, match=match) as info:
        partition(_labels(), nodes, scheme, alpha=alpha, seed=0)
    assert "\n" not in str(info.value)


def test_validation_split_is_held_out_seeded_and_stratified():
    from bench.core.data import hold_out

    full = load_dataset("digits", 3)
    a, b = hold_out(full, 0.2, 3), hold_out(full, 0.2, 3)
    n = len(full.y_train)
    assert len(a.y_val) == round(0.2 * n) and len(a.y_train) == n - len(a.y_val)
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.x_train, b.x_train)  # seeded
    assert not torch.equal(hold_out(full, 0.2, 4).y_val, a.y_val)
    # Disjoint and complete: the two splits are the training set, each sample once.
    rows = {tuple(r.tolist()) for r in full.x_train.reshape(n, -1)}
    got = [tuple(r.tolist()) for r in torch.cat([a.x_train, a.x_val]).reshape(n, -1)]
    assert len(got) == len(set(got)) == n and set(got) == rows
    # Stratified: every class keeps its share within one sample.
    for c in range(full.num_classes):
        share = int((full.y_train == c).sum()) * 0.2
        assert abs(int((a.y_val == c).sum()) - share) <= 1
    assert torch.equal(a.x_test, full.x_test)  # the test set is untouched
    assert hold_out(full, 0.0, 3) is full
    with pytest.raises(UserError, match="--val-fraction"):
        hold_out(full, 0.9999, 3)
