"""edge-sdk: put distilled models on laptops, Raspberry Pis and NPUs.

``load`` needs only numpy and the inference engine; ``export`` and ``distill`` need the conversion extra
(``pip install 'edge-sdk[convert]'``) and imports torch when called, not before.

Example::

    import edge_sdk
    edge_sdk.export("path/to/hf-model", "out/pkg")
    lm = edge_sdk.load("out/pkg")
    print(lm.generate("Hello", max_new_tokens=16).text)
"""

from __future__ import annotations

import logging

from edge_sdk._version import __version__
from edge_sdk.errors import EdgeSDKError
from edge_sdk.runtimes import load
from edge_sdk.serving.cascade import Cascade

logging.getLogger("edge_sdk").addHandler(logging.NullHandler())


def export(model, output, options=None, *, overwrite: bool = False, progress: bool = True):
    """Export a model to an edge package; see ``edge_sdk.converters.export.export``."""
    from edge_sdk.errors import missing_extra

    try:
        from edge_sdk.converters.export import export as _export
    except ImportError as e:
        if e.name and e.name.split(".")[0] in ("torch", "transformers", "onnx", "onnxscript", "safetensors", "huggingface_hub"):
            raise missing_extra(e.name.split(".")[0], "convert", "exporting a model") from e
        raise
    return _export(model, output, options, overwrite=overwrite, progress=progress)


def distill(teacher, output, data, options=None, **kwargs):
    """Distill a student from a causal-LM teacher; see ``edge_sdk.distillation.train.distill``.

    ``options`` is an ``edge_sdk.distillation.DistillationOptions``; without one, keyword arguments
    naming its fields make one (``edge_sdk.distill("teacher", "student", "corpus/", keep_layers=2)``).
    """
    from edge_sdk.distillation.options import DistillationOptions
    from edge_sdk.errors import missing_extra

    run_arguments = {k: kwargs.pop(k) for k in ("overwrite", "resume", "progress", "on_step") if k in kwargs}
    options = options or DistillationOptions(**kwargs)
    try:
        from edge_sdk.distillation.train import distill as _distill
    except ImportError as e:
        if e.name and e.name.split(".")[0] in ("torch", "transformers", "safetensors"):
            raise missing_extra(e.name.split(".")[0], "convert", "distilling a model") from e
        raise
    return _distill(teacher, output, data, options, **run_arguments)


__all__ = ["__version__", "Cascade", "EdgeSDKError", "distill", "export", "load"]
