"""Models build reproducibly from a seed, fit the dataset shapes they claim, and can learn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.base.errors import UserError
from bench.core.data import LANGUAGE_MODEL, load_dataset
from bench.core.models import MODELS, TORCHVISION_PREFIX, build_model, model_spec

MNIST, DIGITS, SYNTHETIC, CIFAR = (1, 28, 28), (1, 8, 8), (32,), (3, 32, 32)
COMPATIBLE = {
    "mlp": [MNIST, DIGITS, SYNTHETIC, CIFAR],
    "logreg": [MNIST, DIGITS, SYNTHETIC],
    "lenet5": [MNIST, CIFAR],
    "resnet20": [MNIST, DIGITS, CIFAR],
    "resnet18": [MNIST, DIGITS, CIFAR],
    "resnet50": [MNIST, CIFAR],  # 8x8 works too but is not worth a ResNet-50 forward pass here
    # A small torchvision classifier through the generic scheme; 1-channel inputs are repeated to 3.
    f"{TORCHVISION_PREFIX}mobilenet_v3_small": [MNIST, CIFAR],
}
# Language models (token windows in): tests/test_lm.py.
LANGUAGE_MODELS = sorted(n for n, spec in MODELS.items() if spec.task == LANGUAGE_MODEL)
NAMED = sorted(n for n in MODELS if not n.startswith(TORCHVISION_PREFIX) and n not in LANGUAGE_MODELS)
BUILDABLE = sorted(COMPATIBLE)  # NAMED plus one torchvision:NAME model


def test_registry() -> None:
    assert LANGUAGE_MODELS == ["lstm-lm", "transformer-base", "transformer-big", "transformer-lm"]
    assert set(MODELS) == set(NAMED) | set(LANGUAGE_MODELS) | {f"{TORCHVISION_PREFIX}NAME"}
    assert set(NAMED) | {f"{TORCHVISION_PREFIX}mobilenet_v3_small"} == set(COMPATIBLE)
    for name, spec in MODELS.items():
        assert spec.name == name
        assert spec.description and "\n" not in spec.description
    assert "torchvision:" in MODELS[f"{TORCHVISION_PREFIX}NAME"].description


@pytest.mark.parametrize(("name", "shape"), [(n, s) for n, shapes in COMPATIBLE.items() for s in shapes])
def test_forward_shape(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(name, shape, num_classes=10, seed=0)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10)
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


@pytest.mark.parametrize(("name", "params"), [("resnet18", 11_173_962), ("resnet50", 23_520_842)])
def test_cifar_resnet_structure(name: str, params: int) -> None:
    from torchvision.models import ResNet

    model = build_model(name, CIFAR, 10, seed=0)
    assert isinstance(model, ResNet)  # torchvision's class, so its state-dict keys
    # CIFAR stem: 3x3 stride-1 conv and no max-pool, so stage 1 sees the full 32x32 image.
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.in_channels == 3
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model.fc.out_features == 10
    assert sum(p.numel() for p in model.parameters()) == params  # the usual CIFAR ResNet counts
    # 1-channel images: the stem takes one channel, 3x3x64 fewer weights, nothing else changes.
    grey = build_model(name, MNIST, 10, seed=0)
    assert grey.conv1.in_channels == 1
    assert sum(p.numel() for p in grey.parameters()) == params - 2 * 9 * 64


def test_cifar_resnet_trains_on_small_grey_images() -> None:
    model = build_model("resnet18", MNIST, 10, seed=0)  # train mode, as the training loop uses it
    x, y = torch.randn(2, *MNIST), torch.tensor([3, 7])
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss) and model.conv1.weight.grad is not None


def test_torchvision_model_as_is() -> None:
    from torchvision.models import mobilenet_v3_small

    name = f"{TORCHVISION_PREFIX}mobilenet_v3_small"
    model = build_model(name, CIFAR, 7, seed=0)
    reference = mobilenet_v3_small(weights=None, num_classes=7)
    # Same architecture and parameter count as torchvision's own builder, in training mode.
    assert type(model) is type(reference) and model.training
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [
        (k, v.shape) for k, v in reference.state_dict().items()
    ]
    # 1-channel images are repeated to 3 in front of the unchanged network: no parameter added.
    grey = build_model(name, MNIST, 7, seed=0)
    assert sum(p.numel() for p in grey.parameters()) == sum(p.numel() for p in reference.parameters())
    x = torch.randn(2, *MNIST)
    grey.eval()
    with torch.no_grad():
        assert torch.equal(grey(x), grey[1](x.expand(-1, 3, -1, -1)))
    # Same seed, same weights whatever the channel count: only the wrapper differs.
    assert all(torch.equal(v, grey.state_dict()[f"1.{k}"]) for k, v in model.state_dict().items())


def test_torchvision_googlenet_gives_plain_logits_in_training_mode() -> None:
    # Built as is, GoogLeNet returns (logits, aux1, aux2) in training mode; the training loop wants logits.
    model = build_model(f"{TORCHVISION_PREFIX}googlenet", CIFAR, 10, seed=0)
    out = model(torch.randn(2, *CIFAR))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)


@pytest.mark.parametrize("name", BUILDABLE)
def test_same_seed_same_weights_other_seed_differs(name: str) -> None:
    shape = CIFAR
    a = build_model(name, shape, 10, seed=7).state_dict()
    b = build_model(name, shape, 10, seed=7).state_dict()
    c = build_model(name, shape, 10, seed=8).state_dict()
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # Every random-initialized tensor (all weights) must change with the seed; logreg starts at zero whatever it is.
    for key in a if name != "logreg" else ():
        if key.endswith("weight") and a[key].ndim > 1:
            assert not torch.equal(a[key], c[key]), key


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_weights_identical_in_a_fresh_process(tmp_path, name: str) -> None:
    import subprocess
    import sys

    script = (
        "import sys, torch; from bench.core.models import build_model; "
        f"torch.save(build_model('{name}', (3, 32, 32), 10, seed=11).state_dict(), sys.argv[1])"
    )
    path = tmp_path / "w.pt"
    subprocess.run([sys.executable, "-c", script, str(path)], check=True)
    other = torch.load(path)
    here = build_model(name, CIFAR, 10, seed=11).state_dict()
    assert here.keys() == other.keys()
    assert all(torch.equal(here[k], other[k]) for k in here)


@pytest.mark.parametrize("name", BUILDABLE)
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
        ("resnet18", SYNTHETIC, r"resnet18.*\(32,\).*--model mlp"),
        ("resnet50", (3, 4, 4), r"resnet50.*at least 8x8.*--model mlp"),
        ("torchvision:resnet18", SYNTHETIC, r"torchvision:resnet18.*1- or 3-channel.*--model mlp"),
        ("torchvision:resnet18", (2, 32, 32), r"torchvision:resnet18.*1- or 3-channel.*\(2, 32, 32\)"),
        # Too small for these architectures: caught by the build-time forward pass, not on the first step.
        ("torchvision:alexnet", CIFAR, r"'torchvision:alexnet' cannot process.*\(3, 32, 32\).*imagefolder-64"),
        ("torchvision:vit_b_16", MNIST, r"'torchvision:vit_b_16' cannot process.*patch size"),
    ],
)
def test_incompatible_shape(name: str, shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(UserError, match=match) as info:
        build_model(name, shape, 10, seed=0)
    assert "\n" not in str(info.value)


def test_unknown_model_suggests_closest() -> None:
    ours = (
        "lenet5, logreg, lstm-lm, mlp, resnet18, resnet20, resnet50, transformer-base, transformer-big, "
        "transformer-lm, or torchvision:NAME"
    )
    with pytest.raises(UserError, match=f"did you mean 'lenet5'.*--model with one of: {ours}"):
        build_model("lenet", MNIST, 10, seed=0)
    # A torchvision name without the prefix is pointed at the prefixed form.
    with pytest.raises(UserError, match="unknown model 'vgg16'; did you mean 'torchvision:vgg16'"):
        build_model("vgg16", MNIST, 10, seed=0)
    with pytest.raises(UserError, match="unknown torchvision model 'resnet19'; did you mean 'torchvision:resnet18'"):
        build_model("torchvision:resnet19", MNIST, 10, seed=0)
    with pytest.raises(UserError, match="unknown torchvision model 'NAME'"):
        build_model("torchvision:NAME", MNIST, 10, seed=0)
    with pytest.raises(UserError, match="unknown model 'zzz'; use --model") as info:
        build_model("zzz", MNIST, 10, seed=0)
    assert "\n" not in str(info.value)
    # Validation without building, for launchers.
    assert model_spec("torchvision:mobilenet_v3_small").name == "torchvision:mobilenet_v3_small"
    assert model_spec("resnet18") is MODELS["resnet18"]
    with pytest.raises(UserError, match="did you mean 'torchvision:resnet18'"):
        model_spec("torchvision:resnet19")


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


def test_logreg_is_one_linear_layer_started_at_zero() -> None:
    """The convex track: softmax regression, so the loss is convex in its weights; every node starts at 0."""
    model = build_model("logreg", (1, 8, 8), num_classes=10, seed=3)
    (linear,) = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert (linear.in_features, linear.out_features) == (64, 10)
    assert all(float(p.abs().max()) == 0.0 for p in model.parameters())
