"""Samplers: rCM few-step consistency sampling and the flow-matching Euler baseline with CFG.

Both take a velocity function `velocity(x, t) -> v` where x is the latent batch in the network's
dtype and t holds one timestep per sample in [0, 1000]; the pipeline binds the network and the
text context into it. Noise comes from one seeded generator in a fixed order, so a seed always
gives the same video for the same weights (on the same device type).
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Called after every step with (step index, number of steps, seconds the step took).
StepCallback = Callable[[int, int, float], None]

RCM_MID_TIMES = (1.5, 1.4, 1.0)  # TrigFlow times of the intermediate steps (TurboDiffusion's "better quality" set)
RCM_MAX_STEPS = len(RCM_MID_TIMES) + 1


def rcm_schedule(num_steps: int, sigma_max: float = 80.0) -> torch.Tensor:
    """Rectified-flow times [t_0, ..., t_n = 0] (float64) of the rCM sampler.

    TrigFlow times [atan(sigma_max), 1.5, 1.4, 1.0][:n] followed by 0, mapped to
    rectified flow by t = sin(s) / (sin(s) + cos(s)).
    """
    if not 1 <= num_steps <= RCM_MAX_STEPS:
        raise ValueError(f"num_steps must be between 1 and {RCM_MAX_STEPS} for rCM, got {num_steps}")
    if not sigma_max > 0:
        raise ValueError(f"sigma_max must be positive, got {sigma_max}")
    trig = torch.tensor([math.atan(sigma_max), *RCM_MID_TIMES[: num_steps - 1], 0.0], dtype=torch.float64)
    return torch.sin(trig) / (torch.sin(trig) + torch.cos(trig))


def rcm_step(x: torch.Tensor, v: torch.Tensor, t_cur, t_next, noise: torch.Tensor) -> torch.Tensor:
    """One rCM update: denoise to x0 = x - t v, then re-noise to t_next with fresh noise."""
    return (1 - t_next) * (x - t_cur * v) + t_next * noise


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sample_rcm(
    velocity: Velocity,
    shape: Sequence[int],
    *,
    num_steps: int = 4,
    sigma_max: float = 80.0,
    generator: torch.Generator,
    device: torch.device | str,
    dtype: torch.dtype,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """rCM sampling from pure noise; returns float32 latents of `shape` ([B, C, T, H, W]).

    The state is held in float64; the network sees it (and its timesteps) in `dtype`.
    Noise order: the initial noise, then one fresh draw per step (the last one too, though it
    is multiplied by 0), all float32 from `generator`, exactly as the reference draws them.
    """
    device = torch.device(device)
    t_steps = rcm_schedule(num_steps, sigma_max).to(device)
    noise = torch.randn(*shape, dtype=torch.float32, device=device, generator=generator)
    x = noise.to(torch.float64) * t_steps[0]
    # float32 time times float64 ones, as the reference computes it, then rounded once to `dtype`.
    ones = torch.ones(shape[0], dtype=torch.float64, device=device)
    for i in range(num_steps):
        start = time.perf_counter()
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        v = velocity(x.to(dtype), (t_cur.float() * ones * 1000).to(dtype)).to(torch.float64)
        fresh = torch.randn(*shape, dtype=torch.float32, device=device, generator=generator)
        x = rcm_step(x, v, t_cur, t_next, fresh)
        if on_step is not None:
            _sync(device)
            on_step(i, num_steps, time.perf_counter() - start)
    return x.float()


def flow_sigmas(num_steps: int, shift: float = 5.0) -> torch.Tensor:
    """Shifted flow-matching noise levels [s_0 = 1, ..., s_{n-1}, 0] (float64), as Wan2.1 samples.

    s = shift * u / (1 + (shift - 1) * u) for u = linspace(1, 0, n + 1)[:n], then a final 0.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if not shift > 0:
        raise ValueError(f"shift must be positive, got {shift}")
    u = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)[:num_steps]
    s = shift * u / (1 + (shift - 1) * u)
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)])


def cfg_velocity(cond: Velocity, uncond: Velocity, guidance_scale: float) -> Velocity:
    """Classifier-free guidance: v = v_uncond + g (v_cond - v_uncond). g == 1 skips the unconditional pass."""
    if guidance_scale == 1.0:
        return cond

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_c = cond(x, t)
        v_u = uncond(x, t)
        return v_u + guidance_scale * (v_c - v_u)

    return velocity


def sample_flow_euler(
    velocity: Velocity,
    shape: Sequence[int],
    *,
    num_steps: int = 50,
    shift: float = 5.0,
    generator: torch.Generator,
    device: torch.device | str,
    dtype: torch.dtype,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Plain Euler integration of the flow-matching ODE from s = 1 (noise) to 0; float32 latents.

    x_{i+1} = x_i + (s_{i+1} - s_i) v(x_i, 1000 s_i). The state stays float32 as in Wan2.1.
    """
    device = torch.device(device)
    sigmas = flow_sigmas(num_steps, shift)
    x = torch.randn(*shape, dtype=torch.float32, device=device, generator=generator)
    ones = torch.ones(shape[0], dtype=torch.float32, device=device)
    for i in range(num_steps):
        start = time.perf_counter()
        s_cur, s_next = float(sigmas[i]), float(sigmas[i + 1])
        v = velocity(x.to(dtype), (ones * (s_cur * 1000)).to(dtype)).float()
        x = x + (s_next - s_cur) * v
        if on_step is not None:
            _sync(device)
            on_step(i, num_steps, time.perf_counter() - start)
    return x
