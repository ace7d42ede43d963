"""Comparing a converted graph with its reference: collect every mismatch, then raise one error."""

from __future__ import annotations

import numpy as np

from edge_sdk.errors import ValidationError


class Comparison:
    """Accumulates checks of converted outputs against reference outputs.

    Example::

        comparison = Comparison(atol=1e-4)
        comparison.check("prefill: logits", onnx_logits, torch_logits)
        comparison.raise_if_failed("the exported decoder does not reproduce the PyTorch model")
    """

    def __init__(self, atol: float):
        self.atol = atol
        self.mismatches: list[str] = []
        self._max_diff: dict[str, float] = {}

    def check(self, name: str, actual: np.ndarray, expected: np.ndarray) -> float:
        """Record the max absolute difference; a mismatch if shapes differ, values are not finite or exceed atol."""
        if actual.shape != expected.shape:
            self.mismatches.append(f"{name}: shape {actual.shape} != reference {expected.shape}")
            return float("inf")
        if not np.all(np.isfinite(actual)):
            self.mismatches.append(f"{name}: non-finite values")
            return float("inf")
        diff = float(np.max(np.abs(actual.astype(np.float64) - expected))) if actual.size else 0.0
        kind = name.split(": ")[-1].split(".")[0]  # "prefill: present.3.key" -> "present"
        self._max_diff[kind] = max(self._max_diff.get(kind, 0.0), diff)
        if diff > self.atol:
            self.mismatches.append(f"{name}: max abs diff {diff:.3g} > atol {self.atol:g}")
        return diff

    def check_equal(self, name: str, actual, expected) -> None:
        if list(actual) != list(expected):
            self.mismatches.append(f"{name}: {list(actual)[:12]} != reference {list(expected)[:12]}")

    def max_diffs(self) -> dict[str, float]:
        """Largest difference seen per output kind (``logits``, ``present`` ...)."""
        return dict(self._max_diff)

    def raise_if_failed(self, what: str) -> None:
        if self.mismatches:
            shown = self.mismatches[:10]
            more = f" (and {len(self.mismatches) - 10} more)" if len(self.mismatches) > 10 else ""
            raise ValidationError(
                f"{what}: {'; '.join(shown)}{more}; report this with the model's config.json, "
                "or pass a larger --atol if the differences are acceptable"
            )
