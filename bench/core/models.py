"""Models for the benchmark, built with seeded, bit-reproducible initial weights.

Decentralized SGD starts every node from the same weights, so `build_model` must give identical
tensors for the same arguments in any process. It builds inside `torch.random.fork_rng` with the
seed applied, so every initializer (PyTorch's defaults and the explicit ones below) draws from one
seeded CPU stream and the caller's global RNG state is restored afterwards. Models are always built
on the CPU; move them to a device afterwards.

Model averaging and gossip communicate and average `parameters()` only. BatchNorm running statistics
are buffers: each node keeps its own, estimated from its local data.

Beyond the named models, `torchvision:NAME` builds any torchvision classification model
(`torchvision.models.list_models(module=torchvision.models)`, e.g. `torchvision:mobilenet_v3_small`)
unchanged, with `weights=None` (nothing is downloaded) and `num_classes` from the dataset. The prefix
keeps the two families apart: `resnet18` is ours (CIFAR stem), `torchvision:resnet18` is the ImageNet one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.base.console import suggestion
from bench.base.errors import UserError
from bench.core.data import CLASSIFICATION, LANGUAGE_MODEL, check_seed


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: `build(input_shape, num_classes)` returns a freshly initialized module."""

    name: str
    description: str  # one line for `swarmbench list`
    build: Callable[[tuple[int, ...], int], nn.Module]
    task: str = CLASSIFICATION  # the datasets it fits (bench.core.data: CLASSIFICATION or LANGUAGE_MODEL)


def _shape_error(model: str, need: str, input_shape: tuple[int, ...], instead: str) -> UserError:
    return UserError(f"model '{model}' needs {need} but the dataset gives inputs of shape {input_shape}; {instead}")


# ----------------------------------------------------------------------------------------------------- MLP


