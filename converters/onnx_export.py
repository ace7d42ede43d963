"""Generic PyTorch -> ONNX export with the dynamo-based exporter, and small ONNX graph utilities.

Task modules (``causal_lm`` ...) build a wrapper ``nn.Module`` with flat tensor inputs and outputs;
this module turns it into a saved ONNX graph and describes the graph for the manifest.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from edge_sdk.errors import ExportError

log = logging.getLogger("edge_sdk")

# Weights always go to a side file ("<graph>.onnx.data", ONNX external data), at every size:
# - protobuf cannot serialize a message over 2 GiB, so large models need it anyway;
# - writing a single-file graph serializes the whole proto in memory: on SmolLM2-135M that took
#   export peak RSS to 5.3x the FP32 weights, against 2.2x with external data;
# - ONNX Runtime creates a session from external data faster and with less memory (0.9 s / 611 MB
#   against 2.3 s / 738 MB on the same model).
# One layout for every size also means one code path for quantizers and runtimes to handle.


@contextlib.contextmanager
def quiet_exporter():
    """Silence the exporter's progress prints and warnings; our own progress bar reports the step."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if sink.getvalue():
            log.debug("exporter output:\n%s", sink.getvalue())


def export_onnx(
    module,
    args: tuple,
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_shapes: tuple,
) -> list[Path]:
    """Export ``module(*args)`` to ``path`` with torch.export + torch.onnx; return the files written.

    Weights go to ``<path>.data`` (ONNX external data). Initializers that are exact transposes of
    another (a tied embedding and LM head after constant folding) are stored once.
    """
    import torch

    use_exact_no_op_rules()
    with quiet_exporter(), torch.no_grad():
        try:
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                optimize=True,
                verbose=False,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_shapes=dynamic_shapes,
            )
        except Exception as e:
            summary = str(e).strip().splitlines()
            raise ExportError(
                f"torch.onnx could not export the model ({type(e).__name__}: {summary[-1] if summary else e}); "
                "run with --debug for the exporter's full report"
            ) from e
    store_transposed_weights_once(program.model)
    _drop_trace_metadata(program.model)
    with quiet_exporter():
        program.save(str(path), external_data=True)
    del program
    _release_rewriter_state()
    return [path] + sorted(p for p in path.parent.glob(f"{path.name}.data*") if p.is_file())


def use_exact_no_op_rules() -> None:
    """Make onnxscript's optimizer remove ``x + c``, ``x - c``, ``x * c`` and ``x / c`` only where
    ``c`` is exactly 0 (or 1), not where it is merely close to it; for this process, once.

    Its own no-op rules match a constant within ``abs_tol=1e-8`` of 0 and ``rel_tol=1e-5`` of 1, so
    the epsilon of an RMSNorm with ``rms_norm_eps=1e-8`` (Helium's default) was dropped as "+ 0":
    ``rsqrt(mean(x ** 2))`` is then infinite on a zero row (a padding token's embedding), and the
    exported model's logits and cache turned non-finite. Any family with such an epsilon, or a scale
    within 1e-5 of 1, was affected. The optimizer reads its default rules from
    ``onnxscript.rewriter._DEFAULT_REWRITE_RULES`` whenever it runs (the exporter's ``optimize=True``
    and our fusion passes); they become the same list with the tolerant no-op rules replaced by exact
    ones. A future onnxscript without that list is left as it is (the decoder families' parity tests
    would show a regression).
    """
    global _EXACT_NO_OP_RULES
    if _EXACT_NO_OP_RULES:
        return
    try:
        from onnxscript import rewriter
        from onnxscript.rewriter import pattern
        from onnxscript.rewriter.rules.common import _no_op
    except ImportError:
        return
    defaults = getattr(rewriter, "_DEFAULT_REWRITE_RULES", None)
    tolerant = set(getattr(_no_op, "rules", ()) or ())
    if defaults is None or not tolerant:
        return

    def exactly(value: float):
        def condition(context, x, c, **_) -> bool:
            constant = c.const_value
            if constant is None:
                return False
            array = constant.numpy()
            return array.size == 1 and array.dtype.kind in "fiu" and array.item() == value

        return condition

    def identity(op, x, **_):
        return op.Identity(x)

    exact = [
        *pattern.RewriteRule(lambda op, x, c: op.Add(x, c), identity, exactly(0)).commute(),
        *pattern.RewriteRule(lambda op, x, c: op.Mul(x, c), identity, exactly(1)).commute(),
        pattern.RewriteRule(lambda op, x, c: op.Sub(x, c), identity, exactly(0)),
        pattern.RewriteRule(lambda op, x, c: op.Div(x, c), identity, exactly(1)),
    ]
    rewriter._DEFAULT_REWRITE_RULES = (*exact, *(rule for rule in defaults if rule not in tolerant))
    _EXACT_NO_OP_RULES = True


