import math

import pytest
import torch

from turbovid.sampling import cfg_velocity, flow_sigmas, rcm_schedule, rcm_step, sample_flow_euler, sample_rcm


def _rf(trig: float) -> float:
    # sin / (sin + cos) == tan / (1 + tan): an independent way to get the same number
    return math.tan(trig) / (1 + math.tan(trig))


def test_rcm_schedule_hand_values():
    t = rcm_schedule(4, sigma_max=80)
    assert t.dtype == torch.float64
    expected = [80 / 81, _rf(1.5), _rf(1.4), _rf(1.0), 0.0]
    assert t.tolist() == pytest.approx(expected, abs=1e-15)
    # concrete numbers, so a change of the mid times is caught too
    assert t.tolist()[:4] == pytest.approx([0.987654321, 0.933781, 0.852896, 0.608979], abs=1e-6)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_rcm_schedule_prefix(n):
    t = rcm_schedule(n, sigma_max=1600)
    assert t.tolist() == pytest.approx([1600 / 1601, *[_rf(s) for s in (1.5, 1.4, 1.0)[: n - 1]], 0.0], abs=1e-15)


@pytest.mark.parametrize("n", [0, 5, -1])
def test_rcm_schedule_rejects_step_counts(n):
    with pytest.raises(ValueError, match="between 1 and 4"):
        rcm_schedule(n)


def test_rcm_step_hand_value():
    # (1 - 0.5) * (2 - 0.8 * 0.5) + 0.5 * 1 = 0.8 + 0.5
    out = rcm_step(torch.tensor(2.0), torch.tensor(0.5), 0.8, 0.5, torch.tensor(1.0))
    assert out.item() == pytest.approx(1.3)


def _reference_rcm(net, shape, seed, num_steps, sigma_max, dtype):
    """The loop of TurboDiffusion's T2V script, written out literally (device: cpu)."""
    g = torch.Generator().manual_seed(seed)
    init_noise = torch.randn(*shape, dtype=torch.float32, generator=g)
    mid_t = [1.5, 1.4, 1.0][: num_steps - 1]
    t_steps = torch.tensor([math.atan(sigma_max), *mid_t, 0], dtype=torch.float64)
    t_steps = torch.sin(t_steps) / (torch.cos(t_steps) + torch.sin(t_steps))
    x = init_noise.to(torch.float64) * t_steps[0]
    ones = torch.ones(x.size(0), 1, dtype=x.dtype)
    for t_cur, t_next in zip(t_steps[:-1], t_steps[1:]):
        v = net(x.to(dtype), (t_cur.float() * ones * 1000).to(dtype)[:, 0]).to(torch.float64)
        x = (1 - t_next) * (x - t_cur * v) + t_next * torch.randn(*x.shape, dtype=torch.float32, generator=g)
    return x.float()


def _toy_net(x, t):
    # depends on x and t non-linearly so any change in order or rounding shows
    return torch.sin(x * 3) * 0.5 + (t.float() / 1000)[:, None, None, None, None] * x


