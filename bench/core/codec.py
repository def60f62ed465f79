"""Wire codecs for the models SwarmSGD nodes exchange.

SwarmSGD (Nadiradze et al., "Asynchronous Decentralized SGD with Quantized and Local Updates",
NeurIPS 2021) averages a node's model with a neighbour's after sending it quantized. Because the two
models are close, the sender does not need to send the high-order digits of each coordinate: the
lattice quantizer of Davies et al. ("New Bounds for Distributed Mean Estimation and Variance
Reduction", ICLR 2021) sends only the residue of each lattice index modulo ``2**bits``, and the
receiver recovers the full index as the lattice point with that residue nearest to its *own* model.
That works while the models are within the decodable radius; this module adds a per-bucket checksum
so that a decoding outside that radius is detected and the bucket is left out of the average instead
of being silently wrong. A plain stochastic uniform quantizer (QSGD-style, Alistarh et al., NeurIPS
2017) is offered as the reference-free baseline.

A codec turns a flat float32 tensor into the exact bytes that go on the wire (a 1-D ``uint8``
tensor, header included) and back. On CPU each encode and decode is one fused loop compiled by numba
(see "fused CPU kernels" below); on other devices (CUDA) it is vectorized torch operations on the
tensor's own device. Both give the same bytes; nothing loops over elements in Python.

Wire format (little-endian throughout; every supported platform and CUDA is little-endian)::

    bits == 32 : the raw float32 bytes, no header.
    otherwise  : header (8 bytes per bucket of ``bucket`` coordinates, the last bucket may be short)
                 followed by the codes packed at ``bits`` bits per coordinate: 2- and 4-bit codes
                 are packed 4 and 2 per byte, first coordinate in the lowest bits; 8-bit codes are
                 one byte each; 16-bit codes are little-endian uint16.
    lattice    : header per bucket = two int32 checksums (see ``Codec`` for the definition).
    uniform    : header per bucket = float32 minimum, float32 step (one quantization level).

Randomness (stochastic rounding): one pair of random 32-bit keys per block of 512 coordinates is
drawn from the given ``torch.Generator`` (or torch's default one) and expanded by multiply-add-shift
hashing, which gives exactly uniform, pairwise independent 24-bit dithers (see ``_dither24``). That
is about 10x cheaper than ``torch.rand`` per coordinate on one CPU core, and the same generator
state gives the same bytes whether the model is on CPU or CUDA.
"""

from __future__ import annotations

import functools
import math
import numbers
import sys
import threading
from dataclasses import dataclass

import numba
import numpy as np
import torch

from bench.base.errors import UserError

if sys.byteorder != "little":  # the wire format is defined little-endian and written with dtype views
    raise ImportError("bench.core.codec needs a little-endian machine; the wire format is little-endian")

BITS = (2, 4, 8, 16, 32)
QUANTIZERS = ("lattice", "uniform")

#: Header bytes per bucket (both quantizers): two int32 checksums, or float32 minimum and step.
HEADER_BYTES_PER_BUCKET = 8

#: Largest |x|/eps the lattice encoder accepts. Indices must fit int32 with room for the receiver's
#: wrap-around arithmetic; 2**30 leaves a factor of two of headroom.
LATTICE_INDEX_LIMIT = 2**30

_MASK32 = 0xFFFFFFFF
# Mixing constants of the "lowbias32" integer hash (C. Wellons, hash-prospector, 2018), a bijection
# on 32-bit words with very low avalanche bias, used to derive the public checksum weights.
_H_MUL1 = 0x7FEB352D
_H_MUL2 = 0x846CA68B
# Fixed keys of the two public checksum weight vectors (arbitrary, but part of the wire format).
_CHECKSUM_KEYS = (0x243F6A88, 0x85A308D3)
_GOLDEN32 = 0x9E3779B9
# Coordinates per dither block (one random key pair each). Multiply-add-shift hashing with 32-bit
# words and 24 output bits is pairwise independent for up to 2**(33-24) = 512 inputs per key.
_DITHER_BLOCK = 512
_DITHER_SCALE = 2.0**-24  # dithers are 24-bit integers, exactly representable in float32
_BIT_SHIFTS = torch.arange(8, dtype=torch.uint8)  # failure bitmaps: bucket i is bit i % 8 of byte i // 8


# --------------------------------------------------------------------------------------------------
# eps and radius
# --------------------------------------------------------------------------------------------------


def decodable_radius(bits: int, eps: float, *, randomized: bool = False) -> float:
    """Largest ``||x - reference||_inf`` at which a lattice message decodes exactly.

    With deterministic rounding ``k = round(x/eps)`` we have ``|k - x/eps| <= 1/2``; the receiver
    picks the integer with residue ``k mod 2**bits`` nearest to ``reference/eps``, which is ``k``
    whenever ``|k - reference/eps| < 2**(bits-1)``. Hence decoding is exact for

        ``||x - reference||_inf < (2**(bits-1) - 1/2) * eps``      (deterministic rounding)
        ``||x - reference||_inf <= (2**(bits-1) - 1) * eps``       (randomized rounding, |k - x/eps| < 1)

    up to float32 rounding of ``x/eps`` and ``reference/eps`` (relative 2**-24 of |x|/eps lattice
    steps). This is the radius/precision trade-off of Davies et al. (2021): halving ``eps`` halves
    the error (``<= eps/2`` per coordinate, deterministic) and halves the radius.
    """
    if bits not in BITS or bits == 32:
        raise UserError(f"bits={bits} has no lattice radius; use one of {BITS[:-1]}")
    return (2.0 ** (bits - 1) - (1.0 if randomized else 0.5)) * eps


def suggest_eps(bits: int, radius: float) -> float:
    """The largest lattice spacing whose decodable radius at ``bits`` is at least ``radius``.

    Returns ``radius / (2**(bits-1) - 1)``, the spacing at which both deterministic and randomized
    rounding decode every coordinate within ``radius`` of the receiver's model (see
    ``decodable_radius``). Pick ``radius`` as a bound on ``||x_i - x_j||_inf`` between neighbouring
    models; Nadiradze et al. (2021) bound their distance through the learning rate and the number of
    local steps between interactions. Precision is then ``eps/2`` per coordinate.
    """
    if bits not in BITS or bits == 32:
        raise UserError(f"bits={bits} is not a lattice width; use one of {BITS[:-1]} (32 sends raw floats)")
    if not (radius > 0 and math.isfinite(radius)):
        raise UserError(f"radius={radius} must be a positive finite number; pass the expected max |x - ref|")
    return radius / (2.0 ** (bits - 1) - 1.0)


# --------------------------------------------------------------------------------------------------
# scratch buffers and chunking
# --------------------------------------------------------------------------------------------------

# The torch path (CUDA tensors, and ``pack_bits``/``unpack_bits``; on CPU the codec itself now runs
# the numba kernels below) works through the model in bucket-aligned chunks of about this many
# coordinates with a few reusable per-thread scratch buffers (about 15 MB per thread at this size). Fresh
# multi-megabyte allocations cost more than the arithmetic: glibc hands them back to the kernel on
# free, so every temporary page-faults again (measured: 2-4x slower end to end). On CUDA the
# caching allocator already recycles memory, so chunks there only bound the scratch size.
_CPU_CHUNK = 1 << 20
_CUDA_CHUNK = 1 << 26

