import json
import os
import sys
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from helpers_ckpt import random_official_sd, save_pth, turbodiffusion_sd
from pipeline_fakes import fake_pipeline
from spm_fixture import make_tokenizer_dir
from turbovid import cli
from turbovid.configs import DIT_PRESETS
from turbovid.io import read_video
from turbovid.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--resolution", "128p", "--aspect_ratio", "1:1", "--quiet"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Tiny checkpoints in the released layouts: TurboWan DiT .pth, Wan umT5 .pth + tokenizer folder, VAE .pth."""
    from turbovid.models.t5 import build_text_encoder
    from turbovid.models.vae import build_vae

    d = tmp_path_factory.mktemp("ckpt")
    dit = save_pth(d / "TurboWan-tiny.pth", turbodiffusion_sd(random_official_sd(DIT_PRESETS["tiny-random"], torch.bfloat16)))
    t5 = save_pth(d / "t5-tiny.pth", build_text_encoder("tiny-random", seed=1).model.state_dict())
    vae = save_pth(d / "vae-tiny.pth", build_vae("tiny-random", seed=2).state_dict())
    tok = make_tokenizer_dir(d)
    return {"dit": dit, "t5": t5, "vae": vae, "tok": tok}


def ckpt_args(c, model="tiny-random"):
    return ["--model", model, "--dit_path", str(c["dit"]), "--text_encoder_path", str(c["t5"]),
            "--tokenizer_path", str(c["tok"]), "--vae_path", str(c["vae"]), "--device", "cpu"]


