"""turbovid: few-step text-to-video on Wan2.1 (TurboDiffusion) with Triton kernels."""
from __future__ import annotations

__version__ = "0.1.0"

# Public API, imported lazily so `import turbovid` stays cheap (no torch model code until used).
_EXPORTS = {
    "load_dit": "turbovid.loading",
    "load_text_encoder": "turbovid.loading",
    "load_vae": "turbovid.loading",
    "Pipeline": "turbovid.pipeline",
    "GenerationRequest": "turbovid.pipeline",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'turbovid' has no attribute {name!r}")
