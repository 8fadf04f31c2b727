"""``tf.image.resize(..., "lanczos3", antialias=True)`` in numpy, bit for bit, without TensorFlow.

TF runs it as its CPU ``ScaleAndTranslate`` kernel: per axis, a span of source pixels and float32 weights
for every output pixel (the lanczos3 kernel, stretched by the downscale factor, normalized to sum 1), then
a pass over rows into a float32 buffer and a pass over columns, each accumulating ``acc += w * x`` in
float32 from the first tap to the last. This module repeats those float32 operations in the same order, so
the float output equals TF's exactly; the lanczos kernel calls the C library's ``sinf`` as TF's
``std::sin(float)`` does. A double ``sin`` rounded to float instead changes 105 of the 2016 normalized
weights of a 256 -> 224 resize by one ulp (one kernel value off shifts its whole row through the
normalization), which moves about 1 pixel value in a million by one level after rounding.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

_F32 = np.float32
# sampling_kernels.h: `constexpr float kPI = 3.14159265359`, radius 3
_PI = _F32(3.14159265359)
_RADIUS = _F32(3.0)


@functools.lru_cache(maxsize=1)
def _sinf() -> Callable[[float], float]:
    """The C library's single-precision sine (TF calls it), or a double sine if no libm can be loaded."""
    import ctypes
    import ctypes.util

    for name in ("libm.so.6", ctypes.util.find_library("m")):
        if not name:
            continue
        try:
            fn = ctypes.CDLL(name).sinf
        except (OSError, AttributeError):
            continue
        fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
        return fn
    return math.sin


def _lanczos3(x: np.float32) -> np.float32:
    """``LanczosKernelFunc(3)``: float32 operations in the order TF's C++ evaluates them."""
    x = abs(x)
    if x > _RADIUS:
        return _F32(0.0)
    if x <= 1e-3:  # the sin(x)/x limit
        return _F32(1.0)
    sinf = _sinf()
    s1, s2 = _F32(sinf(float(_PI * x))), _F32(sinf(float(_PI * x / _RADIUS)))
    return _RADIUS * s1 * s2 / (_PI * _PI * x * x)


@functools.lru_cache(maxsize=32)
def _spans(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """TF's ``ComputeSpansCore`` for scale ``out/in``, translation 0.

    Returns:
        (idx, weights), both (out_size, span_size): the source index of each tap (clamped into the image;
        taps past TF's real span get weight 0, and adding 0 leaves a float32 sum unchanged) and its weight.
    """
    scale = _F32(out_size) / _F32(in_size)  # tf.image.resize: cast(size, f32) / cast(shape, f32)
    inv_scale = _F32(1.0 / float(scale))
    kernel_scale = max(inv_scale, _F32(1.0))
    reach = _RADIUS * kernel_scale
    span_size = min(2 * math.ceil(float(reach)) + 1, in_size)
    one_over_kernel_scale = _F32(1.0) / kernel_scale
    idx = np.zeros((out_size, span_size), np.int64)
    weights = np.zeros((out_size, span_size), np.float32)
    for x in range(out_size):
        sample = (_F32(x) + _F32(0.5)) * inv_scale + _F32(-0.0)  # + inv_translate (= -inv_scale * 0)
        start = min(max(math.ceil(float(sample - reach - _F32(0.5))), 0), in_size - 1)
        end = min(max(math.floor(float(sample + reach - _F32(0.5))), 0), in_size - 1) + 1
        taps = [_lanczos3((_F32(s) + _F32(0.5) - sample) * one_over_kernel_scale) for s in range(start, end)]
        total = _F32(0.0)
        for w in taps:
            total = total + w
        if abs(total) >= 1000.0 * np.finfo(np.float32).tiny:
            inv_total = _F32(1.0) / total
            weights[x, : len(taps)] = [w * inv_total for w in taps]
        idx[x] = np.minimum(start + np.arange(span_size), in_size - 1)
    return idx, weights


def _gather_sum(x: np.ndarray, idx: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Resize axis 0 of float32 `x`: ``out[i] = sum_j weights[i, j] * x[idx[i, j]]``, summed tap by tap."""
    acc = np.zeros((idx.shape[0], *x.shape[1:]), np.float32)
    term = np.empty_like(acc)
    for j in range(idx.shape[1]):
        np.take(x, idx[:, j], axis=0, out=term)
        term *= weights[:, j, None, None]
        acc += term
    return acc


def lanczos3_resize_f32(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) image -> (height, width, C) float32, equal to TF's lanczos3 antialiased resize output.

    Rows first (into a (height, W, C) buffer), then columns, as TF's CPU kernel does; the column pass
    runs on the transposed buffer so that both passes gather whole contiguous rows.

    Args:
        img: the (H, W, C) image.
        height: the output height.
        width: the output width.
    """
    x = np.asarray(img).astype(np.float32)
    rows = _gather_sum(x, *_spans(x.shape[0], height))
    cols = _gather_sum(np.ascontiguousarray(rows.transpose(1, 0, 2)), *_spans(x.shape[1], width))
    return np.ascontiguousarray(cols.transpose(1, 0, 2))