@pytest.mark.parametrize("num_steps", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sample_rcm_matches_reference_loop_bitwise(num_steps, dtype):
    shape = (2, 16, 2, 4, 6)
    got = sample_rcm(_toy_net, shape, num_steps=num_steps, sigma_max=80, generator=torch.Generator().manual_seed(7),
                     device="cpu", dtype=dtype)
    want = _reference_rcm(_toy_net, shape, 7, num_steps, 80, dtype)
    assert got.dtype == torch.float32
    assert torch.equal(got, want)


def test_sample_rcm_recovers_x0_from_exact_velocity():
    # rectified flow: x_t = (1 - t) x0 + t eps, v = (x_t - x0) / t  =>  x - t v = x0 exactly
    x0 = torch.linspace(-1, 1, 2 * 16 * 3 * 2 * 2).reshape(2, 16, 3, 2, 2).double()
    seen_t = []

    def net(x, t):
        seen_t.append(t.clone())
        tt = t.double()[:, None, None, None, None] / 1000
        return (x.double() - x0) / tt

    out = sample_rcm(net, x0.shape, num_steps=4, generator=torch.Generator().manual_seed(0), device="cpu",
                     dtype=torch.float64)
    assert torch.allclose(out.double(), x0, atol=1e-6)
    assert [t[0].item() for t in seen_t] == pytest.approx([1000 * v for v in rcm_schedule(4).tolist()[:4]], rel=1e-6)
    assert all(t.shape == (2,) for t in seen_t)


def test_sample_rcm_network_sees_requested_dtype_and_rounded_times():
    seen = []

    def net(x, t):
        seen.append((x.dtype, t.dtype, t[0].item()))
        return torch.zeros_like(x)

    sample_rcm(net, (1, 16, 1, 2, 2), num_steps=2, generator=torch.Generator().manual_seed(0), device="cpu",
               dtype=torch.bfloat16)
    assert [s[:2] for s in seen] == [(torch.bfloat16, torch.bfloat16)] * 2
    # 1000 * 80/81 = 987.65 -> bf16 rounds to 988 (as the reference feeds the network)
    assert seen[0][2] == 988.0


def test_sample_rcm_seed_controls_noise():
    def run(seed):
        return sample_rcm(_toy_net, (1, 16, 1, 4, 4), num_steps=4, generator=torch.Generator().manual_seed(seed),
                          device="cpu", dtype=torch.float32)

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_sample_rcm_reports_each_step():
    calls = []
    sample_rcm(_toy_net, (1, 16, 1, 2, 2), num_steps=3, generator=torch.Generator().manual_seed(0), device="cpu",
               dtype=torch.float32, on_step=lambda i, n, s: calls.append((i, n, s >= 0)))
    assert calls == [(0, 3, True), (1, 3, True), (2, 3, True)]


def test_flow_sigmas_hand_values():
    # u = [1, 0.5]; s = 5u / (1 + 4u) = [1, 2.5/3], then 0
    assert flow_sigmas(2, shift=5).tolist() == pytest.approx([1.0, 2.5 / 3, 0.0])
    assert flow_sigmas(4, shift=1).tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    s = flow_sigmas(50, shift=5.0)
    assert len(s) == 51 and s[0] == 1 and s[-1] == 0 and bool((s[1:] < s[:-1]).all())
    with pytest.raises(ValueError):
        flow_sigmas(0)


def test_flow_euler_update_rule():
    # constant velocity c: the steps sum to -1, so x_final = noise - c
    shape = (1, 16, 1, 2, 2)
    c = 0.25
    seen_t = []

    def net(x, t):
        seen_t.append(t[0].item())
        return torch.full_like(x, c)

    out = sample_flow_euler(net, shape, num_steps=3, shift=3.0, generator=torch.Generator().manual_seed(5),
                            device="cpu", dtype=torch.float32)
    noise = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(out, noise - c, atol=1e-6)
    assert seen_t == pytest.approx([1000 * s for s in flow_sigmas(3, 3.0).tolist()[:3]], rel=1e-6)


def test_flow_euler_one_step_hand_value():
    # one step from s=1 to 0 with v = x / 2: x1 = x0 - x0 / 2
    out = sample_flow_euler(lambda x, t: x / 2, (1, 16, 1, 1, 1), num_steps=1, generator=torch.Generator().manual_seed(3),
                            device="cpu", dtype=torch.float32)
    noise = torch.randn(1, 16, 1, 1, 1, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(out, noise / 2)


def test_cfg_velocity():
    calls = []

    def cond(x, t):
        calls.append("c")
        return torch.full_like(x, 2.0)

    def uncond(x, t):
        calls.append("u")
        return torch.full_like(x, 1.0)

    x, t = torch.zeros(1, 2), torch.zeros(1)
    assert cfg_velocity(cond, uncond, 5.0)(x, t).tolist() == [[6.0, 6.0]]  # 1 + 5 * (2 - 1)
    calls.clear()
    assert cfg_velocity(cond, uncond, 1.0)(x, t).tolist() == [[2.0, 2.0]]
    assert calls == ["c"]  # guidance 1 needs no unconditional pass
