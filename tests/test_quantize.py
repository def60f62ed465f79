"""Tests for bench.core.codec: bit packing, wire sizes, lattice decoding and failure detection
(Davies et al. 2021), unbiased uniform quantization, determinism and error reporting."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

from bench.base.errors import UserError
from bench.core.codec import (
    BITS,
    HEADER_BYTES_PER_BUCKET,
    QUANTIZERS,
    Codec,
    CodecConfig,
    decodable_radius,
    pack_bits,
    packed_bytes,
    suggest_eps,
    unpack_bits,
)

SIZES = (1, 7, 1023, 1024, 1025, 5000)
LOW_BITS = (2, 4, 8, 16)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _model(n: int, seed: int = 0, scale: float = 0.05) -> torch.Tensor:
    return torch.randn(n, generator=_gen(seed)) * scale


def _within(x: torch.Tensor, radius: float, seed: int) -> torch.Tensor:
    """A reference strictly inside ||ref - x||_inf < radius, with some coordinates near the edge."""
    noise = (torch.rand(x.numel(), generator=_gen(seed)) * 2 - 1) * (0.99 * radius)
    noise[:: max(1, x.numel() // 7)] = 0.99 * radius  # exercise the boundary region too
    return x + noise


def _lattice_tol(eps: float, x: torch.Tensor, randomized: bool = False) -> float:
    # eps/2 (eps randomized) plus float32 rounding of x/eps and of k*eps.
    base = eps if randomized else eps / 2
    return base * (1 + 1e-3) + 4 * float(x.abs().max()) * 2.0**-23


# ---- bit packing ---------------------------------------------------------------------------------


def _np_pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Independent reference: little-endian bit order, first code in the lowest bits."""
    codes = codes.astype(np.int64) & ((1 << bits) - 1)
    if bits == 16:
        return codes.astype("<u2").view(np.uint8)
    per = 8 // bits
    padded = np.zeros(-(-len(codes) // per) * per, dtype=np.int64)
    padded[: len(codes)] = codes
    shifts = np.arange(per) * bits
    return (padded.reshape(-1, per) << shifts).sum(1).astype(np.uint8)


@pytest.mark.parametrize("bits", LOW_BITS)
@pytest.mark.parametrize("n", (0,) + SIZES)
def test_pack_unpack_round_trip(bits: int, n: int) -> None:
    codes = torch.randint(0, 2**bits, (n,), generator=_gen(n + bits), dtype=torch.int32)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_bytes(n, bits) == math.ceil(n * bits / 8)
    np.testing.assert_array_equal(packed.numpy(), _np_pack(codes.numpy(), bits))
    back = unpack_bits(packed, bits, n)
    np.testing.assert_array_equal(back.to(torch.int64).numpy(), codes.numpy())
    as_float = unpack_bits(packed, bits, n, out=torch.empty(n))
    np.testing.assert_array_equal(as_float.numpy(), codes.numpy().astype(np.float32))


@pytest.mark.parametrize("bits", LOW_BITS)
def test_pack_takes_integers_modulo(bits: int) -> None:
    k = torch.randint(-(2**20), 2**20, (1001,), generator=_gen(3), dtype=torch.int32)
    back = unpack_bits(pack_bits(k, bits), bits, k.numel()).to(torch.int64)
    np.testing.assert_array_equal(back.numpy(), k.numpy().astype(np.int64) % 2**bits)


def test_pack_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        pack_bits(torch.zeros(4), 8)  # float codes
    with pytest.raises(ValueError):
        pack_bits(torch.zeros(4, dtype=torch.int32), 3)
    with pytest.raises(ValueError):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 4, 7)  # 7 codes need 4 bytes


# ---- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_wire_bytes_matches_encode(bits: int, quantizer: str) -> None:
    for bucket in (1024, 100, 3):
        codec = Codec(CodecConfig(bits=bits, quantizer=quantizer, bucket=bucket))
        for n in (0,) + SIZES:
            msg = codec.encode(_model(n), generator=_gen(n))
            assert msg.dtype == torch.uint8 and msg.dim() == 1
            assert msg.numel() == codec.wire_bytes(n), (bits, quantizer, bucket, n)
            expected = (
                4 * n if bits == 32 else HEADER_BYTES_PER_BUCKET * math.ceil(n / bucket) + math.ceil(n * bits / 8)
            )
            assert codec.wire_bytes(n) == expected


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_compression_ratios(quantizer: str) -> None:
    n = 100_000
    full = Codec(CodecConfig(bits=32)).wire_bytes(n)
    assert full == 4 * n
    assert full / Codec(CodecConfig(bits=8, quantizer=quantizer)).wire_bytes(n) >= 3.9
    assert full / Codec(CodecConfig(bits=4, quantizer=quantizer)).wire_bytes(n) >= 7.5
    assert full / Codec(CodecConfig(bits=2, quantizer=quantizer)).wire_bytes(n) >= 14.5


# ---- lattice -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", LOW_BITS)
@pytest.mark.parametrize("n", (1, 1023, 1025, 5000))
def test_lattice_exact_inside_radius(bits: int, n: int) -> None:
    eps = suggest_eps(bits, 0.02)
    codec = Codec(CodecConfig(bits=bits, eps=eps, bucket=512))
    assert codec.radius == pytest.approx(decodable_radius(bits, eps)) == pytest.approx((2 ** (bits - 1) - 0.5) * eps)
    for seed in range(3):
        x = _model(n, seed)
        ref = _within(x, codec.radius, seed + 100)
        out, failed = codec.decode(codec.encode(x), n, ref)
        assert failed == 0
        assert out.dtype == torch.float32 and out.shape == (n,)
        assert float((out - x).abs().max()) <= _lattice_tol(eps, x)


@pytest.mark.parametrize("bits", LOW_BITS)
def test_lattice_randomized_rounding_inside_radius(bits: int) -> None:
    eps = suggest_eps(bits, 0.02)
    codec = Codec(CodecConfig(bits=bits, eps=eps, bucket=256))
    radius = decodable_radius(bits, eps, randomized=True)
    assert radius == pytest.approx(0.02)
    x = _model(3001, 1)
    ref = _within(x, radius, 2)
    out, failed = codec.decode(codec.encode(x, generator=_gen(5)), x.numel(), ref)
    assert failed == 0
    assert float((out - x).abs().max()) <= _lattice_tol(eps, x, randomized=True)
    # Randomized rounding actually rounds both ways (it is not the deterministic code in disguise).
    det, _ = codec.decode(codec.encode(x), x.numel(), ref)
    assert not torch.equal(out, det)


def test_lattice_randomized_rounding_is_unbiased() -> None:
    eps = 1e-2
    codec = Codec(CodecConfig(bits=8, eps=eps))
    x = _model(300, 4)
    trials = 1000
    total = torch.zeros_like(x)
    for seed in range(trials):
        out, failed = codec.decode(codec.encode(x, generator=_gen(seed)), x.numel(), x)
        assert failed == 0
        total += out
    # Each decode is a lattice neighbour of x: variance <= eps^2/4 per coordinate.
    assert float((total / trials - x).abs().max()) <= 6 * (eps / 2) / math.sqrt(trials)


@pytest.mark.parametrize("bits", LOW_BITS)
def test_lattice_failure_detected_and_falls_back(bits: int) -> None:
    eps, bucket, n = 1e-3, 100, 1050  # 11 buckets, the last one 50 long
    codec = Codec(CodecConfig(bits=bits, eps=eps, bucket=bucket))
    x = _model(n, 7)
    ref = _within(x, codec.radius, 8)
    # Push coordinates of buckets 0, 3 (twice) and 10 (the short tail) past the radius, one of
    # them by several wraps; the rest stay inside.
    wrap = 2.0**bits * eps
    pushes = {
        5: codec.radius + 2 * eps,
        310: -(codec.radius + 0.3 * wrap),
        399: 3.2 * wrap,
        1049: codec.radius + 0.5 * wrap,
    }
    for i, d in pushes.items():
        ref[i] = x[i] - d
    failed_buckets = sorted({i // bucket for i in pushes})
    out, failed = codec.decode(codec.encode(x), n, ref)
    assert failed == len(failed_buckets) == 3
    for b in range(math.ceil(n / bucket)):
        sl = slice(b * bucket, min((b + 1) * bucket, n))
        if b in failed_buckets:
            assert torch.equal(out[sl], ref[sl]), f"failed bucket {b} must keep the reference"
        else:
            assert float((out[sl] - x[sl]).abs().max()) <= _lattice_tol(eps, x)


def test_lattice_whole_model_far_away_fails_everywhere() -> None:
    codec = Codec(CodecConfig(bits=4, eps=1e-3, bucket=64))
    x = _model(1000, 9)
    ref = x + 1.0  # every coordinate is hundreds of wraps away
    out, failed = codec.decode(codec.encode(x), x.numel(), ref)
    assert failed == codec.num_buckets(x.numel()) == 16
    assert torch.equal(out, ref)


def test_decode_buckets_names_the_failed_buckets_and_bitmaps_carry_them() -> None:
    """decode_buckets returns the failed buckets themselves; a failure bitmap has one bit per bucket, bucket i in
    bit i % 8 of byte i // 8, and only lattice codecs below 32 bits send one."""
    eps, bucket, n = 1e-3, 100, 1050  # 11 buckets: a 2-byte bitmap
    codec = Codec(CodecConfig(bits=8, eps=eps, bucket=bucket))
    x = _model(n, 7)
    ref = _within(x, codec.radius, 8)
    for i in (5, 310, 1049):  # buckets 0, 3 and 10 (the short tail)
        ref[i] = x[i] - 3 * codec.radius
    msg = codec.encode(x)
    out, failed = codec.decode_buckets(msg, n, ref)
    assert failed.dtype == torch.bool and failed.tolist() == [b in (0, 3, 10) for b in range(11)]
    assert codec.decode(msg, n, ref)[1] == 3
    assert torch.equal(out, codec.decode(msg, n, ref)[0])
    assert codec.can_fail and codec.bitmap_bytes(n) == 2
    bitmap = codec.pack_failures(failed)
    assert bitmap.tolist() == [0b00001001, 0b00000100]
    assert torch.equal(codec.unpack_failures(bitmap, n), failed)
    with pytest.raises(ValueError, match="bitmap"):
        codec.unpack_failures(bitmap[:1], n)
    for other in (Codec(CodecConfig(bits=32)), Codec(CodecConfig(bits=8, quantizer="uniform", bucket=bucket))):
        assert not other.can_fail and other.bitmap_bytes(n) == 0
        _, none = other.decode_buckets(other.encode(x, generator=_gen(1)), n, ref)
        assert none.tolist() == [False] * other.num_buckets(n)
        assert other.pack_failures(none).numel() == 0
        assert other.unpack_failures(torch.empty(0, dtype=torch.uint8), n).tolist() == none.tolist()


def test_a_bucket_that_decodes_holds_the_senders_values_whatever_the_reference() -> None:
    """What lets a sender predict its receiver's decode: buckets that pass their checksum decode to k * eps bit for
    bit against any reference, so two references only differ in which buckets fail."""
    bucket, n = 64, 2000
    codec = Codec(CodecConfig(bits=4, eps=suggest_eps(4, 0.01), bucket=bucket))
    x = _model(n, 21, scale=0.2)
    msg = codec.encode(x, generator=_gen(3))
    own, own_failed = codec.decode_buckets(msg, n, x)
    assert not own_failed.any()  # a message always decodes against the model it encodes
    for seed in (4, 5):
        ref = x + (torch.rand(n, generator=_gen(seed)) * 2 - 1) * 0.9 * codec.radius
        far = torch.randint(0, n, (10,), generator=_gen(seed))
        ref[far] = x[far] + 1.5 * codec.radius  # these buckets fail
        out, failed = codec.decode_buckets(msg, n, ref)
        assert 0 < int(failed.sum()) < codec.num_buckets(n)
        ok = ~codec.coordinates(failed, n)
        assert torch.equal(out[ok], own[ok])


def test_lattice_decode_rounds_like_unfused_float32_arithmetic() -> None:
    """Near the decision boundary (references 128 lattice steps away, give or take float32 noise), the decode
    matches numpy's float32 arithmetic with ref/eps and the subtraction rounded separately: the same bytes and
    reference decode alike on CPUs with and without fused multiply-add."""
    bits, eps, bucket, n = 8, 1e-3, 16, 4096
    codec = Codec(CodecConfig(bits=bits, eps=eps, bucket=bucket))
    x = _model(n, 31, scale=0.3)
    msg = codec.encode(x)
    k = np.round(x.numpy() * np.float32(1 / eps)).astype(np.int64)
    jitter = torch.randn(n, generator=_gen(32)).numpy() * 5e-5
    edge = np.arange(n) % bucket == 0  # one coordinate per bucket on the edge, the others decode
    ref = torch.from_numpy(((k + np.where(edge, 128 + jitter, 0)) * eps).astype(np.float32))
    out, failed = codec.decode_buckets(msg, n, ref)
    c = (k % 2**bits).astype(np.float32)
    s = np.round((c - ref.numpy() * np.float32(1 / eps)) * np.float32(2.0**-bits))
    k_hat = (c - np.float32(2.0**bits) * s).astype(np.int64)
    wrong = (k_hat != k).reshape(-1, bucket).any(1)
    assert 0 < wrong.sum() < len(wrong)  # the boundary is exercised both ways
    np.testing.assert_array_equal(failed.numpy(), wrong)
    ok = ~codec.coordinates(failed, n).numpy()
    np.testing.assert_array_equal(out.numpy()[ok], (k_hat.astype(np.float32) * np.float32(eps))[ok])


def test_lattice_header_matches_numpy_reference() -> None:
    """The checksum is sum_i w_i * floor(k_i / 2**bits) mod 2**32, recomputed here in numpy."""
    from bench.core.codec import _checksum_weights

    bits, eps, bucket, n = 4, 1e-3, 64, 200
    codec = Codec(CodecConfig(bits=bits, eps=eps, bucket=bucket))
    x = _model(n, 11, scale=3.0)  # large |k| so that q spans both signs and many values
    msg = codec.encode(x)
    k = np.round(x.numpy() * np.float32(1 / eps)).astype(np.int64)
    q = (k >> bits).astype(np.uint64)
    w = _checksum_weights(bucket, torch.device("cpu")).numpy().view(np.uint32).astype(np.uint64)
    assert (w % 2 == 1).all() and len(np.unique(w[0])) == bucket
    header = msg[: codec.num_buckets(n) * 8].numpy().view("<u4").reshape(-1, 2)
    for b in range(codec.num_buckets(n)):
        qb = q[b * bucket : (b + 1) * bucket]
        for j in range(2):
            assert header[b, j] == int((qb * w[j, : len(qb)]).sum() & 0xFFFFFFFF)
    body = msg[codec.num_buckets(n) * 8 :]
    np.testing.assert_array_equal(body.numpy(), _np_pack(k, bits))


def test_lattice_needs_reference_and_valid_range() -> None:
    codec = Codec(CodecConfig(bits=8, eps=1e-3))
    x = _model(10)
    msg = codec.encode(x)
    with pytest.raises(ValueError, match="reference"):
        codec.decode(msg, 10)
    with pytest.raises(ValueError, match="reference"):
        codec.decode(msg, 10, torch.zeros(9))
    with pytest.raises(UserError, match="eps"):
        codec.encode(torch.tensor([0.0, 2.0e6]))  # |x|/eps > 2**30
    with pytest.raises(UserError, match="divergence"):
        codec.encode(torch.tensor([0.0, float("nan")]))


def test_suggest_eps_covers_radius() -> None:
    for bits in LOW_BITS:
        eps = suggest_eps(bits, 0.5)
        assert decodable_radius(bits, eps, randomized=True) == pytest.approx(0.5)
        assert decodable_radius(bits, eps) > 0.5


# ---- uniform -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", (2, 4))
def test_uniform_is_unbiased(bits: int) -> None:
    n, bucket, trials = 600, 256, 2000
    codec = Codec(CodecConfig(bits=bits, quantizer="uniform", bucket=bucket))
    x = _model(n, 12)
    steps = torch.empty(n)
    for b in range(codec.num_buckets(n)):
        sl = slice(b * bucket, (b + 1) * bucket)
        steps[sl] = (x[sl].max() - x[sl].min()) / (2**bits - 1)
    total = torch.zeros(n, dtype=torch.float64)
    for seed in range(trials):
        out, failed = codec.decode(codec.encode(x, generator=_gen(seed)), n)
        assert failed == 0
        total += out
    # Var <= step^2/4 per coordinate, so the mean's std is <= step / (2 sqrt(trials)); allow 6 sigma
    # (the max over 600 coordinates) plus float32 rounding.
    bound = 6 * steps / (2 * math.sqrt(trials)) + 1e-6
    assert bool(((total / trials).float() - x).abs().le(bound).all())


@pytest.mark.parametrize("bits", LOW_BITS)
def test_uniform_error_within_one_level(bits: int) -> None:
    n, bucket = 5000, 1024
    codec = Codec(CodecConfig(bits=bits, quantizer="uniform", bucket=bucket))
    x = _model(n, 13)
    x[2048:3072] = 0.25  # a constant bucket (step 0) decodes exactly
    msg = codec.encode(x, generator=_gen(1))
    out, failed = codec.decode(msg, n, reference=None)
    assert failed == 0
    header = msg[: codec.num_buckets(n) * 8].view(torch.float32).view(-1, 2)
    step = header[:, 1].repeat_interleave(bucket)[:n]
    assert float(header[2, 1]) == 0.0 and torch.equal(out[2048:3072], x[2048:3072])
    assert bool(((out - x).abs() <= step * (1 + 1e-4) + 1e-7).all())


def test_uniform_rejects_non_finite() -> None:
    codec = Codec(CodecConfig(bits=8, quantizer="uniform"))
    with pytest.raises(UserError, match="non-finite"):
        codec.encode(torch.tensor([1.0, float("inf"), 0.0]))


# ---- raw 32-bit ----------------------------------------------------------------------------------


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_bits32_is_exact_raw_bytes(quantizer: str) -> None:
    codec = Codec(CodecConfig(bits=32, quantizer=quantizer))
    x = _model(1025, 14)
    original = x.clone()
    msg = codec.encode(x)
    assert torch.equal(msg, x.view(torch.uint8))
    x.add_(1.0)  # the message is a snapshot, not a view of the live model
    out, failed = codec.decode(msg, 1025)
    assert failed == 0 and torch.equal(out, original)
    msg.zero_()  # nor is the decoded model a view of the message
    assert torch.equal(out, original)


# ---- determinism, alignment, threads -------------------------------------------------------------


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_same_seed_same_bytes(quantizer: str) -> None:
    codec = Codec(CodecConfig(bits=4, quantizer=quantizer))
    x = _model(3000, 15)
    a = codec.encode(x, generator=_gen(42))
    b = codec.encode(x, generator=_gen(42))
    c = codec.encode(x, generator=_gen(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    if quantizer == "lattice":
        assert torch.equal(codec.encode(x), codec.encode(x))  # deterministic rounding


def test_default_generator_follows_manual_seed() -> None:
    codec = Codec(CodecConfig(bits=8, quantizer="uniform"))
    x = _model(2000, 16)
    torch.manual_seed(5)
    a = codec.encode(x)
    torch.manual_seed(5)
    assert torch.equal(a, codec.encode(x))


def test_dither_hash_wraps_like_uint32() -> None:
    """int32 tensor arithmetic must wrap modulo 2**32 exactly as the dither definition says."""
    from bench.core.codec import _DITHER_BLOCK, _dither24, _dither_keys, _Scratch

    n = 3 * _DITHER_BLOCK + 17
    keys = _dither_keys(n, torch.device("cpu"), _gen(0))
    got = _dither24(100, n - 100, keys, _Scratch(torch.device("cpu"), cached=False)).numpy()
    k = keys.numpy().view(np.uint32).astype(np.uint64)
    i = np.arange(100, n)
    r, c = i // _DITHER_BLOCK, (i % _DITHER_BLOCK).astype(np.uint64)
    want = (((k[0, r] * c + k[1, r]) & 0xFFFFFFFF) >> 8).astype(np.float32)
    np.testing.assert_array_equal(got, want)


def test_decode_from_unaligned_slice() -> None:
    codec = Codec(CodecConfig(bits=16))
    x = _model(999, 17)
    msg = codec.encode(x)
    buf = torch.zeros(msg.numel() + 3, dtype=torch.uint8)
    buf[3:] = msg
    out, failed = codec.decode(buf[3:], 999, x)
    assert failed == 0
    assert float((out - x).abs().max()) <= _lattice_tol(1e-3, x)


def test_wrong_message_size() -> None:
    codec = Codec(CodecConfig(bits=8))
    with pytest.raises(ValueError, match="bytes"):
        codec.decode(torch.zeros(10, dtype=torch.uint8), 100, torch.zeros(100))
    with pytest.raises(ValueError, match="float32"):
        codec.encode(torch.zeros(10, dtype=torch.float64))


def test_threads_share_a_codec() -> None:
    codec = Codec(CodecConfig(bits=4, quantizer="uniform"))
    models = [_model(20_000, s) for s in range(4)]
    want = [codec.encode(m, generator=_gen(s)) for s, m in enumerate(models)]
    got: list[torch.Tensor | None] = [None] * 4

    def work(s: int) -> None:
        for _ in range(5):
            got[s] = codec.encode(models[s], generator=_gen(s))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


# ---- configuration errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bits": 3},
        {"bits": 64},
        {"quantizer": "foo"},
        {"eps": 0.0},
        {"eps": -1e-3},
        {"eps": float("nan")},
        {"bucket": 0},
    ],
)
def test_user_errors(kwargs: dict) -> None:
    with pytest.raises(UserError) as info:
        Codec(CodecConfig(**kwargs))
    assert "\n" not in str(info.value)


def test_suggest_eps_errors() -> None:
    with pytest.raises(UserError):
        suggest_eps(32, 0.1)
    with pytest.raises(UserError):
        suggest_eps(8, 0.0)
    with pytest.raises(UserError):
        suggest_eps(3, 0.1)


# ---- CUDA (runs only where a GPU is present) -----------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("bits", BITS)
def test_cuda_matches_cpu(quantizer: str, bits: int) -> None:
    codec = Codec(CodecConfig(bits=bits, quantizer=quantizer, eps=suggest_eps(bits, 0.05) if bits < 32 else 1e-3))
    x = _model(300_001, 18)
    ref = _within(x, 0.04, 19)
    for gen in (None, 7) if quantizer == "lattice" else (7,):
        g_cpu = None if gen is None else _gen(gen)
        g_cuda = None if gen is None else _gen(gen)
        m_cpu = codec.encode(x, generator=g_cpu)
        m_gpu = codec.encode(x.cuda(), generator=g_cuda)
        assert m_gpu.is_cuda and torch.equal(m_gpu.cpu(), m_cpu)
        out_cpu, f_cpu = codec.decode(m_cpu, x.numel(), ref)
        out_gpu, f_gpu = codec.decode(m_gpu, x.numel(), ref.cuda())
        assert f_cpu == f_gpu == 0
        assert torch.allclose(out_gpu.cpu(), out_cpu, rtol=0, atol=1e-7)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("bits", LOW_BITS)
def test_chunking_does_not_change_bytes(quantizer: str, bits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large models are processed in chunks; the message and the decode must not depend on that."""
    import bench.core.codec as q

    codec = Codec(CodecConfig(bits=bits, quantizer=quantizer, eps=suggest_eps(bits, 0.05), bucket=1000))
    n = 20_017  # chunks of 4000 split dither blocks of 512 and end on a short bucket
    x = _model(n, 20)
    ref = _within(x, 0.04, 21)
    ref[12_345] += 1.0  # one failed lattice bucket
    whole = codec.encode(x, generator=_gen(3))
    out_whole, fails_whole = codec.decode(whole, n, ref)
    monkeypatch.setattr(q, "_CPU_CHUNK", 4000)  # the torch path's chunks
    monkeypatch.setattr(q, "_KCHUNK", 4000)  # the CPU kernels' tiles
    assert len(codec._chunks(n, x.device)) == 6 and q._kernel_chunk(codec.cfg.bucket) == 4000
    chunked = codec.encode(x, generator=_gen(3))
    out_chunked, fails_chunked = codec.decode(chunked, n, ref)
    assert torch.equal(whole, chunked)
    assert torch.equal(out_whole, out_chunked)
    assert fails_whole == fails_chunked == (1 if quantizer == "lattice" else 0)


# ---- bit-identity with the frozen pre-numba implementation -------------------------------------
#
# A compact copy of the torch codec as it was before the fused CPU kernels (whole-tensor torch ops,
# no chunks or scratch buffers). Every wire byte of ``encode`` and every decoded float and failed
# bucket of ``decode_buckets`` must stay the same: the simulator's determinism and the committed CI
# reference depend on it. Do not "fix" this reference; it defines the wire format's bytes. The lattice
# decode rounds ``ref/eps`` and the subtraction separately (two float32 ops, no fused multiply-add).


def _frozen_dither(n: int, keys: torch.Tensor) -> torch.Tensor:
    blocks = keys.shape[1]
    cols = torch.arange(512, dtype=torch.int32)[None, :]
    h = (keys[0, :, None] * cols).add_(keys[1, :, None]).view(-1)[:n]
    return h.bitwise_right_shift(8).bitwise_and_(0xFFFFFF).float() if blocks else torch.zeros(0)


def _frozen_keys(n: int, generator: torch.Generator | None) -> torch.Tensor:
    shape = (2, -(-n // 512))
    words = torch.randint(0, 2**32, shape, dtype=torch.int64, generator=generator)
    return (words & 0xFFFFFFFF).to(torch.int32)


def _frozen_checksums(q: torch.Tensor, bucket: int) -> torch.Tensor:
    from bench.core.codec import _checksum_weights

    w = _checksum_weights(bucket, torch.device("cpu")).to(torch.int64)
    nb = -(-q.numel() // bucket)
    padded = torch.zeros(nb * bucket, dtype=torch.int64)
    padded[: q.numel()] = q
    sums = torch.stack([(padded.view(nb, bucket) * w[j]).sum(1) & 0xFFFFFFFF for j in range(2)], 1)
    return torch.from_numpy(sums.numpy().astype(np.uint32).view(np.int32))


def _frozen_encode(cfg: CodecConfig, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    bits, bucket, n = cfg.bits, cfg.bucket, x.numel()
    if bits == 32:
        return x.view(torch.uint8).clone()
    if n == 0:
        return torch.zeros(0, dtype=torch.uint8)
    if cfg.quantizer == "lattice":
        kf = torch.mul(x, 1.0 / float(cfg.eps))
        if generator is None:
            kf.round_()
        else:
            kf.add_(_frozen_dither(n, _frozen_keys(n, generator)), alpha=2.0**-24).floor_()
        k = kf.to(torch.int32)
        header = _frozen_checksums(k >> bits, bucket).view(torch.uint8).view(-1)
    else:
        keys = _frozen_keys(n, generator)
        levels = float(2**bits - 1)
        lo = torch.stack([x[a : a + bucket].amin() for a in range(0, n, bucket)])
        hi = torch.stack([x[a : a + bucket].amax() for a in range(0, n, bucket)])
        step = ((hi - lo).double() / levels).float()
        inv = torch.where(step > 0, 1.0 / step.double(), 0.0).float()
        reps = torch.tensor([min(bucket, n - a) for a in range(0, n, bucket)])
        y = torch.sub(x, lo.repeat_interleave(reps)).mul_(inv.repeat_interleave(reps))
        y.add_(_frozen_dither(n, keys), alpha=2.0**-24).floor_().clamp_max_(levels)
        k = y.to(torch.int32)
        header = torch.stack((lo, step), 1).view(torch.uint8).view(-1)
    body = torch.from_numpy(_np_pack(k.numpy(), bits))
    return torch.cat((header, body))


def _frozen_decode(
    cfg: CodecConfig, msg: torch.Tensor, n: int, ref: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    bits, bucket = cfg.bits, cfg.bucket
    nb = -(-n // bucket) if bits < 32 else 0
    none = torch.zeros(nb, dtype=torch.bool)
    if bits == 32:
        return msg.clone().view(torch.float32), none
    header, body = msg[: 8 * nb], msg[8 * nb :].numpy()
    if bits == 16:
        codes = body.view("<u2").astype(np.float32)
    else:
        per = 8 // bits
        codes = ((body[:, None] >> (np.arange(per) * bits)) & ((1 << bits) - 1)).reshape(-1)[:n].astype(np.float32)
    c = torch.from_numpy(codes.copy())
    reps = torch.tensor([min(bucket, n - a) for a in range(0, n, bucket)])
    if cfg.quantizer == "uniform":
        h = header.view(torch.float32).view(-1, 2)
        return c.mul_(h[:, 1].repeat_interleave(reps)).add_(h[:, 0].repeat_interleave(reps)), none
    assert ref is not None
    scale = 2.0**bits
    s = torch.sub(c, torch.mul(ref, 1.0 / float(cfg.eps))).mul_(1.0 / scale).round_()
    mine = _frozen_checksums(s.to(torch.int32), bucket).to(torch.int64)
    sent = header.view(torch.int32).view(-1, 2).to(torch.int64)
    bad = ~(((mine + sent) & 0xFFFFFFFF) == 0).all(1)
    out = c.add_(s, alpha=-scale).mul_(cfg.eps)
    mask = bad.repeat_interleave(reps)
    out[mask] = ref[mask]
    return out, bad


def _grid_model(n: int, seed: int, quantizer: str) -> torch.Tensor:
    x = _model(n, seed, scale=0.05 if seed % 2 else 0.4)
    if n > 8:
        x[3] = 0.0
        x[5] = -0.0
    if quantizer == "uniform" and n >= 2100:
        x[1024:2048] = -0.125  # a constant bucket (step 0)
    return x


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("bucket", (1, 3, 100, 512, 1024, 1500))
def test_bit_identical_to_frozen_reference(quantizer: str, bits: int, bucket: int) -> None:
    """encode's bytes, decode's floats and failed buckets equal the frozen implementation's, across
    sizes that are not multiples of the bucket or of the dither block, seeds, and both roundings."""
    eps = suggest_eps(bits, 0.05) if bits < 32 else 1e-3
    cfg = CodecConfig(bits=bits, quantizer=quantizer, eps=eps, bucket=bucket)
    codec = Codec(cfg)
    sizes = (1, 2, 5, 511, 1023, 1025, 4099, 70_001) if bucket > 3 else (1, 2, 5, 1025, 20_001)
    for n in sizes:
        for seed in (0, 1, 2):
            x = _grid_model(n, seed, quantizer)
            ref = _within(x, 0.04, seed + 50)
            if n > 600:
                ref[n // 2] += 1.0  # a failed lattice bucket
                ref[n - 1] -= 0.3
            for gen_seed in (None, 7 + seed) if quantizer == "lattice" else (7 + seed,):
                g1 = None if gen_seed is None else _gen(gen_seed)
                g2 = None if gen_seed is None else _gen(gen_seed)
                msg = codec.encode(x, generator=g1)
                want = _frozen_encode(cfg, x, g2)
                assert torch.equal(msg, want), (n, seed, gen_seed)
                out, failed = codec.decode_buckets(msg, n, ref)
                want_out, want_failed = _frozen_decode(cfg, want, n, ref)
                assert torch.equal(failed, want_failed), (n, seed, gen_seed)
                assert torch.equal(out.view(torch.int32), want_out.view(torch.int32)), (n, seed, gen_seed)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("bits", LOW_BITS)
def test_bit_identical_on_odd_messages(quantizer: str, bits: int) -> None:
    """Random wire bytes (corrupt checksums, wild codes, extreme float headers) decode as before."""
    cfg = CodecConfig(bits=bits, quantizer=quantizer, eps=suggest_eps(bits, 0.05), bucket=300)
    codec = Codec(cfg)
    for n in (1, 299, 301, 3001):
        g = _gen(n + bits)
        msg = torch.randint(0, 256, (codec.wire_bytes(n),), generator=g, dtype=torch.uint8)
        if quantizer == "uniform":  # keep the float headers finite (random bytes may spell NaN)
            hdr = msg[: 8 * codec.num_buckets(n)].view(torch.float32)
            hdr.copy_(torch.randn(hdr.numel(), generator=g))
        ref = _model(n, n, scale=0.5)
        out, failed = codec.decode_buckets(msg, n, ref)
        want_out, want_failed = _frozen_decode(cfg, msg, n, ref)
        assert torch.equal(failed, want_failed)
        assert torch.equal(out.view(torch.int32), want_out.view(torch.int32))


FROZEN_DIGESTS = {
    "lattice2/None": "b434801991f9c8ec",
    "lattice2/11": "fb061057670b39e6",
    "lattice4/None": "d6801911bbda37b4",
    "lattice4/11": "ca1313b482b7fbc5",
    "lattice8/None": "6678eeea02eb5094",
    "lattice8/11": "c4e83a7cb78331e6",
    "lattice16/None": "043d17c642681f14",
    "lattice16/11": "5d12d55beb63afd1",
    "uniform2/11": "5c28c17835893c0c",
    "uniform4/11": "9f4a99ed03186479",
    "uniform8/11": "2338f9703aa75557",
    "uniform16/11": "1106ef87ffba651f",
}


def test_frozen_encode_digests() -> None:
    """sha256 of encode's bytes for a fixed grid, recorded from the implementation before the fused
    CPU kernels: guards the frozen reference above against drifting along with the codec."""
    import hashlib

    got = {}
    for quantizer in QUANTIZERS:
        for bits in LOW_BITS:
            codec = Codec(CodecConfig(bits=bits, quantizer=quantizer, eps=suggest_eps(bits, 0.05), bucket=1000))
            x = _grid_model(5003, 3, quantizer)
            for gen_seed in (None, 11) if quantizer == "lattice" else (11,):
                msg = codec.encode(x, generator=None if gen_seed is None else _gen(gen_seed))
                got[f"{quantizer}{bits}/{gen_seed}"] = hashlib.sha256(msg.numpy().tobytes()).hexdigest()[:16]
    assert got == FROZEN_DIGESTS


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("bits", LOW_BITS)
def test_torch_path_matches_cpu_kernels(quantizer: str, bits: int) -> None:
    """The torch implementation (the path CUDA tensors take) run on CPU gives the same bytes as the
    numba kernels, and decodes to the same floats and failed buckets."""

    codec = Codec(CodecConfig(bits=bits, quantizer=quantizer, eps=suggest_eps(bits, 0.05), bucket=700))
    n = 40_003
    x = _grid_model(n, 5, quantizer)
    ref = _within(x, 0.04, 6)
    ref[9_999] += 1.0
    for gen_seed in (None, 3) if quantizer == "lattice" else (3,):
        msg = codec.encode(x, generator=None if gen_seed is None else _gen(gen_seed))
        torch_msg = torch.empty_like(msg)
        header, body = codec._split(torch_msg, n)
        g = None if gen_seed is None else _gen(gen_seed)
        if quantizer == "lattice":
            codec._encode_lattice(x, header, body, g)
        else:
            codec._encode_uniform(x, header.view(torch.float32), body, g)
        assert torch.equal(msg, torch_msg)
        out, failed = codec.decode_buckets(msg, n, ref)
        torch_out = torch.empty(n)
        header, body = codec._split(msg, n)
        if quantizer == "lattice":
            torch_failed = codec._decode_lattice(header, body, ref, torch_out)
        else:
            torch_failed = torch.zeros(codec.num_buckets(n), dtype=torch.bool)
            codec._decode_uniform(header.view(torch.float32), body, torch_out)
        assert torch.equal(failed, torch_failed)
        assert int(failed.sum()) == (1 if quantizer == "lattice" else 0)
        assert torch.equal(out.view(torch.int32), torch_out.view(torch.int32))


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_warm_up_moves_no_random_stream(quantizer: str) -> None:
    """The training loop warms the codec up before its clock starts; that must not change any draw of the run."""
    codec = Codec(CodecConfig(bits=8, quantizer=quantizer, eps=suggest_eps(8, 1.0), bucket=64))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    codec.warm_up()
    assert torch.equal(torch.rand(3), expected)
    x = torch.randn(500)
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    fresh = Codec(codec.cfg).encode(x, generator=gen_a)
    assert torch.equal(codec.encode(x, generator=gen_b), fresh)
