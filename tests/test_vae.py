"""Wan2.1 VAE: parity with diffusers' AutoencoderKLWan, both checkpoint layouts, bad inputs.

The official layout is synthesised with key names written here from the official module structure
and checked against diffusers' own official->diffusers converter, so the loader is tested against
two independent descriptions of Wan2.1_VAE.pth.
"""
from __future__ import annotations

import re

import pytest
import torch

from turbovid.configs import VAE_PRESETS
from turbovid.loading import CheckpointError, load_vae
from turbovid.models.vae import WanVAE, build_vae

diffusers = pytest.importorskip("diffusers")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def diffusers_to_official(key: str) -> str:
    """Test-side description of the official Wan2.1 key names (Sequential indices of the reference)."""
    block = re.sub(r"\.norm1\.", ".residual.0.", key)
    block = re.sub(r"\.conv1\.", ".residual.2.", block)
    block = re.sub(r"\.norm2\.", ".residual.3.", block)
    block = re.sub(r"\.conv2\.", ".residual.6.", block)
    block = block.replace(".conv_shortcut.", ".shortcut.")
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", block):
        return f"decoder.upsamples.{4 * int(m[1]) + int(m[2])}.{m[3]}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
        return f"decoder.upsamples.{4 * int(m[1]) + 3}.{m[2]}"
    if m := re.match(r"encoder\.down_blocks\.(.*)", block):
        return f"encoder.downsamples.{m[1]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d)\.(.*)", block):
        index = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[f"{m[2]}.{m[3]}"]
        return f"{m[1]}.middle.{index}.{m[4]}"
    top = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
    head, _, rest = key.partition(".")
    if head in top:
        return f"{top[head]}.{rest}"
    key = re.sub(r"^(encoder|decoder)\.conv_in\.", r"\1.conv1.", key)
    key = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.head.0.", key)
    return re.sub(r"^(encoder|decoder)\.conv_out\.", r"\1.head.2.", key)


@pytest.fixture(scope="module")
def reference():
    """A tiny diffusers AutoencoderKLWan with every parameter randomised (gammas and biases too)."""
    torch.manual_seed(1)
    model = diffusers.AutoencoderKLWan(base_dim=8, z_dim=16).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.add_(0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0.0, 0.05)
    return model


def normalised_to_raw(zn: torch.Tensor, cfg) -> torch.Tensor:
    mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
    return zn / inv_std + mean  # as diffusers' Wan pipeline does before vae.decode


def diffusers_decode(model, zn: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.decode(normalised_to_raw(zn, VAE_PRESETS["tiny-random"])).sample


def diffusers_encode(model, video: torch.Tensor) -> torch.Tensor:
    cfg = VAE_PRESETS["tiny-random"]
    with torch.no_grad():
        mu = model.encode(video).latent_dist.mode()
    mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
    return (mu - mean) * (1.0 / torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1))


def test_official_key_names_match_diffusers_converter(reference):
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    sd = reference.state_dict()
    official = {diffusers_to_official(k): v for k, v in sd.items()}
    assert len(official) == len(sd)
    back = convert_wan_vae_to_diffusers(official)
    assert set(back) == set(sd)
    assert all(back[k] is sd[k] for k in sd)


def test_diffusers_folder_decode_and_encode_parity(reference, tmp_path):
    reference.save_pretrained(tmp_path / "vae")  # config.json + diffusion_pytorch_model.safetensors
    vae = load_vae(tmp_path)  # a model root holding vae/
    assert isinstance(vae, WanVAE) and vae.cfg.dim == 8 and vae.cfg.z_dim == 16
    assert vae.cfg.temporal_downsample == (False, True, True) and vae.cfg.dim_mult == (1, 2, 4, 4)

    zn = torch.randn(1, 16, 3, 4, 6)
    ref = diffusers_decode(reference, zn)
    out = vae.decode(zn, fast=False)
    assert out.shape == (1, 3, 9, 32, 48) and out.dtype == torch.float32
    assert (ref.abs() < 1).float().mean() > 0.9  # the comparison is not hidden by the clamp
    assert rel(out, ref) < 1e-4
    assert rel(vae.decode(zn), ref) < 1e-4  # the default (fast) decode too

    video = torch.rand(1, 3, 9, 32, 48) * 2 - 1
    lat = vae.encode(video)
    assert lat.shape == (1, 16, 3, 4, 6)
    assert rel(lat, diffusers_encode(reference, video)) < 1e-4


def test_official_pth_loads_and_matches(reference, tmp_path):
    official = {diffusers_to_official(k): v.clone() for k, v in reference.state_dict().items()}
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(official, path)
    vae = load_vae(path, dtype=torch.float32)
    zn = torch.randn(1, 16, 2, 4, 4)
    assert rel(vae.decode(zn, fast=False), diffusers_decode(reference, zn)) < 1e-4
    video = torch.rand(1, 3, 5, 16, 24) * 2 - 1
    assert rel(vae.encode(video), diffusers_encode(reference, video)) < 1e-4