_TLS = threading.local()


class _Scratch:
    """Named temporaries for one encode or decode call.

    On CPU they are typed views of per-thread byte buffers (so codecs may be used from several
    threads at once); elsewhere plain allocations. Two live temporaries must use different names;
    one name may be reused under another dtype once its previous contents are dead.
    """

    def __init__(self, device: torch.device, *, cached: bool = True) -> None:
        self.device = device
        self.cache: dict[str, torch.Tensor] | None = None
        if cached and device.type == "cpu":
            if not hasattr(_TLS, "buffers"):
                _TLS.buffers = {}
            self.cache = _TLS.buffers

    def get(self, name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
        if self.cache is None:
            return torch.empty(numel, dtype=dtype, device=self.device)
        nbytes = numel * dtype.itemsize
        buf = self.cache.get(name)
        if buf is None or buf.numel() < nbytes:
            buf = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
            self.cache[name] = buf
        return buf[:nbytes].view(dtype)


def _chunk_len(bucket: int, device: torch.device) -> int:
    """Chunk length: whole buckets (per-bucket work never straddles chunks) and a multiple of 4
    coordinates (every chunk's packed codes then start on a byte boundary at any bit width)."""
    target = _CPU_CHUNK if device.type == "cpu" else _CUDA_CHUNK
    per = 4 // math.gcd(bucket, 4)
    m = max(1, target // bucket)
    return bucket * (-(-m // per) * per)


def _bucket_parts(t: torch.Tensor, bucket: int) -> list[tuple[torch.Tensor, slice]]:
    """2-D views of a flat tensor by bucket: the full buckets, then the short last one if any.

    Each entry pairs a (rows, cols) view with the slice of bucket indices it covers, so per-bucket
    parameters broadcast over it without padding (and copying) the whole tensor.
    """
    n = t.numel()
    nfull, rem = divmod(n, bucket)
    parts = []
    if nfull:
        parts.append((t[: nfull * bucket].view(nfull, bucket), slice(0, nfull)))
    if rem:
        parts.append((t[nfull * bucket :].view(1, rem), slice(nfull, nfull + 1)))
    return parts


# --------------------------------------------------------------------------------------------------
# bit packing
# --------------------------------------------------------------------------------------------------

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def packed_bytes(numel: int, bits: int) -> int:
    """Bytes taken by ``numel`` codes of ``bits`` bits each (the last byte zero-padded)."""
    return (numel * bits + 7) // 8


def _pack(codes: torch.Tensor, bits: int, out: torch.Tensor, scratch: _Scratch) -> None:
    """Write integer ``codes`` modulo ``2**bits`` into ``out`` (see ``pack_bits``)."""
    n = codes.numel()
    if bits == 8:
        out.copy_(codes)  # integer -> uint8 conversion wraps modulo 256: exactly the residue we send
        return
    if bits == 16:
        out.view(torch.uint16).copy_(codes)  # likewise modulo 2**16, stored little-endian
        return
    per_byte = 8 // bits
    padded = scratch.get("pack", out.numel() * per_byte, torch.uint8)
    padded[:n].copy_(codes)
    padded[n:].zero_()
    if bits == 4:
        # Read each pair of codes as one little-endian int16 (c0 in bits 0-7, c1 in bits 8-15) and
        # fold c1 down next to c0: whole-word ops instead of slow strided per-byte ones.
        w = padded.view(torch.int16)
        tmp = scratch.get("pack2", w.numel(), torch.int16)
        w.bitwise_and_(0x0F0F)
        w.bitwise_or_(torch.bitwise_right_shift(w, 4, out=tmp))
    else:
        # The same over four codes per int32: fold bits 8-9, 16-17 and 24-25 down into one byte.
        w = padded.view(torch.int32)
        tmp = scratch.get("pack2", w.numel(), torch.int32)
        w.bitwise_and_(0x03030303)
        w.bitwise_or_(torch.bitwise_right_shift(w, 6, out=tmp))
        w.bitwise_or_(torch.bitwise_right_shift(w, 12, out=tmp))
    out.copy_(w)  # narrowing to uint8 keeps the low byte, which now holds all the codes


def _unpack(packed: torch.Tensor, bits: int, numel: int, out: torch.Tensor, scratch: _Scratch) -> None:
    """Write the first ``numel`` codes of ``packed`` into ``out``, converted to its dtype."""
    if bits == 8:
        out.copy_(packed)
        return
    if bits == 16:
        out.copy_(packed.view(torch.uint16))
        return
    if bits == 4:
        # Widen each byte to an int16 and spread its two nibbles over the two bytes of the word.
        w = scratch.get("unpack", packed.numel(), torch.int16)
        w.copy_(packed)
        tmp = scratch.get("unpack2", packed.numel(), torch.int16)
        torch.bitwise_left_shift(w, 4, out=tmp)
        w.bitwise_or_(tmp)
        w.bitwise_and_(0x0F0F)
    else:
        w = scratch.get("unpack", packed.numel(), torch.int32)
        w.copy_(packed)
        tmp = scratch.get("unpack2", packed.numel(), torch.int32)
        torch.bitwise_left_shift(w, 6, out=tmp)
        w.bitwise_or_(tmp)
        torch.bitwise_left_shift(w, 12, out=tmp)
        w.bitwise_or_(tmp)
        w.bitwise_and_(0x03030303)
    out.copy_(w.view(torch.uint8)[:numel])


def pack_bits(codes: torch.Tensor, bits: int, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Pack 1-D integer codes into bytes at ``bits`` (2, 4, 8 or 16) bits per code.

    Codes are taken modulo ``2**bits`` (only their low bits are sent), so lattice indices can be
    passed as they are. 2- and 4-bit codes go 4 and 2 to a byte, first code in the lowest bits, the
    last byte zero-padded; 16-bit codes are little-endian. Returns ``out`` (1-D uint8 of
    ``packed_bytes(len(codes), bits)``) or a new tensor on the codes' device.
    """
    if bits not in (2, 4, 8, 16):
        raise ValueError(f"pack_bits supports 2, 4, 8 or 16 bits, got {bits}")
    if codes.dim() != 1 or codes.dtype not in _INT_DTYPES:
        raise ValueError(f"codes must be a 1-D integer tensor, got {codes.dtype} {tuple(codes.shape)}")
    nbytes = packed_bytes(codes.numel(), bits)
    if out is None:
        out = torch.empty(nbytes, dtype=torch.uint8, device=codes.device)
    elif out.dtype != torch.uint8 or out.shape != (nbytes,) or not out.is_contiguous():
        raise ValueError(f"out must be contiguous uint8 of shape ({nbytes},), got {out.dtype} {tuple(out.shape)}")
    if codes.numel():
        _pack(codes, bits, out, _Scratch(codes.device, cached=False))
    return out


def unpack_bits(packed: torch.Tensor, bits: int, numel: int, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of ``pack_bits``: the first ``numel`` codes, each in ``[0, 2**bits)``.

    Returns uint8 codes for 2/4/8 bits and int32 codes for 16 bits, or writes them into ``out``
    (1-D, ``numel`` long, any real dtype: the decoders unpack straight to float32 to save a pass).
    """
    if bits not in (2, 4, 8, 16):
        raise ValueError(f"unpack_bits supports 2, 4, 8 or 16 bits, got {bits}")
    nbytes = packed_bytes(numel, bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != nbytes:
        raise ValueError(
            f"packed must be 1-D uint8 of {nbytes} bytes for {numel} codes at {bits} bits, "
            f"got {packed.dtype} {tuple(packed.shape)}"
        )
    if out is None:
        out = torch.empty(numel, dtype=torch.int32 if bits == 16 else torch.uint8, device=packed.device)
    elif out.shape != (numel,):
        raise ValueError(f"out must have shape ({numel},), got {tuple(out.shape)}")
    if bits == 16 and packed.storage_offset() % 2:  # a uint16 view needs an even start
        packed = packed.clone()
    if numel:
        _unpack(packed.contiguous(), bits, numel, out, _Scratch(packed.device, cached=False))
    return out


# --------------------------------------------------------------------------------------------------
# hashing: checksum weights and dithers
# --------------------------------------------------------------------------------------------------


def _lowbias32_np(v: np.ndarray) -> np.ndarray:
    """Reference lowbias32 on uint32 numpy arrays (modular arithmetic is well defined there)."""
    v = v.astype(np.uint32, copy=True)
    v ^= v >> np.uint32(16)
    v *= np.uint32(_H_MUL1)
    v ^= v >> np.uint32(15)
    v *= np.uint32(_H_MUL2)
    v ^= v >> np.uint32(16)
    return v


@functools.lru_cache(maxsize=32)
def _checksum_weights(bucket: int, device: torch.device) -> torch.Tensor:
    """The public int32 weights of the two lattice checksums, shape (2, bucket): odd, pseudo-random.

    Built with numpy's well-defined uint32 arithmetic from a fixed hash of the position, so the wire
    format depends on no random number generator and is the same on every machine.
    """
    idx = np.arange(bucket, dtype=np.uint64)
    rows = []
    for key in _CHECKSUM_KEYS:
        v = ((idx * _GOLDEN32 + key) & _MASK32).astype(np.uint32)
        rows.append(_lowbias32_np(v) | np.uint32(1))  # odd: a single wrong index is never missed
    return torch.from_numpy(np.stack(rows).view(np.int32)).to(device)


def _bucket_checksums(q: torch.Tensor, bucket: int, scratch: _Scratch) -> torch.Tensor:
    """Per-bucket ``sum_i w_ji q_i mod 2**32`` for both weight vectors: int32 of shape (buckets, 2).

    ``q`` must start on a bucket boundary. int32 products wrap modulo 2**32 (on CPU and CUDA; a
    test checks against numpy) and ``sum(dtype=int32)`` accumulates wide, then keeps the low 32 bits.
    """
    w = _checksum_weights(bucket, q.device)
    prod = scratch.get("tmp", q.numel(), torch.int32)
    out = []
    for (view, _), (p, _) in zip(_bucket_parts(q, bucket), _bucket_parts(prod, bucket), strict=True):
        cols = view.shape[1]
        sums = []
        for j in range(2):
            torch.mul(view, w[j, :cols], out=p)
            sums.append(p.sum(1, dtype=torch.int32))
        out.append(torch.stack(sums, 1))
    return torch.cat(out) if len(out) > 1 else out[0]


def _to_i32(v: torch.Tensor) -> torch.Tensor:
    """int64 values -> the int32 tensor with the same low 32 bits."""
    return (v & _MASK32).to(torch.int32)


def _dither_keys(n: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """Random int32 keys ``(a_r, b_r)`` for every dither block of a model of ``n`` coordinates.

    Drawn from ``generator`` (torch's default generator for ``device`` when None) on its own device
    and moved to ``device``, so the same generator state gives the same bytes whatever the model's
    device. Shape (2, blocks).
    """
    shape = (2, -(-n // _DITHER_BLOCK))
    if generator is None:
        words = torch.randint(0, 2**32, shape, dtype=torch.int64, device=device)
    else:
        words = torch.randint(0, 2**32, shape, dtype=torch.int64, generator=generator, device=generator.device)
    return _to_i32(words).to(device)


def _dither24(start: int, count: int, keys: torch.Tensor, scratch: _Scratch) -> torch.Tensor:
    """Dithers in ``[0, 2**24)`` (as float32) for coordinates ``start .. start+count``.

    Coordinate ``i = r * BLOCK + c`` gets ``((a_r * c + b_r) mod 2**32) >> 8``: multiply-add-shift
    hashing, which is strongly universal for keys ``c < 2**9`` and 24 output bits (Dietzfelbinger,
    "Universal hashing and k-wise independent random variables via integer arithmetic without
    primes", STACS 1996; Thorup, "High speed hashing for integers and strings", 2015). So with the
    keys uniform, every dither is exactly uniform on the 2**24 values and any two are independent
    (within a block by universality, across blocks by independent keys). Pairwise independence is
    all the variance of a sum of rounding errors depends on. Five cheap passes: about 0.3 ms per
    million coordinates on one CPU core, 10x less than ``torch.rand``. int32 products wrap modulo
    2**32 (a test checks against numpy).
    Uses scratch "tmp" and returns a view of scratch "ints" (whose integer contents it overwrites).
    """
    r0, r1 = start // _DITHER_BLOCK, -(-(start + count) // _DITHER_BLOCK)
    h = scratch.get("tmp", (r1 - r0) * _DITHER_BLOCK, torch.int32)
    h2 = h.view(r1 - r0, _DITHER_BLOCK)
    torch.mul(keys[0, r0:r1, None], _dither_cols(keys.device), out=h2)
    h2.add_(keys[1, r0:r1, None])
    h.bitwise_right_shift_(8)  # arithmetic shift; the mask below makes it a logical one
    h.bitwise_and_(0xFFFFFF)
    u = scratch.get("ints", count, torch.float32)
    off = start - r0 * _DITHER_BLOCK
    u.copy_(h[off : off + count])
    return u


@functools.lru_cache(maxsize=8)
def _dither_cols(device: torch.device) -> torch.Tensor:
    """Column indices ``0 .. BLOCK-1`` of a dither block, shape (1, BLOCK), int32."""
    return torch.arange(_DITHER_BLOCK, dtype=torch.int32, device=device)[None, :]


# --------------------------------------------------------------------------------------------------
# fused CPU kernels (numba)
# --------------------------------------------------------------------------------------------------
#
# On CPU, encode and decode run as single fused loops compiled by numba (one pass over the model
# instead of a dozen torch passes). They compute bit for bit what the torch path computes (a test
# compares both against a frozen copy of the torch implementation):
#   * float32 arithmetic in the same order with the same roundings (numba does not contract
#     ``a*b + c`` into an FMA unless told to); scalars are rounded to float32 first, as torch does;
#   * the lattice decoder rounds ``ref/eps`` and the subtraction separately, as the torch path does
#     (no fused multiply-add: every CPU decodes the same bytes against the same reference alike);
#   * integer hashes and checksums wrap modulo 2**32 in uint32.
# Torch's own ops remain the path for CUDA tensors. ``cache=True`` keeps the compiled code on disk,
# so only the first process of a checkout pays the compile time.

_KCHUNK = 1 << 14  # coordinates per kernel tile (whole buckets): the codes of one tile stay in L1/L2


_njit = functools.partial(numba.njit, cache=True, nogil=True, error_model="numpy", boundscheck=False)


@_njit
def _nb_dither(a: int, b: int, keys: np.ndarray, d: np.ndarray) -> None:
    """``d[i - a]`` = dither of coordinate i (float32 in [0, 2**24)), as ``_dither24`` defines it."""
    for r in range(a // 512, (b + 511) // 512):
        lo = max(a, r * 512)
        hi = min(b, r * 512 + 512)
        ka = keys[0, r]
        kb = keys[1, r]
        c0 = np.uint32(lo - r * 512)
        dv = d[lo - a : hi - a]  # loops index views from 0: numba then emits no negative-index fix-up
        for j in range(hi - lo):
            h = np.uint32(np.uint32(ka * np.uint32(c0 + np.uint32(j))) + kb)
            dv[j] = np.float32(np.int32(h >> np.uint32(8)))  # < 2**24: int32 converts in SIMD


@_njit
def _nb_pack(k: np.ndarray, m: int, bits: int, out: np.ndarray) -> None:
    """Pack ``k[:m]`` (int32, taken modulo 2**bits) into ``out`` bytes (little-endian, first code lowest)."""
    if bits == 8:
        for i in range(m):
            out[i] = np.uint8(k[i] & 0xFF)
    elif bits == 16:
        o16 = out[: 2 * m].view(np.uint16)
        for i in range(m):
            o16[i] = np.uint16(k[i] & 0xFFFF)
    elif bits == 4:
        full = m // 2
        for i in range(full):
            out[i] = np.uint8((k[2 * i] & 0xF) | ((k[2 * i + 1] & 0xF) << 4))
        if m % 2:
            out[full] = np.uint8(k[m - 1] & 0xF)
    else:
        full = m // 4
        for i in range(full):
            out[i] = np.uint8(
                (k[4 * i] & 3) | ((k[4 * i + 1] & 3) << 2) | ((k[4 * i + 2] & 3) << 4) | ((k[4 * i + 3] & 3) << 6)
            )
        rest = m - 4 * full
        if rest:
            v = 0
            for j in range(rest):
                v |= (k[4 * full + j] & 3) << (2 * j)
            out[full] = np.uint8(v)


@_njit
def _nb_unpack(packed: np.ndarray, m: int, bits: int, out: np.ndarray) -> None:
    """The first ``m`` codes of ``packed`` as float32 into ``out``."""
    if bits == 8:
        for i in range(m):
            out[i] = np.float32(np.int32(packed[i]))
    elif bits == 16:
        p16 = packed[: 2 * m].view(np.uint16)
        for i in range(m):
            out[i] = np.float32(np.int32(p16[i]))
    elif bits == 4:
        full = m // 2
        for i in range(full):
            v = np.int32(packed[i])
            out[2 * i] = np.float32(v & 0xF)
            out[2 * i + 1] = np.float32(v >> 4)
        if m % 2:
            out[m - 1] = np.float32(np.int32(packed[full]) & 0xF)
    else:
        full = m // 4
        for i in range(full):
            v = np.int32(packed[i])
            out[4 * i] = np.float32(v & 3)
            out[4 * i + 1] = np.float32((v >> 2) & 3)
            out[4 * i + 2] = np.float32((v >> 4) & 3)
            out[4 * i + 3] = np.float32(v >> 6)
        for j in range(m - 4 * full):
            out[4 * full + j] = np.float32((np.int32(packed[full]) >> (2 * j)) & 3)


@_njit
def _nb_encode_lattice(
    x: np.ndarray,
    inv_eps: float,
    bits: int,
    bucket: int,
    w: np.ndarray,
    keys: np.ndarray,
    chunk: int,
    header: np.ndarray,
    body: np.ndarray,
) -> bool:
    """Lattice encode of ``x`` into ``header`` ((buckets, 2) uint32) and ``body``; randomized rounding
    when ``keys`` has columns. Returns False when some ``|x|/eps`` is out of range or not finite."""
    n = x.shape[0]
    inv = np.float32(inv_eps)
    limit = np.float32(LATTICE_INDEX_LIMIT)
    rr = keys.shape[1] > 0
    k = np.empty(min(chunk, n), np.int32)
    d = np.zeros(min(chunk, n), np.float32)
    w0 = w[0]
    w1 = w[1]
    ok = True
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        if rr:
            _nb_dither(a, b, keys, d)
        for s in range(a, b, bucket):
            m = min(s + bucket, b) - s
            xv = x[s : s + m]
            kv = k[s - a : s - a + m]
            h0 = np.uint32(0)
            h1 = np.uint32(0)
            good = True
            if rr:
                dv = d[s - a : s - a + m]
                for j in range(m):
                    kf = np.floor(xv[j] * inv + dv[j] * np.float32(_DITHER_SCALE))
                    inside = (kf >= -limit) & (kf <= limit)
                    good &= inside
                    ki = np.int32(kf if inside else np.float32(0))
                    kv[j] = ki
                    q = np.uint32(ki >> bits)
                    h0 += np.uint32(w0[j] * q)
                    h1 += np.uint32(w1[j] * q)
            else:
                for j in range(m):
                    kf = np.rint(xv[j] * inv)
                    inside = (kf >= -limit) & (kf <= limit)
                    good &= inside
                    ki = np.int32(kf if inside else np.float32(0))
                    kv[j] = ki
                    q = np.uint32(ki >> bits)
                    h0 += np.uint32(w0[j] * q)
                    h1 += np.uint32(w1[j] * q)
            ok &= good
            header[s // bucket, 0] = h0
            header[s // bucket, 1] = h1
        _nb_pack(k, b - a, bits, body[(a * bits) // 8 :])
    return ok


@_njit
def _nb_decode_lattice(
    header: np.ndarray,
    body: np.ndarray,
    ref: np.ndarray,
    inv_eps: float,
    eps: float,
    bits: int,
    bucket: int,
    w: np.ndarray,
    chunk: int,
    out: np.ndarray,
    failed: np.ndarray,
) -> int:
    """Lattice decode into ``out``; failed buckets get ``ref``'s values and are flagged in ``failed`` (bool per
    bucket, all False on entry). Returns the failed bucket count."""
    n = out.shape[0]
    inv = np.float32(inv_eps)
    e32 = np.float32(eps)
    scale = np.float32(2.0**bits)
    inv_scale = np.float32(1.0 / 2.0**bits)
    c = np.empty(min(chunk, n), np.float32)
    w0 = w[0]
    w1 = w[1]
    fails = 0
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        _nb_unpack(body[(a * bits) // 8 :], b - a, bits, c)
        for s in range(a, b, bucket):
            m = min(s + bucket, b) - s
            cv = c[s - a : s - a + m]
            rv = ref[s : s + m]
            ov = out[s : s + m]
            h0 = np.uint32(0)
            h1 = np.uint32(0)
            for j in range(m):
                cj = cv[j]
                # ref/eps and the subtraction are two correctly rounded float32 ops (numba emits no FMA
                # for them); the scaling by 2**-bits is exact.
                r = rv[j] * inv
                t = np.rint((cj - r) * inv_scale)
                si = np.uint32(np.int32(t))
                h0 += np.uint32(w0[j] * si)
                h1 += np.uint32(w1[j] * si)
                ov[j] = (cj - scale * t) * e32
            # The receiver hashed -q_hat, so a correct bucket has H(-q_hat) + H(q) == 0 mod 2**32.
            if np.uint32(h0 + header[s // bucket, 0]) != 0 or np.uint32(h1 + header[s // bucket, 1]) != 0:
                fails += 1
                failed[s // bucket] = True
                ov[:] = rv
    return fails


@_njit
def _nb_encode_uniform(
    x: np.ndarray,
    lo: np.ndarray,
    inv: np.ndarray,
    levels: float,
    bits: int,
    bucket: int,
    keys: np.ndarray,
    chunk: int,
    body: np.ndarray,
) -> None:
    """Uniform encode of ``x`` (bucket minima ``lo`` and inverse steps ``inv`` already computed)."""
    n = x.shape[0]
    top = np.float32(levels)
    k = np.empty(min(chunk, n), np.int32)
    d = np.empty(min(chunk, n), np.float32)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        _nb_dither(a, b, keys, d)
        for s in range(a, b, bucket):
            m = min(s + bucket, b) - s
            xv = x[s : s + m]
            kv = k[s - a : s - a + m]
            dv = d[s - a : s - a + m]
            lb = lo[s // bucket]
            ib = inv[s // bucket]
            for j in range(m):
                y = np.floor((xv[j] - lb) * ib + dv[j] * np.float32(_DITHER_SCALE))
                kv[j] = np.int32(y if y < top else top)  # clamp_max; y is never NaN here
        _nb_pack(k, b - a, bits, body[(a * bits) // 8 :])


@_njit
def _nb_decode_uniform(
    header: np.ndarray, body: np.ndarray, bits: int, bucket: int, chunk: int, out: np.ndarray
) -> None:
    """Uniform decode into ``out``: ``code * step + minimum`` per bucket, two float32 roundings as in torch."""
    n = out.shape[0]
    c = np.empty(min(chunk, n), np.float32)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        _nb_unpack(body[(a * bits) // 8 :], b - a, bits, c)
        for s in range(a, b, bucket):
            m = min(s + bucket, b) - s
            cv = c[s - a : s - a + m]
            ov = out[s : s + m]
            lb = header[s // bucket, 0]
            st = header[s // bucket, 1]
            for j in range(m):
                ov[j] = cv[j] * st + lb


def _kernel_chunk(bucket: int) -> int:
    """Tile length of the CPU kernels: whole buckets and a multiple of 4 coordinates (byte-aligned codes)."""
    per = 4 // math.gcd(bucket, 4)
    m = max(1, _KCHUNK // bucket)
    return bucket * (-(-m // per) * per)


@functools.lru_cache(maxsize=32)
def _checksum_weights_np(bucket: int) -> np.ndarray:
    """``_checksum_weights`` as a uint32 numpy array for the CPU kernels."""
    return _checksum_weights(bucket, torch.device("cpu")).numpy().view(np.uint32)


# --------------------------------------------------------------------------------------------------
# the codec
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodecConfig:
    """How models are put on the wire.

    bits: bits per coordinate, one of ``BITS``; 32 sends raw float32 (no quantization).
    quantizer: ``"lattice"`` (Davies et al. 2021; needs the receiver's model to decode) or
        ``"uniform"`` (stochastic uniform quantization per bucket; needs nothing).
    eps: lattice spacing. The default 1e-3 is sized for 8 bits: error <= 5e-4 per coordinate
        (about 1% of a typical weight of magnitude 0.05) and a decodable radius of
        ``(2**7 - 1/2) * 1e-3 = 0.1275`` in the max-norm between neighbouring models. The radius
        scales as ``(2**(bits-1) - 1/2) * eps``, so at 4 bits the same eps tolerates only 0.0075:
        choose eps for other widths with ``suggest_eps(bits, radius)``, and raise it if ``decode``
        reports failed buckets. Unused by ``uniform`` and bits=32.
    bucket: coordinates per header entry. Smaller buckets localize lattice failures (a failed
        bucket is not averaged) and tighten uniform ranges, at 8 header bytes each.
    """

    bits: int = 32
    quantizer: str = "lattice"
    eps: float = 1e-3
    bucket: int = 1024


class Codec:
    """Encode a flat float32 model to wire bytes and decode it back.

    ``lattice`` (Davies et al. 2021, as used by SwarmSGD): the sender computes lattice indices
    ``k = round(x/eps)`` (or, when ``encode`` is given a generator, the unbiased randomized rounding
    ``k = floor(x/eps + u)``, u ~ U[0,1), so ``E[k*eps] = x`` to within about a float32 ulp of x) and
    sends ``c = k mod 2**bits``. The
    receiver reconstructs ``k_hat = c + 2**bits * round((reference/eps - c) / 2**bits)``, the index
    with residue ``c`` nearest its own model, and ``x_hat = k_hat * eps``. This is exact
    (``|x_hat - x| <= eps/2``, or ``< eps`` randomized, plus float32 rounding) whenever
    ``||x - reference||_inf < (2**(bits-1) - 1/2) * eps`` (randomized: ``<= (2**(bits-1) - 1) * eps``);
    see ``decodable_radius``. The sender's ``|x|/eps`` must be at most 2**30 (``UserError`` otherwise).

    Failure detection: the header holds, per bucket, two 32-bit checksums
    ``H_j = sum_i w_ji * q_i mod 2**32`` of the high parts ``q_i = floor(k_i / 2**bits)``, with
    fixed pseudo-random odd weights ``w_ji``. A wrong residue-class choice changes ``q_i`` by some
    nonzero ``m_i`` and the checksums by ``sum_i w_ji m_i``. With one wrong coordinate that is never
    0 mod 2**32 (``w`` is odd and ``0 < |m_i| < 2**32``), so the failure is always detected. For
    several wrong coordinates, if ``2**t`` is the largest power of two dividing all ``m_i``, a failure
    goes unnoticed with probability at most ``2**-(62 - 2t)`` over the weights (each checksum is a
    universal hash modulo 2**32 with odd random multipliers, and the two are independent). Typical
    failures, indices off by one wrap, have ``t = 0``: ``2**-62``. Hashing ``q`` rather than ``k``
    keeps all 32 bits: a shift of ``k`` by a multiple of ``2**bits`` would lose ``bits`` bits of each
    checksum. Failed buckets decode to the reference's own values (the receiver keeps its model
    there, so the bucket is simply not averaged) and are reported (``decode_buckets``; peers
    exchange them as bitmaps, ``pack_failures``).

    ``uniform`` (stochastic rounding, as in QSGD, Alistarh et al. 2017): per bucket, with
    ``lo = min x`` and step ``s = (max x - lo) / (2**bits - 1)``, each coordinate is sent as
    ``floor((x - lo)/s + u)``, u ~ U[0,1), so ``E[x_hat] = x`` (to within about a float32 ulp of
    ``max - min``: the dither has 24 bits and ``(x - lo)/s + u`` is rounded to float32) and
    ``|x_hat - x| < s``. Each coordinate's variance is ``s**2 p(1-p) <= s**2/4``; per bucket of
    ``d`` coordinates ``E||x_hat - x||^2 <= d (max - min)^2 / (4 (2**bits - 1)^2)``. No reference.

    Everything runs on the input's device. Misuse by calling code (wrong dtype, shape, message size,
    missing reference) raises ``ValueError``; impossible settings and unencodable models raise
    ``UserError``. A codec is stateless and may be shared between threads.
    """

    def __init__(self, cfg: CodecConfig) -> None:
        if cfg.bits not in BITS:
            raise UserError(f"bits={cfg.bits} is not supported; use one of {', '.join(map(str, BITS))}")
        if cfg.quantizer not in QUANTIZERS:
            raise UserError(f"quantizer={cfg.quantizer!r} is unknown; use one of {', '.join(QUANTIZERS)}")
        if not (isinstance(cfg.eps, numbers.Real) and math.isfinite(cfg.eps) and cfg.eps > 0):
            raise UserError(f"eps={cfg.eps} must be a positive finite number; try suggest_eps(bits, radius)")
        if isinstance(cfg.bucket, bool) or not isinstance(cfg.bucket, numbers.Integral) or cfg.bucket < 1:
            raise UserError(f"bucket={cfg.bucket} must be an integer >= 1; the default is 1024")
        self.cfg = cfg
        self._inv_eps = 1.0 / float(cfg.eps)

    def __repr__(self) -> str:
        return f"Codec({self.cfg})"

    # ---- sizes -----------------------------------------------------------------------------------

    def num_buckets(self, numel: int) -> int:
        """Header entries for a model of ``numel`` coordinates (0 when bits == 32)."""
        return 0 if self.cfg.bits == 32 else -(-numel // self.cfg.bucket)

    def wire_bytes(self, numel: int) -> int:
        """Exact message size for ``numel`` coordinates: ``len(encode(x))`` for every such x."""
        if self.cfg.bits == 32:
            return 4 * numel
        return HEADER_BYTES_PER_BUCKET * self.num_buckets(numel) + packed_bytes(numel, self.cfg.bits)

    @property
    def radius(self) -> float:
        """Decodable max-norm radius with deterministic rounding (inf when decoding cannot fail)."""
        if self.cfg.bits == 32 or self.cfg.quantizer != "lattice":
            return math.inf
        return decodable_radius(self.cfg.bits, self.cfg.eps)

    def _chunks(self, n: int, device: torch.device) -> list[tuple[int, int]]:
        step = _chunk_len(self.cfg.bucket, device)
        return [(a, min(a + step, n)) for a in range(0, n, step)]

    def _split(self, msg: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(header as int32 of shape (buckets, 2), packed codes) views of a message."""
        hdr = HEADER_BYTES_PER_BUCKET * self.num_buckets(n)
        return msg[:hdr].view(torch.int32).view(-1, 2), msg[hdr:]

    def warm_up(self) -> None:
        """Load (or compile, the first time for a checkout) the CPU kernels of this configuration now: run
        before the training clock starts, so that no algorithm's timed steps pay for it. Uses a private
        generator, so no random stream of the run moves."""
        if self.cfg.bits == 32:
            return
        x = torch.linspace(-1.0, 1.0, 2 * self.cfg.bucket + 3)
        for generator in (None, torch.Generator().manual_seed(0)):
            if generator is None and self.cfg.quantizer == "uniform":
                continue  # uniform always rounds stochastically: without a generator it would draw from torch's
            self.decode(self.encode(x, generator=generator), x.numel(), torch.zeros_like(x))

    # ---- encode ----------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """1-D float32 model -> 1-D uint8 message of ``wire_bytes(len(x))``, a fresh tensor on x's device.

        ``generator`` seeds stochastic rounding: always used by ``uniform`` (torch's default
        generator when None); for ``lattice`` a generator switches from deterministic to unbiased
        randomized rounding. Keys for 2 words per 512 coordinates are drawn from it per call; the
        same generator state gives the same bytes on CPU and CUDA.
        """
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.dim() != 1:
            got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"encode needs a 1-D float32 tensor, got {got}")
        x = x.contiguous()
        if self.cfg.bits == 32:
            # A copy, not x.view(uint8): the sender keeps training in place while the message is in flight.
            return x.view(torch.uint8).clone()
        n = x.numel()
        msg = torch.empty(self.wire_bytes(n), dtype=torch.uint8, device=x.device)
        if n:
            header, body = self._split(msg, n)
            if x.device.type == "cpu":
                self._encode_cpu(x.detach(), header, body, generator)
            elif self.cfg.quantizer == "lattice":
                self._encode_lattice(x, header, body, generator)
            else:
                self._encode_uniform(x, header.view(torch.float32), body, generator)
        return msg

    def _encode_cpu(
        self, x: torch.Tensor, header: torch.Tensor, body: torch.Tensor, generator: torch.Generator | None
    ) -> None:
        """The fused numba kernels; bit-identical to ``_encode_lattice`` / ``_encode_uniform``."""
        bits, bucket, eps = self.cfg.bits, self.cfg.bucket, self.cfg.eps
        n = x.numel()
        chunk = _kernel_chunk(bucket)
        xs, hdr, out = x.numpy(), header.numpy().view(np.uint32), body.numpy()
        if self.cfg.quantizer == "lattice":
            if generator is None:
                keys = np.zeros((2, 0), dtype=np.uint32)
            else:
                keys = _dither_keys(n, x.device, generator).numpy().view(np.uint32)
            w = _checksum_weights_np(bucket)
            if not _nb_encode_lattice(xs, self._inv_eps, bits, bucket, w, keys, chunk, hdr, out):
                lo, hi = (v.item() for v in torch.aminmax(torch.mul(x, self._inv_eps)))
                worst = hi * eps if -LATTICE_INDEX_LIMIT <= lo else lo * eps
                raise UserError(
                    f"model value {worst:g} is out of range for lattice eps={eps:g} (need finite |x|/eps <= 2^30);"
                    " raise eps or check the run for divergence"
                )
            return
        keys = _dither_keys(n, x.device, generator).numpy().view(np.uint32)
        parts = _bucket_parts(x, bucket)
        lo = torch.cat([v.amin(1) for v, _ in parts])
        span = torch.cat([v.amax(1) for v, _ in parts]).sub_(lo).double()
        step = (span / float(2**bits - 1)).float()
        if not bool(torch.isfinite(step).all()):
            raise UserError("model has non-finite values (NaN or inf); check the run for divergence")
        header.view(torch.float32).copy_(torch.stack((lo, step), 1))
        inv = torch.where(step > 0, 1.0 / step.double(), 0.0).float()
        _nb_encode_uniform(xs, lo.numpy(), inv.numpy(), float(2**bits - 1), bits, bucket, keys, chunk, out)

    def _encode_lattice(
        self, x: torch.Tensor, header: torch.Tensor, body: torch.Tensor, generator: torch.Generator | None
    ) -> None:
        bits, bucket, eps = self.cfg.bits, self.cfg.bucket, self.cfg.eps
        sc = _Scratch(x.device)
        keys = None if generator is None else _dither_keys(x.numel(), x.device, generator)
        ranges = []
        for a, b in self._chunks(x.numel(), x.device):
            kf = sc.get("floats", b - a, torch.float32)
            torch.mul(x[a:b], self._inv_eps, out=kf)
            if keys is None:
                kf.round_()
            else:
                kf.add_(_dither24(a, b - a, keys, sc), alpha=_DITHER_SCALE)
                kf.floor_()
            ranges.append(torch.stack(torch.aminmax(kf)))
            k = sc.get("ints", b - a, torch.int32)
            k.copy_(kf)
            _pack(k, bits, body[packed_bytes(a, bits) : packed_bytes(b, bits)], sc)  # residues k mod 2**bits
            k.bitwise_right_shift_(bits)  # q = floor(k / 2**bits): what the checksums cover
            header[a // bucket : -(-b // bucket)].copy_(_bucket_checksums(k, bucket, sc))
        # One check (one device sync) at the end; NaN fails both comparisons, so divergence is caught.
        lo, hi = (v.item() for v in torch.stack(ranges).aminmax())
        if not (-LATTICE_INDEX_LIMIT <= lo and hi <= LATTICE_INDEX_LIMIT):
            worst = hi * eps if -LATTICE_INDEX_LIMIT <= lo else lo * eps
            raise UserError(
                f"model value {worst:g} is out of range for lattice eps={eps:g} (need finite |x|/eps <= 2^30);"
                " raise eps or check the run for divergence"
            )

    def _encode_uniform(
        self, x: torch.Tensor, header: torch.Tensor, body: torch.Tensor, generator: torch.Generator | None
    ) -> None:
        bits, bucket = self.cfg.bits, self.cfg.bucket
        levels = float(2**bits - 1)
        sc = _Scratch(x.device)
        keys = _dither_keys(x.numel(), x.device, generator)
        finite = []
        for a, b in self._chunks(x.numel(), x.device):
            parts = _bucket_parts(x[a:b], bucket)
            lo = torch.cat([v.amin(1) for v, _ in parts])
            # Per-bucket scalars in float64, rounded once to float32: CUDA turns division by a
            # scalar into multiplication by its reciprocal, so float32 division here would give
            # other bytes on GPU than on CPU.
            span = torch.cat([v.amax(1) for v, _ in parts]).sub_(lo).double()
            step = (span / levels).float()
            finite.append(torch.isfinite(step).all())  # amin/amax propagate NaN; inf gives inf or NaN
            header[a // bucket : -(-b // bucket)].copy_(torch.stack((lo, step), 1))
            # Invert the very step the receiver multiplies by; a constant bucket has step 0 and
            # sends all-zero codes.
            inv = torch.where(step > 0, 1.0 / step.double(), 0.0).float()
            y = sc.get("floats", b - a, torch.float32)
            for (xv, sl), (yv, _) in zip(parts, _bucket_parts(y, bucket), strict=True):
                torch.sub(xv, lo[sl, None], out=yv)
                yv.mul_(inv[sl, None])
            y.add_(_dither24(a, b - a, keys, sc), alpha=_DITHER_SCALE)
            y.floor_()
            # y >= 0 exactly (x >= lo); rounding in 1/step can push the top code one past the end.
            y.clamp_max_(levels)
            k = sc.get("ints", b - a, torch.int32)
            k.copy_(y)  # float -> int32 is fast; float -> uint8 is not vectorized in torch
            _pack(k, bits, body[packed_bytes(a, bits) : packed_bytes(b, bits)], sc)
        if not bool(torch.stack(finite).all()):
            raise UserError("model has non-finite values (NaN or inf); check the run for divergence")

    # ---- decode ----------------------------------------------------------------------------------

    def decode(self, msg: torch.Tensor, numel: int, reference: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """Message -> (float32 model of ``numel`` on msg's device, number of failed buckets).

        ``reference`` (the receiver's own model, 1-D float32 of ``numel`` on msg's device) is
        required by ``lattice`` and ignored otherwise. Failed lattice buckets hold the reference's
        values; the count is always 0 for ``uniform`` and bits=32. The result is a fresh tensor.
        ``decode_buckets`` says which buckets failed.
        """
        out, failed = self.decode_buckets(msg, numel, reference)
        return out, int(failed.sum())

    def decode_buckets(
        self, msg: torch.Tensor, numel: int, reference: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Message -> (float32 model of ``numel``, bool per bucket: its lattice decode failed), on msg's device.

        As ``decode``, with the failed buckets themselves (shape ``(num_buckets(numel),)``, all False
        for ``uniform`` and bits=32). A bucket that passes its checksum holds the sender's lattice
        values ``k * eps`` bit for bit, whatever the reference; a failed one holds the reference's
        values. The outcome of each bucket depends only on the message bytes and on that bucket's
        reference values, and every float32 step is one correctly rounded operation, so any two
        decodes of the same bytes against the same reference agree exactly, on any CPU: a sender
        can predict its receiver's decode (``bench.core.comm`` does, to skip the same buckets).
        """
        expected = self.wire_bytes(numel)
        if not isinstance(msg, torch.Tensor) or msg.dtype != torch.uint8 or msg.dim() != 1:
            got = f"{msg.dtype} of shape {tuple(msg.shape)}" if isinstance(msg, torch.Tensor) else type(msg).__name__
            raise ValueError(f"decode needs a 1-D uint8 message, got {got}")
        if msg.numel() != expected:
            raise ValueError(
                f"message has {msg.numel()} bytes but {expected} are expected for numel={numel} "
                f"with {self.cfg}; sender and receiver must use the same codec and model size"
            )
        none_failed = torch.zeros(self.num_buckets(numel), dtype=torch.bool, device=msg.device)
        if self.cfg.bits == 32:
            return msg.clone().view(torch.float32), none_failed
        lattice = self.cfg.quantizer == "lattice"
        if lattice:
            if reference is None:
                raise ValueError("lattice decode needs reference=<the receiver's own model>")
            if reference.dtype != torch.float32 or reference.shape != (numel,):
                raise ValueError(
                    f"reference must be float32 of shape ({numel},), got {reference.dtype} {tuple(reference.shape)}"
                )
            if reference.device != msg.device:
                raise ValueError(f"reference is on {reference.device} but the message is on {msg.device}")
        out = torch.empty(numel, dtype=torch.float32, device=msg.device)
        if numel == 0:
            return out, none_failed
        if msg.storage_offset() % 4 or not msg.is_contiguous():  # header dtype views need alignment
            msg = msg.clone()
        header, body = self._split(msg, numel)
        if msg.device.type == "cpu":
            chunk = _kernel_chunk(self.cfg.bucket)
            hdr, codes, res = header.numpy(), body.numpy(), out.numpy()
            if lattice:
                assert reference is not None
                w = _checksum_weights_np(self.cfg.bucket)
                refs = reference.detach().contiguous().numpy()
                args = (self._inv_eps, self.cfg.eps, self.cfg.bits, self.cfg.bucket, w, chunk, res)
                _nb_decode_lattice(hdr.view(np.uint32), codes, refs, *args, none_failed.numpy())
                return out, none_failed  # now flags the failed buckets
            _nb_decode_uniform(hdr.view(np.float32), codes, self.cfg.bits, self.cfg.bucket, chunk, res)
            return out, none_failed
        if lattice:
            assert reference is not None
            return out, self._decode_lattice(header, body, reference.contiguous(), out)
        self._decode_uniform(header.view(torch.float32), body, out)
        return out, none_failed

    def _decode_lattice(
        self, header: torch.Tensor, body: torch.Tensor, ref: torch.Tensor, out: torch.Tensor
    ) -> torch.Tensor:
        bits, bucket, eps = self.cfg.bits, self.cfg.bucket, self.cfg.eps
        scale = 2.0**bits
        sc = _Scratch(out.device)
        ok = []
        for a, b in self._chunks(out.numel(), out.device):
            c = out[a:b]
            _unpack(body[packed_bytes(a, bits) : packed_bytes(b, bits)], bits, b - a, c, sc)
            # s = round((c - ref/eps) / 2**bits) = -q_hat and k_hat = c - 2**bits * s. Every step is
            # exact in float32 (power-of-two scalings of integers < 2**24) except ref/eps and the
            # subtraction, two correctly rounded ops. Not one ``sub(c, ref, alpha=1/eps)``: torch
            # fuses that multiply-add on CPUs with FMA (its AVX2/AVX-512 kernels) and rounds twice
            # elsewhere, so two hosts could decode the same bytes against the same reference apart.
            s = sc.get("floats", b - a, torch.float32)
            torch.mul(ref[a:b], self._inv_eps, out=s)
            torch.sub(c, s, out=s)
            s.mul_(1.0 / scale)
            s.round_()
            si = sc.get("ints", b - a, torch.int32)
            si.copy_(s)
            # The receiver hashed -q_hat, so a correct bucket has H(-q_hat) + H(q) == 0 mod 2**32.
            mine = _bucket_checksums(si, bucket, sc).to(torch.int64)
            sent = header[a // bucket : -(-b // bucket)].to(torch.int64)
            ok.append((((mine + sent) & _MASK32) == 0).all(1))
            c.add_(s, alpha=-scale).mul_(eps)
        bad = ~torch.cat(ok)
        if bool(bad.any()):  # the one device sync of a decode
            # Keep the receiver's own values in failed buckets: they are then simply not averaged.
            mask = self.coordinates(bad, out.numel())
            out[mask] = ref[mask]
        return bad

    # ---- failed buckets --------------------------------------------------------------------------

    @property
    def can_fail(self) -> bool:
        """Whether a decode can fail (lattice below 32 bits): only then do peers exchange failure bitmaps."""
        return self.cfg.bits != 32 and self.cfg.quantizer == "lattice"

    def bitmap_bytes(self, numel: int) -> int:
        """Size of a failure bitmap for ``numel`` coordinates: one bit per bucket when decoding can fail, else 0."""
        return -(-self.num_buckets(numel) // 8) if self.can_fail else 0

    def coordinates(self, failed: torch.Tensor, numel: int) -> torch.Tensor:
        """Bool per bucket -> bool per coordinate (the last bucket may be short)."""
        return failed.repeat_interleave(self.cfg.bucket)[:numel]

    def pack_failures(self, failed: torch.Tensor) -> torch.Tensor:
        """Bool per bucket -> the failure bitmap, ``bitmap_bytes`` uint8 on the CPU: bucket i is bit i % 8 of
        byte i // 8 (lowest bit first, as the codes are packed), the last byte zero-padded."""
        failed = failed.to("cpu", torch.bool)
        if not self.can_fail:
            if bool(failed.any()):
                raise ValueError(f"{self.cfg} cannot fail, but failed buckets were given")
            return torch.empty(0, dtype=torch.uint8)
        nbytes = -(-failed.numel() // 8)
        bits = torch.zeros(8 * nbytes, dtype=torch.uint8)
        bits[: failed.numel()] = failed
        return (bits.view(nbytes, 8) << _BIT_SHIFTS).sum(1, dtype=torch.uint8)

    def unpack_failures(self, bitmap: torch.Tensor, numel: int) -> torch.Tensor:
        """Inverse of ``pack_failures`` for a model of ``numel`` coordinates: bool per bucket, on the CPU."""
        buckets, nbytes = self.num_buckets(numel), self.bitmap_bytes(numel)
        if bitmap.dtype != torch.uint8 or bitmap.shape != (nbytes,):
            raise ValueError(
                f"a failure bitmap for numel={numel} is uint8 of shape ({nbytes},), "
                f"got {bitmap.dtype} {tuple(bitmap.shape)}"
            )
        if not self.can_fail:
            return torch.zeros(buckets, dtype=torch.bool)
        bits = (bitmap.to("cpu")[:, None] >> _BIT_SHIFTS) & 1
        return bits.reshape(-1)[:buckets].bool()

    def _decode_uniform(self, header: torch.Tensor, body: torch.Tensor, out: torch.Tensor) -> None:
        bits, bucket = self.cfg.bits, self.cfg.bucket
        sc = _Scratch(out.device)
        _unpack(body, bits, out.numel(), out, sc)
        lo, step = header[:, 0], header[:, 1]
        for v, sl in _bucket_parts(out, bucket):
            v.mul_(step[sl, None]).add_(lo[sl, None])


def compile_kernels() -> None:
    """Compile (or load from the on-disk cache) every CPU kernel now: `make setup` runs this once, so the first
    run of a checkout, and processes started together under mpirun, load compiled code instead of each
    compiling it at once. The kernels are typed by their arguments, not by the bit width, so one width of each
    quantizer, with and without randomized rounding, covers every configuration."""
    for quantizer in ("lattice", "uniform"):
        Codec(CodecConfig(bits=8, quantizer=quantizer)).warm_up()


if __name__ == "__main__":
    compile_kernels()
