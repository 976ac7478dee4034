"""Noise and filters for the procedural landscape (:mod:`landcover.demo.landscape`): FFT fractal noise, bilinear
upsampling, Gaussian blur, shifted masks and the sensor's point-spread.

All of them are deterministic given their inputs; the only randomness, in :func:`fractal_noise`, comes from the
generator the caller passes, so the landscape's single seeded stream stays in one order.
"""

from __future__ import annotations

import math

import numpy as np


def freqs(n: int) -> np.ndarray:
    """Squared radial frequency (cycles per pixel) on the rfft2 grid of an n x n array."""
    fy = np.fft.fftfreq(n).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(n).astype(np.float32)[None, :]
    return fx * fx + fy * fy


def fractal_noise(rng: np.random.Generator, n: int, beta: float, lowres: int | None = None) -> np.ndarray:
    """Zero-mean, unit-variance 1/f^beta noise: beta ~2 for texture, 3-4 for smooth terrain-like fields.

    Smooth fields are drawn at ``lowres`` and upsampled: they have no fine detail to lose.
    """
    m = min(lowres or n, n)
    f2 = freqs(m)
    f2[0, 0] = 1.0
    spec = np.fft.rfft2(rng.standard_normal((m, m), dtype=np.float32)) * f2 ** (-beta / 4)
    spec[0, 0] = 0
    out = np.fft.irfft2(spec, s=(m, m))
    out = (out - out.mean()) / (out.std() + 1e-9)
    return (out if m == n else resize(out, n)).astype(np.float32)


def resize(a: np.ndarray, n: int) -> np.ndarray:
    """Bilinear upsampling of a square array to n x n."""
    m = a.shape[0]
    pos = (np.arange(n, dtype=np.float32) + 0.5) * (m / n) - 0.5
    i0 = np.floor(pos).astype(int)
    w = (pos - i0).astype(np.float32)
    i0, i1 = np.clip(i0, 0, m - 1), np.clip(i0 + 1, 0, m - 1)
    rows = a[i0] * (1 - w)[:, None] + a[i1] * w[:, None]
    return rows[:, i0] * (1 - w)[None, :] + rows[:, i1] * w[None, :]


def gauss(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur through the FFT (wraps around the edges, harmless for the soft masks it is used on)."""
    g = np.exp(-2 * math.pi**2 * sigma**2 * freqs(a.shape[0]))
    return np.fft.irfft2(np.fft.rfft2(a.astype(np.float32)) * g, s=a.shape)


def shift(mask: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """``mask`` moved by dr rows and dc columns, filled with False."""
    out = np.zeros_like(mask)
    n, m = mask.shape
    out[max(dr, 0):n + min(dr, 0), max(dc, 0):m + min(dc, 0)] = mask[max(-dr, 0):n - max(dr, 0),
                                                                     max(-dc, 0):m - max(dc, 0)]
    return out


def psf(img: np.ndarray) -> np.ndarray:
    """The sensor's point-spread: a [1, 2, 1] / 4 kernel along rows and columns (it also mixes class edges)."""
    for axis in (0, 1):
        a = np.swapaxes(img, 0, axis)
        b = a.copy()
        b[1:-1] = 0.5 * a[1:-1] + 0.25 * (a[:-2] + a[2:])
        img = np.swapaxes(b, 0, axis)
    return img
