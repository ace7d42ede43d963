"""torch's CPU ``randn`` in numpy: the initial noise a diffusers pipeline draws with
``torch.Generator("cpu").manual_seed(seed)``, without torch (issue 33: a seed reproduces a diffusers image).

torch's CPU generator is a 32-bit Mersenne Twister (MT19937) seeded with the seed's low 32 bits by the
standard ``init_genrand``, the generator numpy's legacy ``RandomState(seed)`` also is. For a float32
tensor of at least 16 elements torch's ``normal_`` (ATen's ``normal_fill``) first fills the tensor with
uniforms, one 32-bit draw each (its low 24 bits times 2**-24), then turns each run of 16 into normals by
Box-Muller: for j < 8, ``u1 = 1 - x[j]``, ``u2 = x[j + 8]``, ``r = sqrt(-2 log u1)``, ``x[j] = r cos(2 pi u2)``,
``x[j + 8] = r sin(2 pi u2)``; when the size is not a multiple of 16 the last 16 positions are drawn
again from the generator and transformed once more. torch computes the transform in float32 (AVX2 on
x86-64, with Sleef's log / sincos, each within an ulp); here every operation is rounded to float32
the same way, log, sin and cos correctly rounded: measured, 83-85% of the values are torch's bit for
bit and the rest within 3 float32 ulps (tests/test_torch_noise.py). Bit for bit would need Sleef's
polynomials in numpy. Smaller tensors take another path in
torch (doubles, one normal at a time) and are refused here.
"""

from __future__ import annotations

import math

import numpy as np

from edge_sdk.errors import InvalidInputError

_BLOCK = 16


def _uniforms(state: np.random.RandomState, count: int) -> np.ndarray:
    """``count`` of torch's float32 uniforms in [0, 1): a 32-bit draw's low 24 bits times 2**-24 (exact
    in float32). randint over the whole 32-bit range returns the generator's raw 32-bit outputs."""
    raw = state.randint(0, 2**32, size=count, dtype=np.uint64)
    return ((raw & ((1 << 24) - 1)).astype(np.float64) * 2.0**-24).astype(np.float32)


def _box_muller(blocks: np.ndarray) -> np.ndarray:
    """Runs of 16 uniforms (n, 16) -> normals, as ATen's AVX2 ``normal_fill_16``: each operation rounded
    to float32 as torch's are; log, sin and cos correctly rounded here, within an ulp in torch (Sleef)."""
    f32 = np.float32
    u1 = (f32(1) - blocks[:, :8]).astype(f32)
    radius = np.sqrt((f32(-2) * np.log(u1.astype(np.float64)).astype(f32)).astype(f32)).astype(f32)
    theta = (f32(2 * math.pi) * blocks[:, 8:]).astype(f32).astype(np.float64)
    cos, sin = np.cos(theta).astype(f32), np.sin(theta).astype(f32)
    return np.concatenate([(radius * cos).astype(f32), (radius * sin).astype(f32)], axis=1)


class TorchGenerator:
    """``torch.Generator("cpu").manual_seed(seed)`` for ``randn``: successive draws continue the same
    stream, as a diffusers pipeline's initial latents and then each step's noise (Euler ancestral,
    LCM, DDIM with eta > 0) do with one generator."""

    def __init__(self, seed: int):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
            raise InvalidInputError(f"a torch seed is an integer in [0, 2**64), got {seed!r}")
        self.seed = int(seed)
        self._state = np.random.RandomState(self.seed & 0xFFFFFFFF)

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        """float32 normals of ``shape``, the generator's next (see ``torch_randn``)."""
        shape = tuple(int(d) for d in shape)
        size = int(np.prod(shape))
        if size < _BLOCK:
            raise InvalidInputError(f"torch-compatible noise needs at least {_BLOCK} values, got shape {shape}")
        values = _uniforms(self._state, size)
        whole = size - size % _BLOCK
        out = np.empty(size, np.float32)
        out[:whole] = _box_muller(values[:whole].reshape(-1, _BLOCK)).reshape(-1)
        if size % _BLOCK:  # the tail: the last 16 positions drawn again and transformed once
            out[size - _BLOCK:] = _box_muller(_uniforms(self._state, _BLOCK).reshape(1, _BLOCK)).reshape(-1)
        return out.reshape(shape)


def torch_randn(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """float32 normals of ``shape`` as ``torch.randn(shape, generator=torch.Generator().manual_seed(seed))``
    draws them on an x86-64 CPU: the same uniforms and pairing, each value within 3 float32 ulps
    (about 5 in 6 bit for bit; see the module's docstring)."""
    return TorchGenerator(seed).randn(shape)