def test_architecture_read_from_shapes(tmp_path):
    # A non-preset shape: another base dim, 1 res block per stage, different temporal flags.
    from turbovid.configs import VAEConfig

    cfg = VAEConfig(dim=4, dim_mult=(1, 2, 2), num_res_blocks=1, temporal_downsample=(True, False))
    src = build_vae(cfg, seed=3)
    torch.save(src.state_dict(), tmp_path / "mine.pt")
    vae = load_vae(tmp_path / "mine.pt")
    assert vae.cfg == cfg
    zn = torch.randn(1, 16, 2, 3, 3)
    out = vae.decode(zn, fast=False)
    assert out.shape == (1, 3, 3, 12, 12)  # 2x temporal, 4x spatial for this config
    assert torch.equal(out, src.decode(zn, fast=False))


def test_chunked_reference_equals_one_pass():
    """The stream state reproduces one causal pass over the whole sequence (decode and encode)."""
    vae = build_vae("tiny-random", seed=2)
    zn = torch.randn(1, 16, 4, 3, 5)
    with torch.no_grad():
        one = vae.decoder(vae.post_quant_conv(vae.denormalize(zn))).clamp(-1, 1)
        assert one.shape[2] == 13
        assert rel(vae.decode(zn, fast=False), one) < 1e-5
        video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
        mu = vae.quant_conv(vae.encoder(video))[:, :16]
        mean, inv_std = vae._stats(mu)
        assert rel(vae.encode(video), (mu - mean) * inv_std) < 1e-5


def test_build_vae_is_seeded():
    a, b, c = build_vae("tiny-random", seed=5), build_vae("tiny-random", seed=5), build_vae("tiny-random", seed=6)
    wa, wb, wc = (m.decoder.conv_in.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


# ---- bad input -------------------------------------------------------------------------------

def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError) as e:
        load_vae(tmp_path / "nope.pth")
    assert "nope.pth" in _one_line(e)


def test_truncated_file(tmp_path):
    path = tmp_path / "vae.pth"
    torch.save(build_vae("tiny-random").state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        load_vae(path)
    assert "vae.pth" in _one_line(e)


def test_keys_of_another_model(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"blocks.0.attn.q.weight": torch.zeros(4, 4)}, path)
    with pytest.raises(CheckpointError) as e:
        load_vae(path)
    assert "no Wan2.1 VAE layout" in _one_line(e) and "other.pth" in str(e.value)


def test_shape_mismatch(reference, tmp_path):
    official = {diffusers_to_official(k): v.clone() for k, v in reference.state_dict().items()}
    official["decoder.head.2.weight"] = torch.zeros(3, 8, 3, 3, 1)
    torch.save(official, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as e:
        load_vae(tmp_path / "bad.pth")
    assert "decoder.conv_out.weight" in _one_line(e) and "bad.pth" in str(e.value)


def test_missing_tensor(reference, tmp_path):
    official = {diffusers_to_official(k): v.clone() for k, v in reference.state_dict().items()}
    del official["decoder.middle.1.proj.weight"]
    torch.save(official, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError) as e:
        load_vae(tmp_path / "partial.pth")
    assert "missing" in _one_line(e)


def test_residual_wan22_config_rejected(reference, tmp_path):
    reference.save_pretrained(tmp_path)
    cfg = (tmp_path / "config.json").read_text().replace('"is_residual": false', '"is_residual": true')
    (tmp_path / "config.json").write_text(cfg)
    with pytest.raises(CheckpointError) as e:
        load_vae(tmp_path)
    assert "Wan2.2" in _one_line(e)


def test_empty_folder(tmp_path):
    with pytest.raises(CheckpointError) as e:
        load_vae(tmp_path)
    assert "no weight file" in _one_line(e)


@pytest.mark.parametrize(
    "shape", [(1, 8, 2, 4, 4), (16, 2, 4, 4), (1, 16, 0, 4, 4)], ids=["channels", "4d", "empty"]
)
def test_bad_latents(shape):
    vae = build_vae("tiny-random")
    with pytest.raises(ValueError, match="latents"):
        vae.decode(torch.zeros(shape), fast=False)


def test_bad_decode_options():
    vae = build_vae("tiny-random")
    z = torch.randn(1, 16, 1, 2, 2)
    with pytest.raises(ValueError, match="tiling"):
        vae.decode(z, tiling="sometimes")
    with pytest.raises(ValueError, match="fast=True"):
        vae.decode(z, tiling="on", fast=False)


@pytest.mark.parametrize("shape", [(1, 3, 4, 16, 16), (1, 3, 5, 12, 16), (1, 4, 5, 16, 16)])
def test_bad_video(shape):
    vae = build_vae("tiny-random")
    with pytest.raises(ValueError, match="video|frames"):
        vae.encode(torch.zeros(shape))


def test_real_config_read_from_shapes():
    from turbovid.loading.vae import config_from_state_dict

    with torch.device("meta"):
        real = WanVAE(VAE_PRESETS["wan2.1"])
    sd = real.state_dict()
    assert config_from_state_dict(sd, "meta") == VAE_PRESETS["wan2.1"]
    assert sum(t.numel() for t in sd.values()) > 120_000_000  # ~127M parameters, as Wan2.1_VAE.pth
