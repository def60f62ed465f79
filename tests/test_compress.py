"""The compressors an algorithm owns (`bench.core.compress`): exact byte counts, what each keeps of its input, the
sender's randomness, and QSGD's unbiasedness."""

from __future__ import annotations

import pytest
import torch

from bench.core.compress import QSGD, CompressorOptions, Sign, TopK


def _x(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["none", "sign", "topk", "qsgd"])
@pytest.mark.parametrize("n", [1, 7, 8, 1000])
def test_messages_are_bytes_of_the_closed_form_size_and_decode_alike(name, n):
    c = CompressorOptions(compressor=name, topk_ratio=0.1).build()
    x = _x(n)
    msg = c.encode(x, torch.Generator().manual_seed(1))
    assert msg.dtype == torch.uint8 and msg.dim() == 1 and msg.numel() == c.wire_bytes(n)
    assert torch.equal(msg, c.encode(x, torch.Generator().manual_seed(1)))  # the same stream, the same bytes
    y = c.decode(msg, n)
    assert y.dtype == torch.float32 and y.shape == x.shape
    if name == "none":
        assert torch.equal(y, x)


def test_sign_is_the_scaled_sign():
    x = torch.tensor([0.5, -2.0, 0.0, 1.5, -0.25])
    y = Sign().decode(Sign().encode(x, torch.Generator()), 5)
    assert torch.allclose(y, torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0]) * x.abs().mean())


def test_topk_keeps_the_largest_coordinates_exactly():
    x = _x(200)
    c = TopK(0.05)
    y = c.decode(c.encode(x, torch.Generator()), 200)
    kept = y != 0
    assert int(kept.sum()) == 10 and torch.equal(y[kept], x[kept])
    assert x[kept].abs().min() >= x[~kept].abs().max()


def test_qsgd_is_unbiased_with_its_levels_and_variance_bound():
    x, c, gen = _x(50), QSGD(7), torch.Generator().manual_seed(2)
    assert c.bits == 4  # 2 * 7 + 1 = 15 codes
    draws = torch.stack([c.decode(c.encode(x, gen), 50) for _ in range(4000)])
    levels = draws.abs() * 7 / x.norm()
    assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.max() <= 7 + 1e-4
    assert torch.allclose(draws.mean(0), x, atol=0.05 * x.norm() / 50**0.5)
    variance = ((draws - x) ** 2).sum(1).mean()
    assert variance <= (c.variance_bound(50) - 1) * x.norm() ** 2


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="compressor must be one of"):
        CompressorOptions(compressor="top")
    with pytest.raises(ValueError, match="topk_ratio"):
        CompressorOptions(compressor="topk", topk_ratio=0)
