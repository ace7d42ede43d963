"""Fixtures: tiny models built from configs (seeded random weights, tokenizer trained on the spot)
and their exported packages. Session-scoped: each architecture is built and exported once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from edge_sdk.converters.registry import supported_architectures

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
ARCHITECTURES = supported_architectures("text-generation")


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model_dir(build_dir):
    """architecture -> directory of a saved tiny model of it (built on first use)."""
    from edge_sdk.converters.tiny import build_causal_lm

    built: dict[str, Path] = {}

    def get(architecture: str) -> Path:
        if architecture not in built:
            built[architecture] = build_causal_lm(architecture, build_dir / f"hf-{architecture}", seed=0)
        return built[architecture]

    return get


@pytest.fixture(scope="session")
def tiny_package_dir(build_dir, tiny_model_dir):
    """architecture -> directory of the exported FP32 package (exported on first use)."""
    from edge_sdk.converters.export import export

    exported: dict[str, Path] = {}

    def get(architecture: str) -> Path:
        if architecture not in exported:
            exported[architecture] = export(tiny_model_dir(architecture), build_dir / f"pkg-{architecture}", progress=False)
        return exported[architecture]

    return get


@pytest.fixture
def llama_package_copy(tiny_package_dir, tmp_path) -> Path:
    """A private copy of the tiny Llama package that a test may damage."""
    return Path(shutil.copytree(tiny_package_dir("LlamaForCausalLM"), tmp_path / "pkg"))
