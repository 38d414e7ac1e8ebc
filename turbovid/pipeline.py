"""Prompt -> video frames: the one API the CLI, the server and benchmarks call.

    pipe = Pipeline.from_options(PipelineOptions(model="Wan2.1-1.3B"))
    result = pipe.generate(GenerationRequest(prompt="A cat playing piano", seed=1))
    result.frames  # uint8 [T, H, W, 3]; result.timings: seconds per stage

Models are loaded once and reused for every request.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from turbovid import hub
from turbovid.clock import StageClock
from turbovid.configs import DIT_PRESETS
from turbovid.io import FrameSink, HostFrames, VideoWriter, host_buffer_ahead
from turbovid.loading.common import CheckpointError
from turbovid.options import (
    ASPECT_RATIOS, ATTENTIONS, DTYPES, QUANTS, RESOLUTIONS, SAMPLERS, VAE_TILING, WAN_NEGATIVE_PROMPT,
    GenerationRequest, PipelineOptions,
)
from turbovid.prewarm import Prewarm
from turbovid.sampling import RCM_MAX_STEPS, cfg_velocity, sample_flow_euler, sample_rcm

log = logging.getLogger("turbovid.pipeline")

__all__ = ["Pipeline", "GenerationRequest", "GenerationResult", "PipelineOptions", "UsageError", "OutOfMemory"]

TINY = "tiny-random"
TINY_NOTE = "tiny-random model: random weights, the video is noise (for smoke tests only)"
LATENT_CHANNELS = 16
VAE_STRIDE = (4, 8, 8)  # temporal, height, width
SIZE_MULTIPLE = 16  # VAE stride 8 x DiT patch 2
MAX_EULER_STEPS = 1000
INT8_AUTO_BELOW_GIB = 40  # TurboDiffusion: unquantized weights on GPUs with more than 40 GB

# Callback for progress: (stage, done, total); stages: "load", "encode", "sample", "decode".
Progress = Callable[[str, int, int], None]


class UsageError(ValueError):
    """Bad input from the user; the message names the fix."""


class OutOfMemory(UsageError, torch.cuda.OutOfMemoryError):
    """The GPU ran out of memory; the message suggests settings that need less (still a CUDA OOM to callers)."""


@dataclass
class GenerationResult:
    videos: list[np.ndarray]  # one uint8 [T, H, W, 3] per sample
    request: GenerationRequest  # with every default filled in
    timings: dict  # seconds: text_encoding, sampling, steps [...], vae_decode, total
    settings: dict = field(default_factory=dict)  # the pipeline's model settings

    @property
    def frames(self) -> np.ndarray:
        return self.videos[0]

    def metadata(self, index: int = 0, video_name: str | None = None, extra_timings: dict | None = None) -> dict:
        """The JSON sidecar of sample `index`: prompt, seed, every setting, timings and versions."""
        import datetime
        import platform

        from turbovid import __version__
        from turbovid.io import FPS

        req = self.request
        h, w = self.videos[index].shape[1:3]
        out = {
            "video": video_name,
            "prompt": req.prompt,
            "seed": req.seed,
            "sample": index,
            "settings": {**dataclasses.asdict(req), **self.settings, "width": w, "height": h, "fps": FPS},
            "timings": {**(extra_timings or {}), **self.timings},
            "version": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        if self.settings.get("model") == TINY:
            out["note"] = TINY_NOTE
        return out


def _resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda requested but no CUDA GPU is visible; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {name!r}; use cpu, cuda or cuda:N")
    return device


def _resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def _gpu_gib(device: torch.device) -> float:
    return torch.cuda.get_device_properties(device).total_memory / 2**30


def check_options(opts: PipelineOptions) -> None:
    """Validate pipeline options before anything is loaded."""
    checks = [
        ("--model", opts.model, tuple(DIT_PRESETS)),
        ("--sampler", opts.sampler, SAMPLERS),
        ("--attention", opts.attention, ATTENTIONS),
        ("--quant", opts.quant, QUANTS),
        ("--dtype", opts.dtype, DTYPES),
        ("--vae-tiling", opts.vae_tiling, VAE_TILING),
    ]
    for flag, value, choices in checks:
        if value not in choices:
            raise UsageError(f"unknown {flag} {value!r}; choose one of {', '.join(choices)}")
    if not 0 < opts.sla_topk <= 1:
        raise UsageError(f"--sla_topk must be in (0, 1], got {opts.sla_topk}")


def _fp8_unavailable(device: torch.device) -> str | None:
    from turbovid.ops.quant import fp8_available

    if device.type != "cuda" or not fp8_available(device):
        return f"needs an NVIDIA GPU with fp8 (Ada, Hopper or newer), not {device}"
    return None


def _quant_of(module: torch.nn.Module) -> str:
    """'int8', 'fp8' or 'none': the format of the module's quantized linear weights."""
    dtypes = {b.dtype for b in module.buffers()}
    if torch.int8 in dtypes:
        return "int8"
    return "fp8" if torch.float8_e4m3fn in dtypes else "none"


