"""Models build reproducibly from a seed, fit the dataset shapes they claim, and can learn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.data import load_dataset
from bench.errors import UserError
from bench.models import MODELS, build_model

MNIST, DIGITS, SYNTHETIC, CIFAR = (1, 28, 28), (1, 8, 8), (32,), (3, 32, 32)
COMPATIBLE = {
    "mlp": [MNIST, DIGITS, SYNTHETIC, CIFAR],
    "lenet5": [MNIST, CIFAR],
    "resnet20": [MNIST, DIGITS, CIFAR],
}


def test_registry() -> None:
    assert set(MODELS) == set(COMPATIBLE)
    for name, spec in MODELS.items():
        assert spec.name == name
        assert spec.description and "\n" not in spec.description


@pytest.mark.parametrize(("name", "shape"), [(n, s) for n, shapes in COMPATIBLE.items() for s in shapes])
def test_forward_shape(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(name, shape, num_classes=10, seed=0)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(4, *shape))
    assert out.shape == (4, 10)
    assert torch.isfinite(out).all()


def test_forward_on_real_dataset_shapes() -> None:
    for dataset in ("mnist", "digits", "synthetic"):
        ds = load_dataset(dataset, seed=0)
        for name, shapes in COMPATIBLE.items():
            if ds.input_shape in shapes:
                with torch.no_grad():
                    out = build_model(name, ds.input_shape, ds.num_classes, seed=0).eval()(ds.x_test[:3])
                assert out.shape == (3, ds.num_classes)


def test_resnet20_structure() -> None:
    model = build_model("resnet20", CIFAR, 10, seed=0)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) + len(linears) == 20  # 1 + 3 stages x 3 blocks x 2 + 1 fc
    assert {c.out_channels for c in convs} == {16, 32, 64}
    # Option-A shortcuts carry no parameters: the paper's 0.27M.
    assert sum(p.numel() for p in model.parameters()) == 269_722  # 267,696 conv + 1,376 BN + 650 fc


@pytest.mark.parametrize("name", sorted(MODELS))
def test_same_seed_same_weights_other_seed_differs(name: str) -> None:
    shape = CIFAR
    a = build_model(name, shape, 10, seed=7).state_dict()
    b = build_model(name, shape, 10, seed=7).state_dict()
    c = build_model(name, shape, 10, seed=8).state_dict()
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # Every random-initialized tensor (all weights) must change with the seed.
    for key in a:
        if key.endswith("weight") and a[key].ndim > 1:
            assert not torch.equal(a[key], c[key]), key


def test_weights_identical_in_a_fresh_process(tmp_path) -> None:
    import subprocess
    import sys

    script = (
        "import sys, torch; from bench.models import build_model; "
        "torch.save(build_model('resnet20', (3, 32, 32), 10, seed=11).state_dict(), sys.argv[1])"
    )
    path = tmp_path / "w.pt"
    subprocess.run([sys.executable, "-c", script, str(path)], check=True)
    other = torch.load(path)
    here = build_model("resnet20", CIFAR, 10, seed=11).state_dict()
    assert all(torch.equal(here[k], other[k]) for k in here)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_global_rng_untouched(name: str) -> None:
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    build_model(name, CIFAR, 10, seed=0)
    assert torch.equal(torch.rand(5), expected)


@pytest.mark.parametrize(
    ("name", "shape", "match"),
    [
        ("lenet5", DIGITS, r"lenet5.*\(1, 8, 8\).*--model mlp"),
        ("lenet5", SYNTHETIC, r"lenet5.*\(32,\).*--model mlp"),
        ("resnet20", SYNTHETIC, r"resnet20.*\(32,\).*--model mlp"),
        ("resnet20", (3, 4, 4), r"resnet20.*at least 8x8.*--model mlp"),
    ],
)
def test_incompatible_shape(name: str, shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(UserError, match=match) as info:
        build_model(name, shape, 10, seed=0)
    assert "\n" not in str(info.value)


def test_unknown_model_suggests_closest() -> None:
    with pytest.raises(UserError, match="did you mean 'lenet5'.*--model with one of: lenet5, mlp, resnet20"):
        build_model("lenet", MNIST, 10, seed=0)
    with pytest.raises(UserError, match="unknown model 'vgg16'"):
        build_model("vgg16", MNIST, 10, seed=0)


def test_bad_seed() -> None:
    with pytest.raises(UserError, match="seed"):
        build_model("mlp", MNIST, 10, seed=-1)


def test_mlp_learns_digits() -> None:
    ds = load_dataset("digits", seed=0)
    model = build_model("mlp", ds.input_shape, ds.num_classes, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = torch.randint(0, ds.y_train.numel(), (64,), generator=gen)
        loss = F.cross_entropy(model(ds.x_train[idx]), ds.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = (model(ds.x_test).argmax(dim=1) == ds.y_test).double().mean().item()
    assert accuracy > 0.9, accuracy
