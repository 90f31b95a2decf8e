"""The array operations that NumPy and torch spell differently, for the search code written once over both.

The search code uses what both array types share (indexing, arithmetic, comparisons, `reshape`, `argmax(-1)`,
`cumsum(-1)`, `sum(-1)`, `all()`, `any()`) and an ops object for the rest: `NumpyOps` for onnxruntime, `TorchOps` in
`captioning.model.generation`. Ties break alike (a stable sort), so both choose the same tokens from the same numbers.
"""

from __future__ import annotations

import numpy as np

_DTYPES = {"int": np.int64, "bool": np.bool_, "float": np.float32}


class NumpyOps:
    sync_every = 1  # how often a search reads "have all rows ended?" back (a GPU waits for it; the host does not)

    def full(self, shape, value, kind: str):
        return np.full(shape, value, dtype=_DTYPES[kind])

    def arange(self, n: int):
        return np.arange(n)

    def where(self, condition, a, b):
        return np.where(condition, a, b)

    def cat(self, arrays, axis: int):
        return np.concatenate(arrays, axis=axis)

    def take(self, x, index, axis: int):
        return np.take_along_axis(x, index, axis=axis)

    def topk(self, x, k: int):
        """The k largest along the last axis, largest first and equal values by position: (values, indices)."""
        index = np.argpartition(-x, k - 1, axis=-1)[..., :k]
        index = np.take_along_axis(index, np.lexsort((index, -np.take_along_axis(x, index, -1)), axis=-1), -1)
        return np.take_along_axis(x, index, axis=-1), index

    def float64(self, x):
        return x.astype(np.float64)

    def exp(self, x):
        return np.exp(x)

    def uniform(self, shape, rng: np.random.Generator | None):
        """Uniform [0, 1) float64 draws, from `rng` (which torch reads the same way) or a fresh generator."""
        return (rng or np.random.default_rng()).random(shape)


NUMPY = NumpyOps()
