"""The task registry: everything edge-sdk knows about a task, registered once per task.

A task (``text-generation``, ``automatic-speech-recognition``, ``unconditional-image-generation``)
is one ``Task`` description in one module of this package. ``load()``, the exporter, ``bench``
(workload, projection, fit), its reports, ``inspect`` and the CLI read it; none of them compares
task-name strings. Adding a task means writing one module that calls ``register(Task(...))`` —
a module outside this package works too (``bench`` imports it again in its worker process).

Nothing here imports torch or a runtime: runtime classes, exporters and accuracy measures are
named as ``"module:attribute"`` and imported on use, so the registry is safe on a device.

Example::

    from edge_sdk.tasks import get_task
    task = get_task("speech-recognition")        # an old name resolves to the new one
    print(task.name, task.headline.key)           # automatic-speech-recognition real_time_factor
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from edge_sdk.errors import PackageError

# the built-in tasks, one module each
_BUILTIN = ("edge_sdk.tasks.text_generation", "edge_sdk.tasks.speech_recognition", "edge_sdk.tasks.image_generation",
            "edge_sdk.tasks.text_to_image")


@dataclass(frozen=True)
class Metric:
    """A figure a task is measured by."""

    key: str  # name in bench results, e.g. "decode_tokens_per_s"
    label: str  # short label for tables and plots, e.g. "decode tok/s"
    unit: str  # e.g. "tok/s", "x real time", "s"
    higher_is_better: bool

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


@dataclass(frozen=True)
class Budget:
    """A device-profile budget (a key of the profile's ``[budgets]`` table) and the metric it judges."""

    key: str  # profile TOML key, e.g. "text_decode_tokens_per_s"
    metric: Metric  # the bench figure compared with it (a target; the metric says which side passes)


@dataclass(frozen=True)
class Projection:
    """How a task's figures move to another device: each metric scales with the compute ratio
    (cores x clock x SIMD, for compute-bound work) or with the memory-bandwidth ratio (work bound by
    reading the weights), multiplying times and dividing rates; latency scales with the mix."""

    compute_bound: tuple[str, ...]  # metric keys that scale with compute
    memory_bound: tuple[str, ...] = ()  # metric keys that scale with memory bandwidth
    # the share of a run's time that is memory-bound, from its metrics (None: all compute-bound)
    memory_share: Callable[[dict], float] | None = None


@dataclass(frozen=True)
class Task:
    """Everything task-specific, in one place. See the built-in modules for examples."""

    name: str  # the Hugging Face / optimum task name, written in new manifests
    summary: str  # one line for help texts and reports
    runtime: str  # "module:Class" of the runtime that ``load()`` returns; Class(package, threads=)
    headline: Metric  # the figure the task is judged by (plots, tradeoffs)
    metrics: tuple[Metric, ...]  # every figure its bench workload reports (headline included)
    # bench: (model, BenchOptions) -> (run, workload description); run() does one unit of work and
    # returns that run's metrics {metric key: value}
    workload: Callable[[Any, Any], tuple[Callable[[], dict], dict]]
    figures: Callable[[dict], str]  # one line of a result's metrics for reports
    projection: Projection
    budgets: tuple[Budget, ...] = ()  # the profile budgets this task is judged against
    aliases: tuple[str, ...] = ()  # older names that manifests may carry
    exporter: str | None = None  # "module:function" of its converter (the convert extra)
    # "module:function"(candidate Package, reference Package, data or None) -> accuracy dict
    accuracy: str | None = None
    command: str = ""  # the CLI command that runs its packages, e.g. "generate"
    try_it: str = ""  # a first command for a new package; "{path}" is replaced
    calibration: str = "files"  # what --calibration takes: "text", "audio files", or "sampling" (its own trajectories)
    module: str = field(default="", compare=False)  # the module that registered it (set by register)

    def runtime_class(self) -> type:
        return load_attribute(self.runtime)

    def metric(self, key: str) -> Metric:
        for metric in self.metrics:
            if metric.key == key:
                return metric
        raise KeyError(f"task {self.name} has no metric {key!r}")


_TASKS: dict[str, Task] = {}
_ALIASES: dict[str, str] = {}
_loaded = False
# parts every task must have (a registration lacking one fails here, not in a user's command)
_REQUIRED = ("name", "summary", "runtime", "headline", "metrics", "workload", "figures", "projection", "command", "try_it")


def register(task: Task, module: str | None = None) -> Task:
    """Add ``task`` to the registry; raises if a part is missing or a name is taken."""
    _ensure_loaded()  # a name clash with a built-in task is found whatever the import order
    missing = [name for name in _REQUIRED if not getattr(task, name)]
    if missing:
        raise TypeError(f"task {task.name!r} lacks {', '.join(missing)}")
    if not isinstance(task.headline, Metric) or task.headline not in task.metrics:
        raise TypeError(f"task {task.name!r}: the headline metric must be one of its metrics")
    keys = {m.key for m in task.metrics}
    unknown = [k for k in (*task.projection.compute_bound, *task.projection.memory_bound) if k not in keys]
    unknown += [b.metric.key for b in task.budgets if b.metric.key not in keys]
    if unknown:
        raise TypeError(f"task {task.name!r} projects or budgets unknown metrics: {', '.join(unknown)}")
    for name in (task.name, *task.aliases):
        owner = _ALIASES.get(name)
        if owner is not None and owner != task.name:
            raise TypeError(f"task name {name!r} is already taken by {owner}")
    if module is None:  # the caller's module: a worker process imports it to know the task
        module = sys._getframe(1).f_globals.get("__name__", "")
    task = replace(task, module=module)
    _TASKS[task.name] = task
    for name in (task.name, *task.aliases):
        _ALIASES[name] = task.name
    return task


def unregister(name: str) -> None:
    """Remove a task (tests that register a toy task clean up with this)."""
    task = _TASKS.pop(name, None)
    if task is not None:
        for alias in (task.name, *task.aliases):
            _ALIASES.pop(alias, None)


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN:
            importlib.import_module(module)


def tasks() -> list[Task]:
    """Every registered task, by name."""
    _ensure_loaded()
    return [_TASKS[name] for name in sorted(_TASKS)]


def available_tasks() -> list[str]:
    return [task.name for task in tasks()]


def canonical_name(name: str) -> str:
    """The registered name for ``name`` (an old alias resolves); unknown names come back as they are."""
    _ensure_loaded()
    return _ALIASES.get(name, name)


def get_task(name: str) -> Task:
    """The task registered under ``name`` or one of its aliases; an error lists the available ones."""
    _ensure_loaded()
    if name not in _ALIASES:
        raise PackageError(f"task '{name}' is not supported by this edge-sdk (supported: {', '.join(available_tasks())}); "
                           "upgrade edge-sdk")
    return _TASKS[_ALIASES[name]]


def budget_keys() -> dict[str, Budget]:
    """Every profile budget key of every task."""
    return {budget.key: budget for task in tasks() for budget in task.budgets}


def external_modules() -> list[str]:
    """Modules outside this package that registered tasks (a worker process imports them too)."""
    _ensure_loaded()
    return sorted({t.module for t in _TASKS.values() if t.module and not t.module.startswith("edge_sdk.tasks")})


def load_attribute(target: str):
    """The object named by ``"module:attribute"`` (runtime classes, exporters, accuracy measures)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


__all__ = ["Task", "Metric", "Budget", "Projection", "register", "unregister", "tasks", "available_tasks", "get_task",
           "canonical_name", "budget_keys", "external_modules", "load_attribute"]