def request_defaults(model: str, sampler: str) -> dict:
    """Values of the request fields left None; the tiny model defaults to a CPU-sized video."""
    tiny = model == TINY
    return {
        "num_steps": RCM_MAX_STEPS if sampler == "rcm" else 50,
        "resolution": "128p" if tiny else "480p",
        "num_frames": 9 if tiny else 81,
        "negative_prompt": WAN_NEGATIVE_PROMPT if sampler == "euler" else None,
    }


def resolve_request(request: GenerationRequest, model: str = "Wan2.1-1.3B", sampler: str = "rcm") -> GenerationRequest:
    """Check a request and fill its unset fields for `model` and `sampler`; raises UsageError naming the fix."""
    # "" means the default negative prompt, as in Wan2.1
    fill = {k: v for k, v in request_defaults(model, sampler).items()
            if getattr(request, k) is None or (k == "negative_prompt" and request.negative_prompt == "")}
    req = dataclasses.replace(request, **fill)
    if not isinstance(req.prompt, str) or not req.prompt.strip():
        raise UsageError("the prompt is empty; pass --prompt \"what the video shows\"")
    max_steps = RCM_MAX_STEPS if sampler == "rcm" else MAX_EULER_STEPS
    if not 1 <= req.num_steps <= max_steps:
        hint = " (rCM is distilled for 1-4 steps; use --sampler euler for more)" if sampler == "rcm" else ""
        raise UsageError(f"--num_steps must be between 1 and {max_steps}, got {req.num_steps}{hint}")
    if req.resolution not in RESOLUTIONS:
        raise UsageError(f"unknown --resolution {req.resolution!r}; choose one of {', '.join(RESOLUTIONS)}")
    if req.aspect_ratio not in ASPECT_RATIOS:
        raise UsageError(f"unknown --aspect_ratio {req.aspect_ratio!r}; choose one of {', '.join(ASPECT_RATIOS)}")
    if req.num_frames < 1 or (req.num_frames - 1) % VAE_STRIDE[0]:
        lo = (max(1, req.num_frames) - 1) // 4 * 4 + 1
        raise UsageError(f"--num_frames must be 4n+1 (1, 5, 9, ..., 81), got {req.num_frames}; try {lo} or {lo + 4}")
    if not 0 <= req.seed < 2**63:
        raise UsageError(f"--seed must be between 0 and 2^63-1, got {req.seed}")
    if not 1 <= req.num_samples <= 64:
        raise UsageError(f"--num_samples must be between 1 and 64, got {req.num_samples}")
    if not req.sigma_max > 0:
        raise UsageError(f"--sigma_max must be positive, got {req.sigma_max}")
    if not req.shift > 0:
        raise UsageError(f"--shift must be positive, got {req.shift}")
    if not req.guidance_scale >= 0:
        raise UsageError(f"--guidance_scale must be >= 0, got {req.guidance_scale}")
    return req


