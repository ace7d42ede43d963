"""Distillation, the second lever: a smaller student learns a causal-LM teacher's behaviour.

Torch side (like ``edge_sdk.converters``): the runtime never imports it. The student is a Hugging
Face directory that ``edge_sdk.export`` takes like any model.

Example::

    from edge_sdk.distillation import DistillationOptions, distill
    distill("out/tiny-lm", "out/student", "corpus/", DistillationOptions(keep_layers=2, steps=300))
"""

from __future__ import annotations

from edge_sdk.distillation.options import DistillationOptions


def distill(teacher, output, data, options: DistillationOptions, **kwargs):
    """See ``edge_sdk.distillation.train.distill``."""
    from edge_sdk.distillation.train import distill as _distill

    return _distill(teacher, output, data, options, **kwargs)


__all__ = ["DistillationOptions", "distill"]
