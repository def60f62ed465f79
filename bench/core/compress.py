"""Compressors an algorithm owns (Choco-SGD's and LEAD's `compressor` option), beside the cell's wire codec.

Each turns a flat float32 tensor into the exact bytes that travel (1-D uint8) and back; the comm layer moves and
counts those bytes (`Comm.gossip_encoded`), and the sender decodes its own message as its receivers do, so copies
that sender and receivers keep (Choco's x-hat, LEAD's h) stay identical. Randomness (QSGD's stochastic rounding)
is drawn once, on the sender, from the generator the comm layer passes.

- `none`: the float32 bytes themselves (identity).
- `sign`: scaled sign, mean(|x|) * sign(x) (Karimireddy et al., ICML 2019; Choco-SGD's sign compression): a float32
  scale and one bit per coordinate (sign(0) = +).
- `topk`: the k = max(1, round(ratio d)) coordinates of largest magnitude, as int32 indices and float32 values
  (8 k bytes; Choco-SGD's top-1 %).
- `qsgd`: QSGD with s levels (Alistarh et al., NeurIPS 2017), unbiased: ||x||_2 as float32, then per coordinate
  its sign and a level l in [0, s] rounded stochastically from s |x_i| / ||x||, value sign ||x|| l / s; each
  (level, sign) pair as one code of the narrowest of 2, 4, 8 or 16 bits that holds 2 s + 1 values (7 levels: 4
  bits). Elias coding, the paper's tighter wire format, is not used: the count is of these fixed-width codes.
- `codec`: the cell's codec (`--bits`, `--quantizer`: lattice or uniform; 32 bits = none), handled by the comm layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bench.core.codec import pack_bits, packed_bytes, unpack_bits

COMPRESSORS = ("codec", "none", "sign", "topk", "qsgd")


@dataclass(frozen=True)
class CompressorOptions:
    """The `compressor` keys an algorithm that owns its compression takes (as `--set choco.compressor=topk`)."""

    compressor: str = "codec"  # codec (the cell's: --bits, --quantizer), none, sign, topk or qsgd
    topk_ratio: float = 0.01  # topk: share of coordinates sent (Choco-SGD's deep-learning runs: 1 %)
    qsgd_levels: int = 7  # qsgd: levels s (7: sign and level in 4 bits)

    def __post_init__(self) -> None:
        if self.compressor not in COMPRESSORS:
            raise ValueError(f"compressor must be one of {', '.join(COMPRESSORS)}, got '{self.compressor}'")
        if not 0 < self.topk_ratio <= 1:
            raise ValueError(f"topk_ratio must be in (0, 1], got {self.topk_ratio}")
        if not 1 <= self.qsgd_levels <= 2**15 - 1:
            raise ValueError(f"qsgd_levels must be in [1, 32767], got {self.qsgd_levels}")

    def build(self) -> Compressor | None:
        """The compressor, or None for the cell's codec."""
        if self.compressor == "codec":
            return None
        if self.compressor == "topk":
            return TopK(self.topk_ratio)
        if self.compressor == "qsgd":
            return QSGD(self.qsgd_levels)
        return Sign() if self.compressor == "sign" else Identity()


class Compressor:
    name: str

    def wire_bytes(self, numel: int) -> int:
        raise NotImplementedError

    def encode(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, msg: torch.Tensor, numel: int) -> torch.Tensor:
        raise NotImplementedError


def _f32(values: torch.Tensor) -> torch.Tensor:
    return values.to(torch.float32).contiguous().view(torch.uint8)


class Identity(Compressor):
    name = "none"

    def wire_bytes(self, numel: int) -> int:
        return 4 * numel

    def encode(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return _f32(x.clone())

    def decode(self, msg: torch.Tensor, numel: int) -> torch.Tensor:
        return msg.view(torch.float32).clone()


class Sign(Compressor):
    name = "sign"

    def wire_bytes(self, numel: int) -> int:
        return 4 + (numel + 7) // 8

    def encode(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        scale = x.abs().mean() if x.numel() else torch.zeros(())
        bits = np.packbits((x >= 0).numpy(), bitorder="little")
        return torch.cat([_f32(scale.reshape(1)), torch.from_numpy(bits)])

    def decode(self, msg: torch.Tensor, numel: int) -> torch.Tensor:
        scale = msg[:4].clone().view(torch.float32)
        positive = np.unpackbits(msg[4:].numpy(), count=numel, bitorder="little")
        return torch.from_numpy(positive).to(torch.float32).mul_(2).sub_(1).mul_(scale)


class TopK(Compressor):
    name = "topk"

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio

    def k(self, numel: int) -> int:
        return min(numel, max(1, round(self.ratio * numel)))

    def wire_bytes(self, numel: int) -> int:
        return 8 * self.k(numel)

    def encode(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        index = torch.topk(x.abs(), self.k(x.numel()), sorted=True).indices.sort().values
        return torch.cat([index.to(torch.int32).view(torch.uint8), _f32(x[index])])

    def decode(self, msg: torch.Tensor, numel: int) -> torch.Tensor:
        k = self.k(numel)
        index = msg[: 4 * k].clone().view(torch.int32).long()
        out = torch.zeros(numel)
        out[index] = msg[4 * k :].clone().view(torch.float32)
        return out


class QSGD(Compressor):
    name = "qsgd"

    def __init__(self, levels: int) -> None:
        self.levels = levels
        self.bits = next(b for b in (2, 4, 8, 16) if 2 * levels + 1 < 2**b)  # codes 2 l + sign, l in [0, s]

    def wire_bytes(self, numel: int) -> int:
        return 4 + packed_bytes(numel, self.bits)

    def encode(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        norm = x.norm()
        scaled = x.abs() * (self.levels / norm) if norm > 0 else torch.zeros_like(x)
        level = torch.floor(scaled + torch.rand(x.numel(), generator=generator)).clamp_(0, self.levels)
        codes = level.to(torch.int32).mul_(2).add_((x < 0).to(torch.int32))
        return torch.cat([_f32(norm.reshape(1)), pack_bits(codes, self.bits)])

    def decode(self, msg: torch.Tensor, numel: int) -> torch.Tensor:
        norm = msg[:4].clone().view(torch.float32)
        codes = unpack_bits(msg[4:], self.bits, numel).to(torch.float32)  # 2 l + sign, exact in float32
        level = torch.floor(codes * 0.5)
        return codes.sub_(level * 2).mul_(-2).add_(1).mul_(level).mul_(norm / self.levels)  # (1 - 2 sign) l ||x|| / s

    def variance_bound(self, numel: int) -> float:
        """tau = 1 + min(d / s^2, sqrt(d) / s): E||Q(x) - x||^2 <= (tau - 1) ||x||^2 (Alistarh et al., Lemma 3.1);
        Q(x) / tau is a contraction, the rescaled QSGD Choco-SGD runs."""
        return 1 + min(numel / self.levels**2, math.sqrt(numel) / self.levels)