def run(args, capsys):
    rc = cli.main(["generate", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_generate_end_to_end_with_checkpoints(tmp_path, ckpts, capsys):
    out1, out2, out3 = tmp_path / "a" / "v1.mp4", tmp_path / "v2.mp4", tmp_path / "v3.mp4"
    base = [*ckpt_args(ckpts), *SMALL, "--num_frames", "5", "--num_steps", "2", "--prompt", "a red fox"]
    rc, out, err = run([*base, "--output", str(out1), "--seed", "3"], capsys)
    assert rc == 0, err
    assert f"saved {out1}" in out and "sampling 2 steps" in out and "decode" in out and "total" in out

    with av.open(str(out1)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.codec_context.pix_fmt, s.average_rate) == ("h264", "yuv420p", 16)
    f1, fps = read_video(out1)
    assert f1.shape == (5, 128, 128, 3) and fps == 16

    meta = json.loads(out1.with_suffix(".json").read_text())
    assert meta["prompt"] == "a red fox" and meta["seed"] == 3 and meta["video"] == "v1.mp4"
    assert meta["settings"]["num_frames"] == 5 and meta["settings"]["num_steps"] == 2
    assert meta["settings"]["width"] == meta["settings"]["height"] == 128 and meta["settings"]["fps"] == 16
    assert meta["settings"]["model"] == "tiny-random" and meta["settings"]["checkpoints"]["dit"] == str(ckpts["dit"])
    assert set(meta["timings"]) >= {"load", "text_encoding", "sampling", "steps", "vae_decode", "total", "write"}
    assert len(meta["timings"]["steps"]) == 2
    parts = meta["timings"]["load_parts"]  # each checkpoint's read-and-place time, then the prewarm wait
    assert set(parts) == {"dit", "vae", "text_encoder", "prewarm_wait"} and all(v >= 0 for v in parts.values())
    assert sum(parts.values()) <= meta["timings"]["load"]
    import turbovid

    assert meta["version"] == turbovid.__version__

    assert run([*base, "--output", str(out2), "--seed", "3"], capsys)[0] == 0
    assert run([*base, "--output", str(out3), "--seed", "4"], capsys)[0] == 0
    f2, f3 = read_video(out2)[0], read_video(out3)[0]
    assert np.array_equal(f1, f2)
    assert not np.array_equal(f1, f3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "v2.json", "v2.mp4", "v3.json", "v3.mp4"]


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="predict.sh needs ./build.sh's .venv")
def test_predict_sh_tiny_random(tmp_path):
    """./predict.sh --model tiny-random from another folder: the user's command, in a fresh process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([str(ROOT / "predict.sh"), "--model", "tiny-random", "--num_frames", "1", "--num_steps", "1"],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    out = tmp_path / "outputs" / "generated_video.mp4"  # the default --output, relative to the caller's folder
    assert "noise" in p.stderr and "saved outputs/generated_video.mp4" in p.stdout  # clearly labelled
    frames, _ = read_video(out)
    assert frames.shape == (1, 128, 224, 3)  # tiny-random defaults: 128p 16:9
    assert "noise" in json.loads(out.with_suffix(".json").read_text())["note"]
    bad = subprocess.run([str(ROOT / "predict.sh"), "--num_frames", "8"], capture_output=True, text=True, timeout=300,
                         env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "4n+1" in bad.stderr


def test_num_samples_write_one_file_each(tmp_path, monkeypatch, capsys):
    pipe = fake_pipeline()
    monkeypatch.setattr(Pipeline, "from_options", classmethod(lambda cls, *a, **k: pipe))
    rc, out, err = run([*SMALL, "--num_frames", "1", "--num_samples", "2", "--output", str(tmp_path / "v.webm")], capsys)
    assert rc == 0, err
    assert pipe.text_encoder is None  # one request: let go of once the prompt was encoded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v_0.json", "v_0.webm", "v_1.json", "v_1.webm"]
    assert json.loads((tmp_path / "v_1.json").read_text())["sample"] == 1


def _assert_usage_error(rc, err, message, *paths):
    assert rc == 2
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1].split("\r")[-1]  # after any progress bar output
    assert "error:" in last and message in last, err
    assert err.count("error:") == 1, err
    for p in paths:
        assert not Path(p).exists()


@pytest.mark.parametrize("args,message", [
    (["--prompt", ""], "the prompt is empty"),
    (["--num_frames", "80"], "--num_frames must be 4n+1"),
    (["--num_frames", "0"], "--num_frames must be 4n+1"),
    (["--num_steps", "5"], "--num_steps must be between 1 and 4"),
    (["--num_steps", "0"], "--num_steps must be between 1 and 4"),
    (["--resolution", "1080p"], "invalid choice: '1080p'"),
    (["--aspect_ratio", "2:1"], "invalid choice: '2:1'"),
    (["--num_frames", "many"], "invalid int value"),
    (["--sla_topk", "2"], "--sla_topk must be in (0, 1]"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    (["--device", "cpu", "--quant", "fp8"], "--quant fp8 needs an NVIDIA GPU with fp8"),
])
def test_bad_input_exit_2_nothing_written(tmp_path, capsys, args, message):
    out = tmp_path / "sub" / "v.mp4"
    rc = None
    try:
        rc = cli.main(["generate", "--model", "tiny-random", "--output", str(out), *args])
    except SystemExit as e:  # argparse errors
        rc = e.code
    err = capsys.readouterr().err
    _assert_usage_error(rc, err, message, out, out.parent)


def test_unwritable_output(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    rc, _, err = run(["--model", "tiny-random", "--output", str(tmp_path / "file" / "v.mp4")], capsys)
    _assert_usage_error(rc, err, "choose another --output", tmp_path / "file" / "v.mp4")
    rc, _, err = run(["--model", "tiny-random", "--output", str(tmp_path / "v.avi")], capsys)
    _assert_usage_error(rc, err, "unsupported extension", tmp_path / "v.avi")


def test_missing_checkpoints_offline_names_files_and_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out, ckpt = tmp_path / "v.mp4", tmp_path / "weights"
    rc, _, err = run(["--checkpoint-dir", str(ckpt), "--output", str(out), "--device", "cpu", "--attention", "dense"], capsys)
    _assert_usage_error(rc, err, "missing weights (offline)", out, ckpt)
    for name in ("TurboWan2.1-T2V-1.3B-480P.pth", "Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth", "spiece.model",
                 "https://huggingface.co/TurboDiffusion/TurboWan2.1-T2V-1.3B-480P/resolve/main/", str(ckpt)):
        assert name in err
    rc, _, err = run(["--checkpoint-dir", str(ckpt), "--output", str(out), "--device", "cpu", "--quant", "int8",
                      "--attention", "dense"], capsys)
    assert rc == 2 and "TurboWan2.1-T2V-1.3B-480P-quant.pth" in err


def test_tiny_checkpoints_default_to_the_byte_tokenizer_and_bad_tokenizer_is_one_line(tmp_path, ckpts, capsys):
    args = ckpt_args(ckpts)
    i = args.index("--tokenizer_path")
    no_tok = args[:i] + args[i + 2:]
    out = tmp_path / "v.mp4"
    rc, _, err = run([*no_tok, *SMALL, "--num_frames", "1", "--num_steps", "1", "--output", str(out)], capsys)
    assert rc == 0, err
    empty = tmp_path / "emptytok"
    empty.mkdir()
    args[i + 1] = str(empty)
    out2 = tmp_path / "w.mp4"
    rc, _, err = run([*args, *SMALL, "--output", str(out2)], capsys)
    _assert_usage_error(rc, err, "emptytok", out2)


def test_explicit_missing_path(tmp_path, capsys):
    out = tmp_path / "v.mp4"
    rc, _, err = run(["--dit_path", str(tmp_path / "nope.pth"), "--output", str(out), "--device", "cpu"], capsys)
    _assert_usage_error(rc, err, "nope.pth: file not found (given as --dit_path)", out)


def test_mismatched_and_corrupt_checkpoints(tmp_path, ckpts, capsys):
    out = tmp_path / "v.mp4"
    rc, _, err = run([*ckpt_args(ckpts, model="Wan2.1-1.3B"), "--output", str(out)], capsys)  # progress bars on
    _assert_usage_error(rc, err, str(ckpts["dit"]), out)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(ckpts["vae"].read_bytes()[:5000])
    args = ckpt_args(ckpts)
    args[args.index("--vae_path") + 1] = str(bad)
    rc, _, err = run([*args, "--output", str(out)], capsys)
    _assert_usage_error(rc, err, "bad.pth", out)


def test_cuda_oom_suggests_smaller_settings(tmp_path, monkeypatch, capsys):
    pipe = fake_pipeline()

    def boom(*a, **kw):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    pipe.vae.decode = boom
    monkeypatch.setattr(Pipeline, "from_options", classmethod(lambda cls, *a, **k: pipe))
    out = tmp_path / "v.mp4"
    rc, _, err = run([*SMALL, "--output", str(out)], capsys)
    _assert_usage_error(rc, err, "CUDA out of memory during VAE decoding", out)
    assert "--offload" in err and "--resolution 480p" in err and "--quant int8" in err


def test_ctrl_c_leaves_no_file(tmp_path, monkeypatch, capsys):
    pipe = fake_pipeline()

    def interrupt(*a, **kw):
        raise KeyboardInterrupt

    pipe.vae.decode = interrupt
    monkeypatch.setattr(Pipeline, "from_options", classmethod(lambda cls, *a, **k: pipe))
    out = tmp_path / "v.mp4"
    rc, _, err = run([*SMALL, "--output", str(out)], capsys)
    assert rc == 130 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_writing_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    from turbovid import io

    def full(self):
        self.abort()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.VideoWriter, "close", full)
    monkeypatch.setattr(Pipeline, "from_options", classmethod(lambda cls, *a, **k: fake_pipeline()))
    out = tmp_path / "v.mp4"
    rc, _, err = run([*SMALL, "--output", str(out)], capsys)
    _assert_usage_error(rc, err, "No space left on device", out)
    assert "free disk space" in err and list(tmp_path.iterdir()) == []


def test_convert_to_int8_then_generate(tmp_path, ckpts, capsys):
    dst = tmp_path / "tiny-int8.safetensors"
    assert cli.main(["convert", str(ckpts["dit"]), str(dst), "--model", "tiny-random"]) == 0
    assert f"wrote {dst}" in capsys.readouterr().out
    args = ckpt_args(ckpts)
    args[args.index("--dit_path") + 1] = str(dst)
    out = tmp_path / "v.mp4"
    rc, _, err = run([*args, *SMALL, "--num_frames", "1", "--num_steps", "1", "--output", str(out)], capsys)
    assert rc == 0, err
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["quant"] == "int8"
    rc = cli.main(["convert", str(ckpts["dit"]), str(tmp_path / "x.safetensors"), "--format", "int4"])
    _assert_usage_error(rc, capsys.readouterr().err, "unknown quant format 'int4'", tmp_path / "x.safetensors")


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = capsys.readouterr().out
    for flag in ("--prompt", "--output", "--num_steps", "--resolution", "--aspect_ratio", "--num_frames", "--seed",
                 "--sigma_max", "--model", "--attention", "--sla_topk", "--quant", "--checkpoint-dir", "--dit_path",
                 "--text_encoder_path", "--vae_path", "--device", "--offload", "--num_samples", "--vae-tiling",
                 "--sampler", "--guidance_scale", "--shift"):
        assert flag in text, flag


@pytest.mark.parametrize("mode", ["fast", "env_off", "profiled"])
def test_exit_process_skips_teardown_but_not_output(mode):
    """The CLI ends with os._exit once its files are closed: buffered output still arrives, atexit
    handlers (interpreter teardown) do not run, unless turned off or a profiler / tracer needs them."""
    code = (
        "import atexit, sys\n"
        "from turbovid.cli import exit_process\n"
        "atexit.register(lambda: print('[atexit]'))\n"
        f"if {mode == 'profiled'}: sys.setprofile(lambda *a: None)\n"
        "print('buffered', end='')\n"  # stdout is a pipe here: block-buffered until flushed
        "print('to stderr', file=sys.stderr, end='')\n"
        "exit_process(3)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TURBOVID_FAST_EXIT": "0" if mode == "env_off" else "1"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 3 and p.stderr == "to stderr"
    assert p.stdout == ("buffered" if mode == "fast" else "buffered[atexit]\n")
