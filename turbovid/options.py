"""The options of a generation and of a loaded pipeline, as dataclasses shared by the CLI and the server.

Each field's metadata carries its help text (and choices); the CLI builds its flags from them and
the server builds requests from JSON with `from_dict`, so the two can never disagree.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from turbovid.configs import DIT_PRESETS

# Frame sizes (width, height) per resolution and aspect ratio (width:height), as TurboDiffusion uses them.
# "256p" and "128p" are ours: quick looks, and CPU smoke tests with the tiny-random model.
RESOLUTIONS: dict[str, dict[str, tuple[int, int]]] = {
    "480p": {"16:9": (832, 480), "9:16": (480, 832), "1:1": (640, 640), "4:3": (640, 480), "3:4": (480, 640)},
    "720p": {"16:9": (1280, 720), "9:16": (720, 1280), "1:1": (960, 960), "4:3": (960, 720), "3:4": (720, 960)},
    "256p": {"16:9": (448, 256), "9:16": (256, 448), "1:1": (256, 256), "4:3": (336, 256), "3:4": (256, 336)},
    "128p": {"16:9": (224, 128), "9:16": (128, 224), "1:1": (128, 128), "4:3": (176, 128), "3:4": (128, 176)},
}
ASPECT_RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4")
SAMPLERS = ("rcm", "euler")
ATTENTIONS = ("dense", "sla", "sagesla", "auto")
QUANTS = ("none", "int8", "fp8", "auto")
VAE_TILING = ("auto", "on", "off")
DTYPES = ("auto", "bfloat16", "float16", "float32")

# Wan2.1's default negative prompt (its shared config), used by the CFG baseline sampler.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


def _opt(default, help: str, choices: tuple | None = None, **extra) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices, **extra})


@dataclass
class GenerationRequest:
    """What to generate. Fields left None take the pipeline's defaults (they depend on model and sampler)."""

    prompt: str = _opt("A cat playing piano", "text prompt (must not be empty)")
    num_steps: int | None = _opt(None, "sampling steps: 1-4 for rcm (default 4), any count for euler (default 50)")
    resolution: str | None = _opt(None, "frame size class (default 480p; 128p for tiny-random)", tuple(RESOLUTIONS))
    aspect_ratio: str = _opt("16:9", "width:height", ASPECT_RATIOS)
    num_frames: int | None = _opt(None, "frames, 4n+1 (default 81; 9 for tiny-random)")
    seed: int = _opt(42, "random seed; the same seed and settings give the same video")
    num_samples: int = _opt(1, "videos per prompt (several files: NAME_0.mp4, NAME_1.mp4, ...)")
    sigma_max: float = _opt(80.0, "rcm: initial noise level (larger: less diverse, sometimes cleaner)")
    guidance_scale: float = _opt(5.0, "euler: classifier-free guidance scale")
    shift: float = _opt(5.0, "euler: noise schedule shift")
    negative_prompt: str | None = _opt(None, "euler: negative prompt (default and \"\": Wan2.1's)")

    @classmethod
    def from_dict(cls, data: dict) -> "GenerationRequest":
        return from_dict(cls, data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class PipelineOptions:
    """Which weights to load, and how to run them."""

    model: str = _opt("Wan2.1-1.3B", "model size; tiny-random = random weights, makes noise (smoke tests)", tuple(DIT_PRESETS))
    sampler: str = _opt("rcm", "rcm = TurboDiffusion few-step weights; euler = base Wan2.1 weights, CFG (the slow baseline)", SAMPLERS)
    attention: str = _opt("auto", "attention backend (auto: the fastest sparse one that runs here, else dense, for rcm; dense for euler)", ATTENTIONS)
    sla_topk: float = _opt(0.1, "fraction of key blocks SLA attends to exactly (0.15: better quality)")
    quant: str = _opt("auto", "quantized linear layers: int8 W8A8, fp8 (Ada/Hopper GPUs), none (auto: int8 on GPUs under 40 GB)", QUANTS)
    checkpoint_dir: str = _opt("checkpoints", "folder holding (or receiving) the weights", metavar="PATH")
    dit_path: str | None = _opt(None, "DiT checkpoint (default: from --checkpoint-dir)", metavar="PATH")
    text_encoder_path: str | None = _opt(None, "umT5 checkpoint (default: from --checkpoint-dir)", metavar="PATH")
    tokenizer_path: str | None = _opt(None, "umT5 tokenizer folder (default: CHECKPOINT_DIR/google/umt5-xxl)", metavar="PATH")
    vae_path: str | None = _opt(None, "VAE checkpoint (default: from --checkpoint-dir)", metavar="PATH")
    offline: bool = _opt(False, "never download: fail with the list of files to place instead")
    device: str | None = _opt(None, "torch device (default: cuda if available, else cpu)")
    dtype: str = _opt("auto", "compute dtype (auto: bfloat16 on GPU, float32 on CPU)", DTYPES)
    offload: bool = _opt(False, "keep models in CPU memory and move each to the GPU only while it runs")
    text_encoder_cpu: bool = _opt(False, "keep umT5 on the CPU and encode there: its 10.6 GiB never reach the GPU "
                                         "(text encoding takes seconds instead of milliseconds)")
    vae_tiling: str = _opt("auto", "decode the VAE in spatial tiles (less memory)", VAE_TILING)


def _base_type(tp) -> type:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def field_types(cls) -> dict[str, type]:
    """Field name -> its type with Optional removed."""
    hints = typing.get_type_hints(cls)
    return {f.name: _base_type(hints[f.name]) for f in dataclasses.fields(cls)}


def from_dict(cls, data: dict):
    """Build `cls` from JSON-like data: unknown keys and wrong types are ValueErrors naming the field."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object with the fields of {cls.__name__}")
    types = field_types(cls)
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}; known fields: {', '.join(types)}")
    kw = {}
    for name, value in data.items():
        tp = types[name]
        if value is None:
            default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
            if default is not None:
                raise ValueError(f"field {name!r} must not be null")
        elif tp is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
            raise ValueError(f"field {name!r} must be of type {tp.__name__}, got {type(value).__name__}")
        kw[name] = value
    return cls(**kw)
