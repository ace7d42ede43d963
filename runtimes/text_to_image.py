"""Text-to-image runtime: a Stable-Diffusion-family package sampled in numpy, torch-free.

CLIP tokenization (tokenizers), the text encoder, classifier-free guidance (the negative and the
positive prompt as one batch of 2 per image), diffusers' schedulers (``diffusion_schedulers``), the
VAE decoder, and image-to-image through the VAE encoder. With a seed, the initial noise (and any
noise a scheduler adds per step) is what diffusers draws with ``torch.Generator("cpu").manual_seed(seed)``
(``torch_noise``), so the same prompt and seed give a diffusers user's image.

Example::

    import edge_sdk
    pipe = edge_sdk.load("out/sd-tiny-int8", threads=2)
    images = pipe.generate(prompt="a watercolor fox", steps=25, seed=0).images        # uint8 (1, H, W, 3)
    result = pipe.generate(SamplingOptions(prompt="a fox", negative_prompt="blurry", guidance_scale=6.0))
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
from edge_sdk.runtimes.backend import open_session
from edge_sdk.runtimes.diffusion_schedulers import (
    guidance_embedding,
    make_sampler,
    name_of,
)
from edge_sdk.runtimes.image_generation import (
    ImageResult,
    SamplingOptions,
    SamplingStats,
)
from edge_sdk.runtimes.options import with_overrides
from edge_sdk.runtimes.torch_noise import TorchGenerator

from edge_sdk.errors import InvalidInputError, optional_import
from edge_sdk.package import Package

DEFAULT_GUIDANCE = 7.5  # StableDiffusionPipeline's
LCM_GUIDANCE = 8.5  # LatentConsistencyModelPipeline's
DEFAULT_STEPS = 50
LCM_STEPS = 4


class GenerationCancelled(InvalidInputError):
    """The progress callback asked to stop (returned False)."""


class TextToImageGenerator:
    """A loaded text-to-image package. ``generate(options)`` or ``generate(prompt=..., ...)`` returns an
    ``ImageResult`` (uint8 (N, H, W, 3) images and timings); ``last_stats`` holds the last call's timings."""

    def __init__(self, package: Package, threads: int | None = None):
        manifest = package.manifest
        self.package = package
        self._threads = threads
        self._min_version = manifest["runtime"].get("min_version")
        self._model = manifest["model"]
        self._unet = self._model["unet"]
        self._vae = self._model["vae"]
        self._scheduler = manifest["scheduler"]
        tokenizer = manifest["tokenizer"]
        Tokenizer = optional_import("tokenizers", "runtime", "tokenizing prompts").Tokenizer
        self._tokenizer = Tokenizer.from_file(str(package.path(tokenizer["path"])))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._max_length = int(tokenizer["max_length"])
        self._eos, self._pad = tokenizer["eos_token_id"], tokenizer["pad_token_id"]
        self._sessions: dict = {}
        # each graph's batch: an int where it is fixed (static-shape NPU packages), else the axis name
        self._batch = {graph["role"]: graph["inputs"][0]["shape"][0] for graph in manifest["graphs"]}
        self.last_stats: SamplingStats | None = None

    # ------------------------------------------------------------------ what the package is
    @property
    def is_lcm(self) -> bool:
        """A latent consistency model: guidance goes in as an embedding (no negative prompt), few steps."""
        return bool(self._unet.get("time_cond_proj_dim"))

    @property
    def default_scheduler(self) -> str:
        return name_of(self._scheduler)

    @property
    def default_steps(self) -> int:
        return LCM_STEPS if self.is_lcm else DEFAULT_STEPS

    @property
    def default_guidance_scale(self) -> float:
        return LCM_GUIDANCE if self.is_lcm else DEFAULT_GUIDANCE

    @property
    def scale_factor(self) -> int:
        """Pixels per latent."""
        return int(self._vae["scale_factor"])

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this: the VAE's and the UNet's downsampling together."""
        return self.scale_factor * int(self._unet.get("downsampling", 1))

    @property
    def default_size(self) -> tuple[int, int]:
        """(height, width) in pixels: the UNet's sample size times the VAE's factor."""
        h, w = self._unet["sample_size"]
        return int(h) * self.scale_factor, int(w) * self.scale_factor

    @property
    def static_shapes(self) -> bool:
        """An NPU package: every graph has fixed shapes (one image at the package's own size)."""
        return isinstance(self._batch["unet"], int)

    def _run(self, role: str, feeds: dict) -> dict:
        """``role``'s graph on ``feeds``; a graph with a fixed batch runs the rows in chunks of it (the last
        chunk padded by repeating its rows)."""
        batch = self._batch[role]
        rows = len(next(iter(feeds.values())))
        if not isinstance(batch, int) or batch == rows:
            return self._session(role).run(feeds)
        outputs: dict[str, list] = {}
        for start in range(0, rows, batch):
            chunk = {k: v[start:start + batch] for k, v in feeds.items()}
            short = batch - len(next(iter(chunk.values())))
            if short:
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], short, axis=0)]) for k, v in chunk.items()}
            for name, value in self._session(role).run(chunk).items():
                outputs.setdefault(name, []).append(value[:batch - short])
        return {name: np.concatenate(values) for name, values in outputs.items()}

    def _session(self, role: str):
        if role not in self._sessions:
            self._sessions[role] = open_session(self.package.runtime, self.package.graph_path(role), self._threads,
                                                self._min_version)
        return self._sessions[role]

    def options(self, options: SamplingOptions | None = None, **overrides) -> SamplingOptions:
        """``options`` (default: ``SamplingOptions()``) with ``overrides`` applied and validated."""
        return with_overrides(options or SamplingOptions(), overrides, "sampling")

    # ------------------------------------------------------------------ the parts
    def tokenize(self, texts: list[str]) -> np.ndarray:
        """Token ids (batch, 77): CLIP's start and end tokens, padded with the pad token as diffusers pads;
        a longer prompt is cut to 77 tokens with a warning (diffusers does the same)."""
        rows = []
        for text in texts:
            ids = self._tokenizer.encode(text).ids
            if len(ids) > self._max_length:
                kept = self._tokenizer.decode(ids[1:self._max_length - 1])
                warnings.warn(f"the prompt is longer than CLIP's {self._max_length} tokens and was cut to: {kept!r}",
                              stacklevel=3)
                ids = ids[:self._max_length - 1] + [self._eos]
            rows.append(ids + [self._pad] * (self._max_length - len(ids)))
        return np.asarray(rows, np.int64)

    def encode_prompt(self, texts: list[str]) -> np.ndarray:
        """The text encoder's last hidden state (batch, 77, hidden) for ``texts``."""
        return self._run("text_encoder", {"input_ids": self.tokenize(texts)})["last_hidden_state"]

    def unet(self, sample: np.ndarray, timestep: float, context: np.ndarray, timestep_cond: np.ndarray | None = None):
        """One UNet evaluation of ``sample`` (batch, 4, h, w) at ``timestep`` with ``context`` (batch, 77, hidden)."""
        feeds = {"sample": np.ascontiguousarray(sample, np.float32), "timestep": np.full(len(sample), timestep, np.float32),
                 "encoder_hidden_states": np.ascontiguousarray(context, np.float32)}
        if timestep_cond is not None:
            feeds["timestep_cond"] = timestep_cond
        return self._run("unet", feeds)["noise"]

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Latents -> images (N, H, W, 3) in [0, 1]."""
        latent = latents / np.float32(self._vae["scaling_factor"]) + np.float32(self._vae.get("shift_factor", 0.0))
        image = self._run("vae_decoder", {"latent": latent.astype(np.float32)})["image"]
        return np.clip(image / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)

    def encode_image(self, image: np.ndarray, generator: TorchGenerator | None) -> np.ndarray:
        """An image (1, 3, H, W) in [-1, 1] -> scaled latents, sampled from the VAE's distribution (AutoencoderKL)."""
        out = self._run("vae_encoder", {"image": image})
        if "latent" in out:
            latent = out["latent"]
        else:
            mean, std = out["mean"], out["std"]
            latent = mean + std * (generator.randn(mean.shape) if generator else np.random.default_rng().standard_normal(
                mean.shape).astype(np.float32))
        return ((latent - np.float32(self._vae.get("shift_factor", 0.0))) * np.float32(self._vae["scaling_factor"])).astype(
            np.float32)

    # ------------------------------------------------------------------ generation
    def generate(self, options: SamplingOptions | str | None = None, *, progress=None, latents: np.ndarray | None = None,
                 **overrides) -> ImageResult:
        """Generate images as ``options`` (or the keyword fields of ``SamplingOptions``) say.

        ``progress(done, total)`` is called after each step; returning False cancels
        (``GenerationCancelled``). ``latents``: the initial latents instead of drawing them.

        Example::

            result = pipe.generate(prompt="a lighthouse at dusk", negative_prompt="fog", steps=20, seed=3)
            print(result.images.shape, f"{result.stats.seconds_per_step:.2f} s/step")
        """
        if isinstance(options, str):  # generate("a prompt", steps=...)
            options, overrides = None, {"prompt": options, **overrides}
        opts = self.options(options, **overrides)
        start = time.perf_counter()
        height, width = opts.height or self.default_size[0], opts.width or self.default_size[1]
        if opts.width is None and opts.height is None and opts.init_image is not None and not self.static_shapes:
            height, width = None, None  # the init image's size (rounded down to the multiple)
        scheduler = opts.scheduler or self.default_scheduler
        if scheduler in ("ddpm",):
            raise InvalidInputError("ddpm is for unconditional packages; text-to-image schedulers: "
                                    "pndm, ddim, euler, euler-ancestral, dpm++2m, dpm++2m-karras, lcm")
        steps = self.default_steps if opts.steps is None else opts.steps
        sampler = make_sampler(scheduler, self._scheduler, steps, eta=opts.eta)
        guidance = self.default_guidance_scale if opts.guidance_scale is None else float(opts.guidance_scale)
        guided = guidance > 1.0 and not self.is_lcm
        if opts.negative_prompt and not guided:
            warnings.warn(f"the negative prompt is ignored: guidance_scale {guidance:g} turns classifier-free guidance off "
                          f"(it needs > 1{'; an LCM takes no negative prompt' if self.is_lcm else ''})", stacklevel=2)
        if opts.init_image is not None and (self.is_lcm or scheduler == "lcm"):
            raise InvalidInputError("image-to-image with a latent consistency model (its strength-dependent timesteps) is "
                                    "not supported yet; use a Stable Diffusion package or leave out the init image")
        init = self._init_image(opts.init_image, height, width) if opts.init_image is not None else None
        if init is not None:
            height, width = init.shape[2], init.shape[3]
        if self.static_shapes and (height, width) != self.default_size:
            raise InvalidInputError(f"this package has static shapes (for an NPU): it draws {self.default_size[1]}x"
                                    f"{self.default_size[0]} images only, not {width}x{height}")
        for name, value in (("height", height), ("width", width)):
            if value % self.size_multiple:
                raise InvalidInputError(f"{name} {value} is not a multiple of {self.size_multiple}: this package's UNet "
                                        f"downsamples its latents by {self._unet.get('downsampling')} (times the VAE's "
                                        f"{self.scale_factor}); use e.g. {value // self.size_multiple * self.size_multiple or self.size_multiple}")
        n = opts.num_images
        generator = TorchGenerator(opts.seed) if opts.seed is not None else None
        rng = np.random.default_rng()

        def draw(shape):
            return generator.randn(shape) if generator is not None else rng.standard_normal(shape).astype(np.float32)

        stats = SamplingStats(images=n)
        prompt = opts.prompt or ""
        context = np.repeat(self.encode_prompt([prompt]), n, axis=0)
        if guided:
            negative = np.repeat(self.encode_prompt([opts.negative_prompt or ""]), n, axis=0)
            context = np.concatenate([negative, context])
        cond = guidance_embedding(np.full(n, guidance - 1), self._unet["time_cond_proj_dim"]) if self.is_lcm else None
        shape = (n, int(self._unet["in_channels"]), height // self.scale_factor, width // self.scale_factor)
        timesteps = sampler.timesteps
        begin = 0
        if init is not None:
            kept = min(int(steps * opts.strength), steps)
            begin = max(steps - kept, 0) * sampler.order
            if begin >= len(timesteps):
                raise InvalidInputError(f"strength {opts.strength} with {steps} steps leaves no step to run; raise either")
            sampler.start_at(begin)
            encoded = self.encode_image(init, generator)
            x0 = np.repeat(encoded, n, axis=0)
            x = sampler.add_noise(x0, draw(shape)) if latents is None else np.asarray(latents, np.float32)
        elif latents is not None:
            x = np.asarray(latents, np.float32)
            if x.shape != shape:
                raise InvalidInputError(f"latents must have shape {shape}, got {x.shape}")
        else:
            x = (draw(shape) * np.float32(sampler.init_noise_sigma)).astype(np.float32)
        total = len(timesteps) - begin
        for done, i in enumerate(range(begin, len(timesteps)), start=1):
            t = timesteps[i]
            model_input = sampler.scale(x, i)
            t0 = time.perf_counter()
            if guided:
                both = self.unet(np.concatenate([model_input, model_input]), float(t), context)
                uncond, text = both[:n], both[n:]
                prediction = uncond + np.float32(guidance) * (text - uncond)
            else:
                prediction = self.unet(model_input, float(t), context, cond)
            stats.unet_seconds += time.perf_counter() - t0
            stats.steps += 1
            x = sampler.step(prediction, i, x, draw)
            if progress is not None and progress(done, total) is False:
                raise GenerationCancelled(f"generation cancelled after {done} of {total} steps")
        images = self.decode(x)
        if opts.output == "uint8":
            images = (images * 255).round().astype(np.uint8)
        stats.total_seconds = time.perf_counter() - start
        self.last_stats = stats
        return ImageResult(images, stats)

    def _init_image(self, image, height: int | None, width: int | None) -> np.ndarray:
        """The init image as (1, 3, H, W) in [-1, 1]: resized to ``height`` x ``width`` when given, else to its
        own size rounded down to the size multiple (diffusers' VaeImageProcessor does the same)."""
        Image = optional_import("PIL.Image", "image", "reading the init image")
        if isinstance(image, (str, Path)):
            try:
                with Image.open(image) as opened:
                    picture = opened.convert("RGB")
            except FileNotFoundError:
                raise InvalidInputError(f"init image {image} does not exist") from None
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                raise InvalidInputError(f"init image {image} is not an image edge-sdk can read ({e})") from None
        elif isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3, 4):
                raise InvalidInputError(f"an init image array must be uint8 (H, W, 1|3|4), got {image.dtype} {image.shape}")
            picture = Image.fromarray(image if image.shape[2] != 1 else image[..., 0]).convert("RGB")
        elif hasattr(image, "convert"):
            picture = image.convert("RGB")
        else:
            raise InvalidInputError(f"init_image must be an image file's path, a uint8 array or a PIL image, got "
                                    f"{type(image).__name__}")
        m = self.size_multiple
        h = height or max(picture.height // m * m, m)
        w = width or max(picture.width // m * m, m)
        if (picture.height, picture.width) != (h, w):
            picture = picture.resize((w, h), Image.LANCZOS)
        array = np.asarray(picture, np.float32) / 255.0
        return (array * 2 - 1).transpose(2, 0, 1)[None].astype(np.float32)