_EXACT_NO_OP_RULES = False  # use_exact_no_op_rules() has run in this process


def _release_rewriter_state() -> None:
    """Let the exported graph (and the model weights it references) be garbage-collected.

    onnxscript's optimizer keeps module-level rewrite rules whose pattern matchers remember the last
    graph, node and match they visited (``_graph``, ``_current_node``, ``_match``): after an export
    that graph, with the model's parameters and every folded weight copy, stays alive. On
    SmolLM2-135M that held 1.2 GB while validation loaded the graph into ONNX Runtime. Forgetting
    that state is safe: the matcher sets all three again when it next matches.
    """
    try:
        from onnxscript.rewriter._matcher import SimplePatternMatcher
    except ImportError:  # a future onnxscript without that class has nothing for us to release
        return
    for obj in gc.get_objects():
        try:
            matcher = isinstance(obj, SimplePatternMatcher)
        except ReferenceError:  # a weak proxy whose referent is gone (isinstance asks it for its class)
            continue
        if matcher:
            for attribute in ("_graph", "_current_node"):
                if hasattr(obj, attribute):
                    setattr(obj, attribute, None)
            if hasattr(obj, "_match"):
                obj._match = type(obj._match)()
    gc.collect()


# Per-node metadata kept in the graph: the module path of each node (which layer a MatMul belongs to).
_KEPT_NODE_METADATA = ("pkg.torch.onnx.name_scopes", "pkg.torch.onnx.class_hierarchy")


def _drop_trace_metadata(model) -> None:
    """Remove the exporter's per-node stack traces and FX dumps (they outweigh a small model's weights)."""
    for node in model.graph.all_nodes():
        for key in [k for k in node.metadata_props if k not in _KEPT_NODE_METADATA]:
            del node.metadata_props[key]


def store_transposed_weights_once(model) -> int:
    """Replace initializers that equal the transpose of another initializer by a Transpose node.

    The dynamo exporter folds ``linear(x, W)`` into ``MatMul(x, W^T)`` with a pre-transposed
    constant; with tied weights (embedding == LM head) that stores the largest tensor of a small
    LM twice. ONNX Runtime folds the Transpose back at session creation. Returns bytes saved.
    """
    import onnx_ir as ir

    graph = model.graph
    matrices = {
        name: value
        for name, value in graph.initializers.items()
        if value.const_value is not None and len(value.const_value.shape) == 2 and not value.is_graph_input()
    }
    by_shape: dict[tuple, list[str]] = {}
    for name, value in matrices.items():
        by_shape.setdefault(tuple(value.const_value.shape), []).append(name)
    saved = 0
    for name, value in list(matrices.items()):
        rows, cols = value.const_value.shape
        if rows == cols or name not in graph.initializers:
            continue
        for other in by_shape.get((cols, rows), []):
            if other not in graph.initializers or other == name:
                continue
            source = graph.initializers[other]
            if source.const_value.dtype != value.const_value.dtype:
                continue
            if not np.array_equal(source.const_value.numpy().T, value.const_value.numpy()):
                continue
            transpose = ir.node("Transpose", [source], {"perm": [1, 0]}, name=f"{name}_from_{other}")
            graph.insert_before(graph[0], transpose)
            value.replace_all_uses_with(transpose.outputs[0])
            del graph.initializers[name]
            saved += value.const_value.nbytes
            break
    return saved