class Pipeline:
    """Holds a loaded DiT, text encoder and VAE; `generate` turns requests into videos."""

    def __init__(
        self,
        dit: torch.nn.Module,
        text_encoder,
        vae,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        sampler: str = "rcm",
        offload: bool = False,
        text_encoder_cpu: bool = False,
        vae_tiling: str = "auto",
        model_name: str = "custom",
        settings: dict | None = None,
    ):
        if sampler not in SAMPLERS:
            raise UsageError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        self.dit, self.text_encoder, self.vae = dit, text_encoder, vae
        self.device, self.dtype = torch.device(device), dtype
        self.sampler, self.offload, self.vae_tiling = sampler, offload, vae_tiling
        self.text_encoder_cpu = text_encoder_cpu
        self.model_name = model_name
        self.load_seconds = 0.0
        self.load_timings: dict[str, float] = {}  # seconds per model read and placed, set by from_options
        # One request only (the CLI): let go of the text encoder once it has encoded the prompt, so its
        # weights (umT5-XXL: 10.6 GiB in bf16) are not held through sampling and the decode.
        self.release_text_encoder = False
        self.settings = {
            "model": model_name, "sampler": sampler, "device": str(self.device), "dtype": str(dtype).removeprefix("torch."),
            "offload": offload, "text_encoder_cpu": text_encoder_cpu, "vae_tiling": vae_tiling, **(settings or {}),
        }
        home = torch.device("cpu") if offload else self.device
        text_encoder.to(torch.device("cpu") if text_encoder_cpu else home)
        if hasattr(text_encoder, "graphs"):  # resident on the GPU: its launches replayed from a CUDA graph
            text_encoder.graphs = home.type == "cuda" and not text_encoder_cpu
        for m in (dit, vae):
            m.to(home)
            if isinstance(m, torch.nn.Module):
                m.eval()

    # ---------------------------------------------------------------- loading

    @classmethod
    def from_options(cls, opts: PipelineOptions, progress: Progress | None = None, resolution: str = "480p") -> "Pipeline":
        """Find (or download) the weights named by `opts` and load them.

        `resolution` picks between checkpoints trained for 480p and 720p where a model has both (14B).
        """
        start = time.perf_counter()
        check_options(opts)
        device = _resolve_device(opts.device)
        dtype = _resolve_dtype(opts.dtype, device)
        # the first video's one-time work that needs no weights, done beside the checkpoint reads
        prewarm = Prewarm(device, cls._prewarm_tasks(opts, device, dtype)).start()
        attention = cls._pick_attention(opts, device)
        fp8 = opts.quant == "fp8"
        if fp8 and (why := _fp8_unavailable(device)):
            raise UsageError(f"--quant fp8 {why}; use --quant int8")
        int8 = opts.quant == "int8" or (opts.quant == "auto" and device.type == "cuda" and _gpu_gib(device) < INT8_AUTO_BELOW_GIB)
        # load_dit: "int8" quantizes float weights on load, "none" dequantizes an int8 file, None keeps the file's.
        # fp8 starts from float weights (an int8 file is dequantized) and is quantized after loading.
        quant = "int8" if int8 else ("none" if opts.quant in ("none", "fp8") else None)
        home = "cpu" if opts.offload else device
        text_home = "cpu" if opts.text_encoder_cpu else home
        step = progress or (lambda *a: None)
        load_timings: dict[str, float] = {}
        try:
            if opts.model == TINY and not any((opts.dit_path, opts.text_encoder_path, opts.vae_path)):
                log.warning(TINY_NOTE)
                dit, text_encoder, vae = cls._build_tiny(attention, home, text_home, dtype, step)
                paths = {}
                if quant == "int8":
                    from turbovid.ops.quant import swap_linears

                    for block in dit.blocks:
                        swap_linears(block, skip=("proj_l",))
            else:
                paths = cls._checkpoint_paths(opts, int8, resolution)
                dit, text_encoder, vae = cls._load(opts, paths, attention, quant, home, text_home, dtype, step, load_timings)
            if fp8:
                from turbovid.ops.quant import swap_linears_fp8

                for block in dit.blocks:
                    swap_linears_fp8(block, skip=("proj_l",))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise OutOfMemory(
                "CUDA out of memory while loading the models; use --text-encoder-cpu, --offload, --quant int8 or a smaller --model"
            ) from None
        except (CheckpointError, UsageError):
            raise
        except ValueError as e:  # the loaders' own one-line messages (tokenizer folder, vocab mismatch, ...)
            raise UsageError(str(e)) from None
        dit.set_attention(attention, opts.sla_topk)
        fast = False
        if device.type == "cuda":
            from turbovid.fast import FastOptions, make_fast

            # A CUDA graph holds the weights' addresses: with --offload they move, so no graph then.
            dit = make_fast(dit, FastOptions(graph=not opts.offload))
            fast = type(dit).__name__ == "GraphedDiT"
        pipe = cls(
            dit, text_encoder, vae, device=device, dtype=dtype, sampler=opts.sampler, offload=opts.offload,
            text_encoder_cpu=opts.text_encoder_cpu,
            vae_tiling=opts.vae_tiling, model_name=opts.model,
            settings={
                "attention": attention, "sla_topk": opts.sla_topk, "quant": _quant_of(dit),
                "cuda_graph": fast,
                "checkpoints": {k: str(v) for k, v in paths.items()},
            },
        )
        waited = time.perf_counter()
        prewarm.join()
        pipe.load_seconds = time.perf_counter() - start
        pipe.load_timings = {**load_timings, "prewarm_wait": time.perf_counter() - waited}
        return pipe

    @staticmethod
    def _prewarm_tasks(opts: PipelineOptions, device: torch.device, dtype: torch.dtype) -> list[Callable[[], object]]:
        from turbovid.models.t5 import warm_up_kernels

        tasks: list[Callable[[], object]] = [] if opts.text_encoder_cpu else [lambda: warm_up_kernels(device, dtype)]
        if opts.quant == "fp8":
            from turbovid.ops.quant import fp8_cublas, fp8_tensor
            from turbovid.ops.quant.fp8 import per_tensor_default

            # probes cuBLAS's fp8 GEMM of the layout the layers will use, once
            probe = fp8_tensor.cublas_available if per_tensor_default() else fp8_cublas.available
            tasks.append(lambda: probe(device))
        return tasks

    @staticmethod
    def _pick_attention(opts: PipelineOptions, device: torch.device) -> str:
        from turbovid.ops.attention import resolve_backend

        if opts.attention == "auto" and opts.sampler == "euler":
            return "dense"  # base weights were not fine-tuned for sparse attention
        try:
            return resolve_backend(opts.attention, device)
        except (RuntimeError, ImportError) as e:
            raise UsageError(f"{e}; use --attention dense or auto") from None

    @staticmethod
    def _checkpoint_paths(opts: PipelineOptions, int8: bool, resolution: str) -> dict[str, Path]:
        """Explicit paths must exist; the rest come from the checkpoint folder, downloaded if missing."""
        ckpt = Path(opts.checkpoint_dir)
        explicit = {"dit": opts.dit_path, "text_encoder": opts.text_encoder_path, "vae": opts.vae_path,
                    "tokenizer": opts.tokenizer_path}
        for name, p in explicit.items():
            if p is not None and not Path(p).exists():
                raise CheckpointError(f"{p}: file not found (given as --{name}_path)")
        if opts.model not in hub.BASE_REPOS and not (opts.dit_path and opts.text_encoder_path and opts.vae_path):
            raise UsageError(f"--model {opts.model} has no downloadable weights; pass --dit_path, --text_encoder_path and --vae_path")
        wanted: dict[str, list[hub.WeightFile]] = {}
        if opts.dit_path is None:
            if opts.sampler == "rcm":
                wanted["dit"] = [hub.turbo_dit_file(opts.model, resolution, int8)]
            else:
                if opts.model == "Wan2.1-14B":  # sharded: the index names the shards
                    hub.ensure_files([hub.base_dit_index(opts.model)], ckpt, download=not opts.offline)
                wanted["dit"] = hub.base_dit_files(opts.model, ckpt)
        if opts.text_encoder_path is None:
            wanted["text_encoder"] = [hub.text_encoder_file()]
        if opts.tokenizer_path is None and opts.model != TINY:  # tiny-random: the byte tokenizer, no files
            wanted["tokenizer"] = hub.tokenizer_files()
        if opts.vae_path is None:
            wanted["vae"] = [hub.vae_file()]
        # One call so an offline error lists every missing file at once.
        flat = [f for files in wanted.values() for f in files]
        local = iter(hub.ensure_files(flat, ckpt, download=not opts.offline))
        paths = {k: Path(v) for k, v in explicit.items() if v is not None}
        for name, files in wanted.items():
            got = [next(local) for _ in files]
            paths[name] = got[0] if len(got) == 1 else got[0].parent  # several files: their folder
        return paths

    @staticmethod
    def _load(opts, paths, attention, quant, home, text_home, dtype, step: Progress, timings: dict[str, float]):
        from turbovid.loading import load_dit, load_text_encoder, load_vae, prefetch_checkpoints

        # The DiT first: a checkpoint that does not match --model fails before the 11 GB text encoder loads.
        # The disk reads ahead in that order meanwhile.
        prefetch_checkpoints(paths["dit"], paths["vae"], paths["text_encoder"])
        tokenizer = paths.get("tokenizer", "byte" if opts.model == TINY else None)
        loads = (
            ("dit", lambda: load_dit(paths["dit"], model=opts.model, attention=attention, device=home, dtype=dtype, quant=quant)),
            ("vae", lambda: load_vae(paths["vae"], device=home, dtype=dtype)),
            ("text_encoder", lambda: load_text_encoder(paths["text_encoder"], tokenizer=tokenizer, device=text_home, dtype=dtype)),
        )
        models = {}
        for i, (name, load) in enumerate(loads):
            step("load", i, len(loads))
            t0 = time.perf_counter()
            models[name] = load()
            timings[name] = time.perf_counter() - t0
        step("load", len(loads), len(loads))
        return models["dit"], models["text_encoder"], models["vae"]

    @staticmethod
    def _build_tiny(attention, home, text_home, dtype, step: Progress):
        from turbovid.configs import T5_PRESETS, VAE_PRESETS
        from turbovid.loading.dit import build_dit
        from turbovid.models.t5 import build_text_encoder
        from turbovid.models.tokenizer import ByteTokenizer
        from turbovid.models.vae import build_vae

        step("load", 0, 3)
        text_encoder = build_text_encoder(T5_PRESETS[TINY], ByteTokenizer(), device=text_home, dtype=dtype, seed=0)
        step("load", 1, 3)
        dit = build_dit(DIT_PRESETS[TINY], attention=attention, device=home, dtype=dtype, seed=0)
        step("load", 2, 3)
        vae = build_vae(VAE_PRESETS[TINY], device=home, dtype=dtype, seed=0)
        step("load", 3, 3)
        return dit, text_encoder, vae

    # ---------------------------------------------------------------- requests

    def resolve(self, request: GenerationRequest) -> GenerationRequest:
        """Check a request and fill its unset fields; raises UsageError naming the fix."""
        return resolve_request(request, self.model_name, self.sampler)

    def frame_size(self, request: GenerationRequest) -> tuple[int, int]:
        """(width, height) of a resolved request."""
        return RESOLUTIONS[request.resolution][request.aspect_ratio]

    # ---------------------------------------------------------------- generation

    @contextlib.contextmanager
    def _on_device(self, model, stays: bool = False):
        """With --offload, a model visits the GPU only for the duration of the block (unless it stays
        where it is: the text encoder with text_encoder_cpu)."""
        move = self.offload and not stays
        if move:
            model.to(self.device)
        try:
            yield model
        finally:
            if move:
                model.to("cpu")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    def _decode(self, latents: torch.Tensor, frames: HostFrames) -> None:
        """Decode into `frames`, chunk by chunk when the VAE can hand frames over as it finishes them."""
        params = inspect.signature(self.vae.decode).parameters
        kw = {"tiling": self.vae_tiling} if "tiling" in params else {}
        if "on_frames" in params:
            if "return_video" in params:  # the frames only pass through: no float32 video on the GPU
                kw["return_video"] = False
            self.vae.decode(latents, on_frames=frames.put, **kw)
            return
        video = self.vae.decode(latents, **kw)
        for i in range(video.shape[0]):
            frames.put(i, 0, video[i])

    def for_one_request(self) -> None:
        """Set up for a single generate() and no more (the CLI). The text encoder is let go once it has
        encoded the prompt (umT5-XXL holds 10.6 GiB), and rCM's few forwards run without a CUDA graph:
        capturing one cost 0.1-0.25 s of the video, while a captured 1.3B 480p forward ran only ~3 ms
        faster than the same kernels launched eagerly (H100). Euler's 100 forwards keep the graph."""
        self.release_text_encoder = True
        if hasattr(self.text_encoder, "graphs"):  # one prompt: capturing would cost more than it saves
            self.text_encoder.graphs = False
        if self.sampler == "rcm" and getattr(self.dit, "graph", False):
            self.dit.graph = False
            self.settings["cuda_graph"] = False

    def warmup(self, request: GenerationRequest | None = None) -> float:
        """One throwaway generation (a 4-step 81-frame video by default), so the first real one does not
        pay for compiling or loading the kernels, tuning them, capturing the CUDA graph of its shape
        and the libraries' first calls. Returns its seconds."""
        start = time.perf_counter()
        self.generate(request or GenerationRequest(prompt="warm-up"))
        return time.perf_counter() - start

    def generate_into(self, request: GenerationRequest, paths: list[Path], progress: Progress | None = None,
                      ) -> tuple[GenerationResult, list[VideoWriter]]:
        """generate(), each sample's video encoded into its file (one path a sample) while the VAE
        decodes it. The caller close()s the writers, which puts the files in place, or abort()s
        them; on an error here nothing is left behind."""
        req = self.resolve(request)
        if len(paths) != req.num_samples:
            raise ValueError(f"{len(paths)} output paths for {req.num_samples} samples")
        width, height = self.frame_size(req)
        writers: list[VideoWriter] = []
        try:
            writers += [VideoWriter(p, width, height) for p in paths]
            result = self.generate(req, progress, on_frames=lambda i, frames, wait: writers[i].write(frames, wait))
        except BaseException:
            for w in writers:
                w.abort()
            raise
        return result, writers

    def generate(self, request: GenerationRequest | None = None, progress: Progress | None = None,
                 on_frames: FrameSink | None = None) -> GenerationResult:
        """One batch of videos. on_frames(sample, frames, wait) receives each sample's uint8 frames
        [t, H, W, 3] in order while the VAE decodes the rest (readable once wait() returns), so a
        VideoWriter can encode during the decode; the result holds every frame either way."""
        with self._kernel_recording():  # the Triton kernels it loads, for the next process to load ahead
            return self._generate(request, progress, on_frames)

    def _kernel_recording(self):
        from turbovid.ops import preload  # imports Triton only inside: records nothing without it

        return preload.recording() if self.device.type == "cuda" else contextlib.nullcontext()

    @torch.inference_mode()
    def _generate(self, request: GenerationRequest | None, progress: Progress | None,
                  on_frames: FrameSink | None) -> GenerationResult:
        req = self.resolve(request or GenerationRequest())
        step = progress or (lambda *a: None)
        width, height = self.frame_size(req)
        b = req.num_samples
        shape = (b, LATENT_CHANNELS, (req.num_frames - 1) // VAE_STRIDE[0] + 1, height // VAE_STRIDE[1], width // VAE_STRIDE[2])
        stage = "text encoding"
        timings: dict = {}
        clock = StageClock(self.device)  # no host-device sync until the frames are copied out
        host: list = []  # the video's page-locked host memory, asked for once the GPU has work queued
        try:
            # 1. text -> context [B, L, D]
            step("encode", 0, 1)
            if self.text_encoder is None:
                raise UsageError("this pipeline let go of its text encoder after its first video "
                                 "(release_text_encoder); load a new one for more videos")
            with self._on_device(self.text_encoder, stays=self.text_encoder_cpu):
                prompts = [req.prompt] + ([req.negative_prompt] if self.sampler == "euler" else [])
                # the prompts' rows only: the DiT pads them to 512, and a short context takes its
                # faster cross-attention (models/dit.py)
                ctx = self.text_encoder.encode(prompts, pad=False).to(self.device, self.dtype)
            if self.release_text_encoder:
                self.text_encoder = None  # its GPU (or, offloaded, host) memory is free from here on
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            context = ctx[:1].expand(b, *ctx.shape[1:])
            clock.mark("text")
            step("encode", 1, 1)

            # 2. noise -> latents
            stage = "sampling"
            generator = torch.Generator(device=self.device).manual_seed(req.seed)
            step("sample", 0, req.num_steps)
            calls = [0]

            def cond(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # first call of each step
                i = calls[0]
                calls[0] += 1
                clock.mark(f"step{i}")  # the device is done with step i - 1 here
                v = self.dit(x, t, context)
                if not host and self.device.type == "cuda":
                    # Pinning ~100 MB takes 80-160 ms and holds the CUDA driver: its other calls
                    # (kernel launches) wait. Asked for now, it overlaps the forward just queued.
                    host.append(host_buffer_ahead((b, req.num_frames, height, width, 3), self.device))
                if i:  # progress one step behind, with this step's forward already queued behind it
                    clock.wait(f"step{i}")
                    step("sample", i, req.num_steps)
                return v

            with self._on_device(self.dit):
                if self.sampler == "rcm":
                    latents = sample_rcm(
                        cond, shape, num_steps=req.num_steps, sigma_max=req.sigma_max, generator=generator,
                        device=self.device, dtype=self.dtype,
                    )
                else:
                    negative = ctx[1:].expand(b, *ctx.shape[1:])
                    uncond = lambda x, t: self.dit(x, t, negative)  # noqa: E731
                    latents = sample_flow_euler(
                        cfg_velocity(cond, uncond, req.guidance_scale), shape, num_steps=req.num_steps,
                        shift=req.shift, generator=generator, device=self.device, dtype=self.dtype,
                    )
            clock.mark("sampled")
            step("sample", req.num_steps, req.num_steps)  # queued: the decode's work follows it

            # 3. latents -> pixels
            stage = "VAE decoding"
            total_frames, done = b * req.num_frames, [0]

            def on_chunk(i: int, chunk: np.ndarray, wait) -> None:  # progress in frames, then the caller's sink
                done[0] += len(chunk)
                step("decode", done[0], total_frames)
                if on_frames is not None:
                    on_frames(i, chunk, wait)

            step("decode", 0, total_frames)
            with self._on_device(self.vae):
                frames = HostFrames(b, req.num_frames, height, width, self.device, on_chunk, host[0] if host else None)
                self._decode(latents.to(self.dtype), frames)
            videos = frames.videos()  # waits for the device: every mark is passed
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise OutOfMemory(
                f"CUDA out of memory during {stage} ({width}x{height}, {req.num_frames} frames); "
                "use --text-encoder-cpu, --offload, --resolution 480p, --quant int8, --vae-tiling on or fewer --num_frames"
            ) from None
        total = time.perf_counter() - clock.start
        marks = [f"step{i}" for i in range(calls[0])] + ["sampled"]
        timings.update(text_encoding=clock.seconds("start", "text"), sampling=clock.seconds("text", "sampled"),
                       steps=[clock.seconds(a, z) for a, z in zip(marks, marks[1:])],
                       vae_decode=total - clock.seconds("start", "sampled"), total=total)
        return GenerationResult(videos=videos, request=req, timings=timings, settings=dict(self.settings))