def _build_mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    d = math.prod(input_shape)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(d, 128),
        nn.ReLU(),
        nn.Linear(128, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


# ------------------------------------------------------------------------------------------------- LeNet-5


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max-pooling; the classifier's input size follows the image size."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, kernel_size=5, padding=2),  # keeps H x W
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),  # shrinks by 4
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        # 28x28 -> 16*5*5 = 400 (classic MNIST LeNet); 32x32 (CIFAR) -> 16*6*6 = 576.
        flat = 16 * ((h // 2 - 4) // 2) * ((w // 2 - 4) // 2)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _build_lenet5(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 3 or input_shape[1] < 28 or input_shape[2] < 28:
        instead = "use --model mlp or --model resnet20 instead" if len(input_shape) == 3 else "use --model mlp"
        raise _shape_error("lenet5", "images (C, H, W) of at least 28x28", input_shape, instead)
    c, h, w = input_shape
    return LeNet5((c, h, w), num_classes)


# ----------------------------------------------------------------------------------------------- ResNet-20


class _PadShortcut(nn.Module):
    """Option-A shortcut: subsample spatially and zero-pad the new channels (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = out_channels - in_channels
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, *self.pad))


class _BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut: nn.Module = (
            _PadShortcut(in_channels, out_channels, stride) if needs_projection else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (He et al. 2016, sec. 4.2): 3 stages x 3 blocks, 16/32/64 channels, GAP, FC."""

    def __init__(self, in_channels: int, num_classes: int, blocks_per_stage: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers: list[nn.Module] = []
        channels = 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks_per_stage):
                layers.append(_BasicBlock(channels, width, stride if i == 0 else 1))
                channels = width
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        # He init as in the paper; this draws from the seeded stream build_model sets up.
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def _build_resnet20(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 3 or input_shape[1] < 8 or input_shape[2] < 8:
        raise _shape_error("resnet20", "images (C, H, W) of at least 8x8", input_shape, "use --model mlp")
    return ResNet20(input_shape[0], num_classes)


# ------------------------------------------------------------------------------ ResNet-18/50, CIFAR stem


def _build_cifar_resnet(arch: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """torchvision's ResNet-18/50 with the usual CIFAR stem: a 3x3 stride-1 conv and no max-pool.

    The ImageNet stem (7x7 stride-2 conv + max-pool) shrinks a 32x32 image to 8x8 before the first
    block and to 1x1 at the last stage, which costs accuracy on small images; the CIFAR stem keeps
    32x32 through stage 1 and ends at 4x4 (about 16x the compute of the ImageNet stem at this size).
    The stem conv takes the dataset's channel count directly, so 1-channel images need no adapter.
    Everything after the stem, and every key of the state dict, is torchvision's.
    """
    if len(input_shape) != 3 or input_shape[1] < 8 or input_shape[2] < 8:
        raise _shape_error(arch, "images (C, H, W) of at least 8x8", input_shape, "use --model mlp")
    from torchvision import models

    model = models.get_model(arch, weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    # The same init torchvision gives its convolutions, drawn from the seeded stream.
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


# ----------------------------------------------------------------------------- any torchvision classifier

TORCHVISION_PREFIX = "torchvision:"

# Builder arguments some torchvision models need to train from scratch with one output tensor:
# GoogLeNet and Inception-v3 otherwise return (logits, aux logits) tuples in training mode and warn
# that their default init will change.
_TORCHVISION_KWARGS: dict[str, dict[str, object]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def _torchvision_names() -> list[str]:
    """torchvision's classification models (detection, segmentation, video and quantized ones excluded)."""
    from torchvision import models

    return list(models.list_models(module=models))


class _RepeatChannels(nn.Module):
    """Feeds a 1-channel image to a 3-channel network by repeating it; no parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1)


def _build_torchvision(tv_name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """torchvision model `tv_name`, randomly initialized, checked by one forward pass on the input shape.

    1-channel images are repeated to 3 channels in front of the unchanged network rather than
    replacing its first conv: models name and shape their stems differently (conv1, features[0][0],
    conv_proj, ...), and repeating works for all of them while keeping torchvision's architecture and
    parameter count. ViT and MaxViT are told the image size, which they fix at construction.
    """
    from torchvision import models

    model_name = TORCHVISION_PREFIX + tv_name
    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise _shape_error(model_name, "1- or 3-channel images (C, H, W)", input_shape, "use --model mlp")
    _, h, w = input_shape
    kwargs: dict[str, object] = dict(_TORCHVISION_KWARGS.get(tv_name, {}))
    if tv_name.startswith("vit_"):
        kwargs["image_size"] = h  # ViT wants square images; a non-square one fails the check below
    elif tv_name.startswith("maxvit_"):
        kwargs["input_size"] = (h, w)
    instead = "use larger images (e.g. --dataset imagefolder-64) or another model"
    try:
        net = models.get_model(tv_name, weights=None, num_classes=num_classes, **kwargs)
        model: nn.Module = nn.Sequential(_RepeatChannels(), net) if input_shape[0] == 1 else net
        # Many torchvision models downsample past 1x1 or fix their input size, and would otherwise
        # fail on the first training step on every node; one eval-mode pass (no RNG, no BatchNorm
        # update) turns that into a one-line error here.
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape))
    except (RuntimeError, ValueError, AssertionError) as e:
        reason = " ".join(str(e).split())[:200] or type(e).__name__  # one line, bounded
        raise UserError(
            f"model '{model_name}' cannot process the dataset's inputs of shape {input_shape} ({reason}); {instead}"
        ) from e
    model.train()
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        raise ValueError(f"{model_name} gave {type(out).__name__} instead of (1, {num_classes}) logits")  # a bug
    return model


def _build_torchvision_placeholder(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    raise UserError(
        f"replace NAME in '{TORCHVISION_PREFIX}NAME' with a torchvision model, e.g. --model "
        f"{TORCHVISION_PREFIX}mobilenet_v3_small"
    )


# ------------------------------------------------------------------------------------------ language models
# Input: (B, L) int64 token ids; output: (B, L, vocab) next-token logits. No dropout: the training loop's randomness
# comes from seeded generators only, and the short runs of a benchmark barely overfit. No hidden state is carried from
# one window to the next (each node draws shuffled windows), so the LSTM starts every window from zeros.


class TransformerLM(nn.Module):
    """A small causal Transformer language model (Vaswani et al. 2017, decoder-only as in GPT): token and learned
    position embeddings, pre-norm `nn.TransformerEncoder` layers under a causal mask, and an output layer that shares
    the token embedding's weights when `tie` (Press & Wolf 2017). The SwarmSGD paper's experiments include Transformer
    models; this is the same kind of model at a size a CPU trains in minutes."""

    def __init__(
        self, vocab: int, length: int, dim: int = 128, layers: int = 2, heads: int = 4, ff: int = 256, tie: bool = True
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(length, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)
        self.out = nn.Linear(dim, vocab)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)
        if tie:
            self.out.weight = self.embed.weight
        # True above the diagonal: position i attends to positions <= i. A bool buffer, so the evaluation's averaging
        # of floating-point buffers (BatchNorm statistics) leaves it alone.
        causal = torch.ones(length, length, dtype=torch.bool).triu(1)
        self.register_buffer("mask", causal, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        h = self.embed(x) + self.pos[:length]
        h = self.encoder(h, mask=self.mask[:length, :length], is_causal=True)
        return self.out(h)


class LSTMLM(nn.Module):
    """An LSTM language model as MLBench's reference task (Merity et al.'s AWD-LSTM without its dropouts): embedding,
    stacked LSTM, linear decoder tied to the embedding when `tie` (Inan et al. 2017; needs hidden == dim)."""

    def __init__(self, vocab: int, dim: int = 128, hidden: int = 128, layers: int = 2, tie: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, vocab)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        if tie:
            if hidden != dim:
                raise ValueError(f"tied weights need hidden == dim, got {hidden} and {dim}")  # a caller bug
            self.out.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(x))
        return self.out(h)


class Seq2SeqTransformer(nn.Module):
    """The Transformer of Vaswani et al. 2017 (`nn.Transformer`: encoder-decoder, post-norm, ReLU) with shared
    source/target/output embeddings (their sec. 3.4), at the paper's base or big dimensions; the parameter counts are
    the paper's (base 65M and big 213M with a 37k vocabulary). Trained here as a language model on token windows: the
    window is both the source and the decoder's input, and every attention (encoder self-attention, decoder
    self-attention, cross-attention) is causal, so position i never sees a token after i and predicts token i + 1."""

    def __init__(self, vocab: int, length: int, dim: int, heads: int, layers: int, ff: int) -> None:
        super().__init__()
        self.scale = math.sqrt(dim)
        self.embed = nn.Embedding(vocab, dim)
        nn.init.normal_(self.embed.weight, std=dim**-0.5)
        self.transformer = nn.Transformer(dim, heads, layers, layers, ff, dropout=0.0, batch_first=True)
        self.register_buffer("position", _sinusoids(length, dim), persistent=False)
        self.register_buffer("mask", torch.ones(length, length, dtype=torch.bool).triu(1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        h = self.embed(x) * self.scale + self.position[:length]
        mask = self.mask[:length, :length]
        out = self.transformer(h, h, src_mask=mask, tgt_mask=mask, memory_mask=mask)
        return out @ self.embed.weight.t()


def _sinusoids(length: int, dim: int) -> torch.Tensor:
    """Fixed sinusoidal position encodings (Vaswani et al. 2017, sec. 3.5)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10_000.0) / dim))
    out = torch.zeros(length, dim)
    out[:, 0::2], out[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return out


# (dim, heads, layers per stack, feed-forward): Vaswani et al. 2017, Table 3, rows "base" and "big".
TRANSFORMER_SIZES = {"transformer-base": (512, 8, 6, 2048), "transformer-big": (1024, 16, 6, 4096)}


def _build_seq2seq(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    _check_tokens(name, input_shape)
    return Seq2SeqTransformer(num_classes, input_shape[0], *TRANSFORMER_SIZES[name])


def _check_tokens(name: str, input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 1:
        raise _shape_error(
            name, "token windows (L,)", input_shape, "use a language-model dataset such as embedded-text"
        )


def _build_logreg(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multinomial logistic regression: one linear layer on flattened inputs, started at zero (the loss is convex
    in the weights, so theory about convex objectives applies; every node starts from the same point anyway)."""
    layer = nn.Linear(math.prod(input_shape), num_classes)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return nn.Sequential(nn.Flatten(), layer)


def _build_transformer_lm(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    _check_tokens("transformer-lm", input_shape)
    return TransformerLM(num_classes, input_shape[0])


def _build_lstm_lm(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    _check_tokens("lstm-lm", input_shape)
    return LSTMLM(num_classes)


def loss_of(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of a model's logits against its targets: (B, C) logits and one label per sample, or a
    language model's (B, L, V) logits and a next token per position (each token is one prediction)."""
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction=reduction)


# -------------------------------------------------------------------------------------------------- registry

MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(
        name="mlp",
        description="2 hidden layers of 128 ReLU units on flattened inputs; any input shape",
        build=_build_mlp,
    ),
    "logreg": ModelSpec(
        name="logreg",
        description="multinomial logistic regression (one linear layer, zero init): a convex loss; any input shape",
        build=_build_logreg,
    ),
    "lenet5": ModelSpec(
        name="lenet5",
        description="LeNet-5 (2 conv + 3 fc, ReLU, max-pool); images of at least 28x28",
        build=_build_lenet5,
    ),
    "resnet20": ModelSpec(
        name="resnet20",
        description="CIFAR ResNet-20 (He et al. 2016), option-A shortcuts, BatchNorm; images of at least 8x8",
        build=_build_resnet20,
    ),
    "resnet18": ModelSpec(
        name="resnet18",
        description="torchvision ResNet-18 with a CIFAR stem (3x3 stride-1 conv, no max-pool); images of at least 8x8",
        build=functools.partial(_build_cifar_resnet, "resnet18"),
    ),
    "resnet50": ModelSpec(
        name="resnet50",
        description="torchvision ResNet-50 with a CIFAR stem (3x3 stride-1 conv, no max-pool); images of at least 8x8",
        build=functools.partial(_build_cifar_resnet, "resnet50"),
    ),
    f"{TORCHVISION_PREFIX}NAME": ModelSpec(
        name=f"{TORCHVISION_PREFIX}NAME",
        description="any torchvision classifier as is, e.g. torchvision:mobilenet_v3_small; random init, "
        "1-channel images repeated to 3",
        build=_build_torchvision_placeholder,
    ),
    "transformer-lm": ModelSpec(
        name="transformer-lm",
        description="causal Transformer LM: 2 pre-norm layers, d=128, 4 heads, ff 256, tied embeddings; token windows",
        build=_build_transformer_lm,
        task=LANGUAGE_MODEL,
    ),
    "transformer-base": ModelSpec(
        name="transformer-base",
        description="Transformer base (Vaswani et al. 2017): 6+6 layers, d=512, 8 heads, ff 2048, shared embeddings; "
        "token windows",
        build=functools.partial(_build_seq2seq, "transformer-base"),
        task=LANGUAGE_MODEL,
    ),
    "transformer-big": ModelSpec(
        name="transformer-big",
        description="Transformer big (Vaswani et al. 2017): 6+6 layers, d=1024, 16 heads, ff 4096, shared embeddings; "
        "token windows",
        build=functools.partial(_build_seq2seq, "transformer-big"),
        task=LANGUAGE_MODEL,
    ),
    "lstm-lm": ModelSpec(
        name="lstm-lm",
        description="LSTM LM (MLBench): embedding 128, 2 LSTM layers of 128, tied decoder; token windows",
        build=_build_lstm_lm,
        task=LANGUAGE_MODEL,
    ),
}


def _unknown_model(name: str) -> UserError:
    """A one-line UserError for an unknown model name, suggesting the closest valid one."""
    ours = [n for n in MODELS if not n.startswith(TORCHVISION_PREFIX)]
    tv_names = _torchvision_names()
    if name.startswith(TORCHVISION_PREFIX):
        tv_name = name[len(TORCHVISION_PREFIX) :]
        match = suggestion(tv_name, tv_names)
        hint = f"did you mean '{TORCHVISION_PREFIX}{match}'? " if match else ""
        return UserError(
            f"unknown torchvision model '{tv_name}'; {hint}use --model {TORCHVISION_PREFIX}NAME with NAME from "
            "torchvision.models.list_models(module=torchvision.models), e.g. mobilenet_v3_small"
        )
    close = suggestion(name, ours)
    if name in tv_names:  # a torchvision name without the prefix
        close = TORCHVISION_PREFIX + name
    elif close is None and (match := suggestion(name, tv_names)):
        close = TORCHVISION_PREFIX + match
    hint = f"did you mean '{close}'? " if close else ""
    return UserError(
        f"unknown model '{name}'; {hint}use --model with one of: {', '.join(sorted(ours))}, "
        f"or {TORCHVISION_PREFIX}NAME for a torchvision classifier"
    )


def model_spec(name: str) -> ModelSpec:
    """The registry entry for `name`, including `torchvision:NAME`; UserError for an unknown name.

    Cheap (no model is built), so a launcher can validate --model before starting workers.
    """
    if name.startswith(TORCHVISION_PREFIX):
        tv_name = name[len(TORCHVISION_PREFIX) :]
        if tv_name not in _torchvision_names():
            raise _unknown_model(name)
        return ModelSpec(
            name=name,
            description=f"torchvision's {tv_name}, random init",
            build=functools.partial(_build_torchvision, tv_name),
        )
    spec = MODELS.get(name)
    if spec is None:
        raise _unknown_model(name)
    return spec


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """Build model `name` on the CPU with weights fixed by `seed`, leaving the global RNG untouched.

    `name` is a key of MODELS or `torchvision:NAME` for any torchvision classification model.
    """
    spec = model_spec(name)
    check_seed(seed)
    shape = tuple(int(s) for s in input_shape)
    if not shape or min(shape) < 1 or num_classes < 1:
        raise ValueError(f"bad input shape {shape} or class count {num_classes}")  # a caller bug
    # Models are built on the CPU, so only the CPU generator is forked and seeded: torch.manual_seed
    # would also reseed every CUDA generator, which fork_rng(devices=[]) does not restore.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return spec.build(shape, num_classes)


class SharedModule:
    """One module that many nodes of one process train in turn (the simulator's thousands of virtual nodes).

    Every node owns only its flat parameter and gradient buffers and its own buffers (BatchNorm statistics), which
    `node_model` hands out as a `BorrowedModel`; a node's forward pass first puts its tensors into this one module
    (`lend`), so autograd builds the same graph with the node's tensors as its leaves and N nodes cost N sets of
    buffers instead of N modules. `scratch` is the evaluation's model, shared by all nodes (evaluation loads weights
    into it and scores them without letting another node run in between).
    """

    def __init__(self, name: str, input_shape: tuple[int, ...], num_classes: int, seed: int) -> None:
        self.module = build_model(name, input_shape, num_classes, seed)
        self.scratch = build_model(name, input_shape, num_classes, seed)
        params = list(self.module.parameters())  # tied weights once, as `flatten_model` lays them out
        buffers = list(self.module.buffers())
        self.shapes = [(p.shape, p.numel()) for p in params]
        self.initial = torch.cat([p.detach().reshape(-1) for p in params]) if params else torch.zeros(0)
        self.initial_buffers = [b.detach().clone() for b in buffers]
        # Where each tensor sits: (submodule, attribute, index into the node's parameters + buffers), every place
        # of a tied weight included.
        index = {id(t): k for k, t in enumerate(params + buffers)}
        self.places: list[tuple[nn.Module, str, int]] = []
        for _, mod in self.module.named_modules(remove_duplicate=False):
            for attr, t in [*mod._parameters.items(), *mod._buffers.items()]:
                if t is not None:
                    self.places.append((mod, attr, index[id(t)]))

    def node_model(self) -> tuple[BorrowedModel, torch.Tensor, torch.Tensor]:
        """(a node's model, its flat parameters, its flat gradients): the seed's initial weights, as
        `build_model` + `flatten_model` give them (the same values, the same layout)."""
        flat = self.initial.clone()
        grads = torch.zeros_like(flat)
        return BorrowedModel(self, flat, grads, [b.clone() for b in self.initial_buffers]), flat, grads

    def lend(self, tensors: list[torch.Tensor]) -> nn.Module:
        """The module, running on `tensors` (a node's parameters, then its buffers). `setattr` as a module's own
        code would assign them, so modules that cache their weights (an LSTM's flat weights) follow."""
        for mod, attr, k in self.places:
            setattr(mod, attr, tensors[k])
        return self.module


class BorrowedModel:
    """A node's model inside a `SharedModule`: its parameters are leaves viewing the node's flat buffer, their
    gradients views of its flat gradient buffer (as `flatten_model` arranges for a module of its own); calling it
    runs the shared module on them. It offers what the training loop and the algorithms use of a module:
    calling it, `parameters()`, `buffers()`."""

    __slots__ = ("_shared", "_tensors", "_nparams")

    def __init__(
        self, shared: SharedModule, flat: torch.Tensor, grads: torch.Tensor, buffers: list[torch.Tensor]
    ) -> None:
        self._shared = shared
        tensors: list[torch.Tensor] = []
        offset = 0
        for shape, n in shared.shapes:
            p = nn.Parameter(flat[offset : offset + n].view(shape))  # a leaf sharing the flat buffer's storage
            p.grad = grads[offset : offset + n].view(shape)
            tensors.append(p)
            offset += n
        self._nparams = len(tensors)
        self._tensors = tensors + buffers

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._shared.lend(self._tensors)(x)

    def parameters(self):
        return iter(self._tensors[: self._nparams])

    def buffers(self):
        return iter(self._tensors[self._nparams :])
