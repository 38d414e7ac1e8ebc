import dataclasses

import numpy as np
import pytest
import torch

from pipeline_fakes import FakeDiT, FakeTextEncoder, FakeVAE, fake_pipeline
from turbovid.options import WAN_NEGATIVE_PROMPT, GenerationRequest, PipelineOptions
from turbovid.pipeline import OutOfMemory, Pipeline, UsageError, check_options, resolve_request
from turbovid.sampling import rcm_schedule

SMALL = dict(resolution="128p", aspect_ratio="1:1", num_frames=5)


def test_defaults_depend_on_model_and_sampler():
    r = resolve_request(GenerationRequest(), "Wan2.1-1.3B", "rcm")
    assert (r.prompt, r.num_steps, r.resolution, r.num_frames, r.seed, r.negative_prompt) == (
        "A cat playing piano", 4, "480p", 81, 42, None)
    e = resolve_request(GenerationRequest(), "Wan2.1-14B", "euler")
    assert (e.num_steps, e.guidance_scale, e.shift, e.negative_prompt) == (50, 5.0, 5.0, WAN_NEGATIVE_PROMPT)
    t = resolve_request(GenerationRequest(), "tiny-random", "rcm")
    assert (t.resolution, t.num_frames) == ("128p", 9)
    # explicit values are kept
    assert resolve_request(GenerationRequest(num_frames=5, resolution="720p"), "tiny-random").num_frames == 5


@pytest.mark.parametrize("change,message", [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="  \n"), "prompt is empty"),
    (dict(num_frames=80), "4n+1"),
    (dict(num_frames=0), "4n+1"),
    (dict(num_frames=-3), "4n+1"),
    (dict(num_steps=0), "between 1 and 4"),
    (dict(num_steps=5), "between 1 and 4"),
    (dict(resolution="1080p"), "unknown --resolution '1080p'; choose one of 480p, 720p"),
    (dict(aspect_ratio="2:1"), "unknown --aspect_ratio '2:1'"),
    (dict(seed=-1), "--seed"),
    (dict(num_samples=0), "--num_samples"),
    (dict(sigma_max=0.0), "--sigma_max"),
    (dict(shift=-1.0), "--shift"),
])
def test_bad_requests_name_the_fix(change, message):
    with pytest.raises(UsageError, match=message.replace("+", r"\+")):
        resolve_request(dataclasses.replace(GenerationRequest(), **change))


def test_num_frames_error_suggests_neighbours():
    with pytest.raises(UsageError, match="try 77 or 81"):
        resolve_request(GenerationRequest(num_frames=80))


def test_euler_allows_many_steps():
    assert resolve_request(GenerationRequest(num_steps=50), sampler="euler").num_steps == 50
    with pytest.raises(UsageError, match="between 1 and 1000"):
        resolve_request(GenerationRequest(num_steps=1001), sampler="euler")


@pytest.mark.parametrize("change,message", [
    (dict(model="Wan9"), "unknown --model 'Wan9'"),
    (dict(attention="flash"), "unknown --attention"),
    (dict(quant="fp4"), "unknown --quant"),
    (dict(sampler="ddim"), "unknown --sampler"),
    (dict(vae_tiling="maybe"), "unknown --vae-tiling"),
    (dict(sla_topk=0.0), "--sla_topk"),
])
def test_bad_options(change, message):
    with pytest.raises(UsageError, match=message):
        check_options(dataclasses.replace(PipelineOptions(), **change))


def test_host_waits_for_the_device_only_one_step_behind(monkeypatch):
    """No host-device sync between the stages: the clock's marks are only recorded, and during
    sampling the host waits for step i - 1 once step i's forward is queued (the GPU never runs dry
    for the host's sake); the stage times add up to the total."""
    from turbovid import clock, pipeline

    log = []

    class Recording(clock.StageClock):
        def mark(self, name):
            log.append(("mark", name))
            super().mark(name)

        def wait(self, name):
            log.append(("wait", name))
            super().wait(name)

    monkeypatch.setattr(pipeline, "StageClock", Recording)
    pipe = fake_pipeline()
    forward = pipe.dit.forward
    monkeypatch.setattr(pipe.dit, "forward", lambda *a, **k: (log.append(("forward",)), forward(*a, **k))[1])
    res = pipe.generate(GenerationRequest(prompt="a fox", num_steps=3, **SMALL))
    assert log == [("mark", "start"), ("mark", "text"),
                   ("mark", "step0"), ("forward",),
                   ("mark", "step1"), ("forward",), ("wait", "step1"),
                   ("mark", "step2"), ("forward",), ("wait", "step2"),
                   ("mark", "sampled")]
    t = res.timings
    assert t["text_encoding"] + t["sampling"] + t["vae_decode"] == pytest.approx(t["total"], abs=1e-9)
    assert len(t["steps"]) == 3 and sum(t["steps"]) <= t["sampling"] + 1e-9


def test_generate_frames_timings_and_calls():
    pipe = fake_pipeline()
    events = []
    res = pipe.generate(GenerationRequest(prompt="a fox", num_steps=3, **SMALL), progress=lambda *e: events.append(e))
    assert len(res.videos) == 1
    assert res.frames.shape == (5, 128, 128, 3) and res.frames.dtype == np.uint8
    t = res.timings
    assert set(t) == {"text_encoding", "sampling", "steps", "vae_decode", "total"}
    assert len(t["steps"]) == 3 and all(s >= 0 for s in t["steps"])
    assert t["total"] >= t["text_encoding"] + t["sampling"] + t["vae_decode"] - 1e-6
    # rcm: one network call per step, at the schedule's times, no negative prompt
    assert pipe.text_encoder.prompts == [["a fox"]] and pipe.text_encoder.pad is False
    times = [c[2][0].item() for c in pipe.dit.calls]
    assert times == pytest.approx([1000 * v for v in rcm_schedule(3).tolist()[:3]], rel=1e-6)
    assert pipe.dit.calls[0][0] == (1, 16, 2, 16, 16)
    assert events[0] == ("encode", 0, 1) and events[-1] == ("decode", 5, 5)  # decode progress counts frames
    assert [e for e in events if e[0] == "sample"] == [("sample", i, 3) for i in range(4)]
    assert pipe.vae.tiling == ["auto"]
    assert res.request.num_steps == 3 and res.settings["model"] == "tiny-random"


def test_euler_uses_cfg_with_the_negative_prompt():
    pipe = fake_pipeline(sampler="euler")
    pipe.generate(GenerationRequest(prompt="a fox", num_steps=2, **SMALL))
    assert pipe.text_encoder.prompts == [["a fox", WAN_NEGATIVE_PROMPT]]
    assert len(pipe.dit.calls) == 4  # conditional + unconditional per step
    ctx_means = [c[3] for c in pipe.dit.calls[:2]]
    assert ctx_means[0] != ctx_means[1]
    pipe.dit.calls.clear()
    pipe.generate(GenerationRequest(prompt="a fox", num_steps=2, guidance_scale=1.0, **SMALL))
    assert len(pipe.dit.calls) == 2


def test_seed_reproducibility_and_samples():
    pipe = fake_pipeline()
    a = pipe.generate(GenerationRequest(seed=1, **SMALL)).frames
    b = pipe.generate(GenerationRequest(seed=1, **SMALL)).frames
    c = pipe.generate(GenerationRequest(seed=2, **SMALL)).frames
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    two = pipe.generate(GenerationRequest(seed=1, num_samples=2, **SMALL))
    assert len(two.videos) == 2 and not np.array_equal(two.videos[0], two.videos[1])
    assert pipe.dit.calls[-1][0][0] == 2


def test_one_request_pipeline_lets_go_of_the_text_encoder():
    # the CLI's single video: the text encoder's memory is free for sampling and the decode
    import weakref

    pipe = fake_pipeline()
    gone = weakref.ref(pipe.text_encoder)
    pipe.release_text_encoder = True
    seen_in_sampling = []
    real_dit = pipe.dit.forward
    pipe.dit.forward = lambda *a: (seen_in_sampling.append(gone() is None), real_dit(*a))[1]
    a = pipe.generate(GenerationRequest(seed=1, **SMALL)).frames
    assert pipe.text_encoder is None and gone() is None and seen_in_sampling and all(seen_in_sampling)
    with pytest.raises(UsageError, match="let go of its text encoder"):
        pipe.generate(GenerationRequest(seed=1, **SMALL))
    kept = fake_pipeline()  # by default (the server) it stays, and the video is the same
    assert np.array_equal(kept.generate(GenerationRequest(seed=1, **SMALL)).frames, a)
    assert kept.text_encoder is not None


@pytest.mark.parametrize("sampler, graph_after", [("rcm", False), ("euler", True)])
def test_for_one_request_frees_the_encoder_and_skips_the_graph_for_few_steps(sampler, graph_after):
    pipe = fake_pipeline(sampler=sampler, settings={"cuda_graph": True})
    pipe.dit.graph = True  # as GraphedDiT: capture on the second call of a shape
    pipe.text_encoder.graphs = True  # as a resident umT5 on a GPU
    pipe.for_one_request()
    assert pipe.release_text_encoder and pipe.text_encoder.graphs is False  # one prompt: no capture
    assert pipe.dit.graph is graph_after and pipe.settings["cuda_graph"] is graph_after


def test_text_encoder_graphs_only_where_it_stays_on_a_gpu():
    from turbovid.models.t5 import build_text_encoder

    for kw in ({}, {"text_encoder_cpu": True}, {"offload": True}):
        te = build_text_encoder("tiny-random", None, seed=0)
        te.graphs = True
        Pipeline(torch.nn.Identity(), te, torch.nn.Identity(), device="cpu", **kw)
        assert te.graphs is False, kw  # the CPU here; on a GPU only without these options


def test_cli_sets_the_pipeline_up_for_one_request(monkeypatch, tmp_path):
    from turbovid import cli

    calls = []
    real = Pipeline.for_one_request
    monkeypatch.setattr(Pipeline, "for_one_request", lambda self: (calls.append(self), real(self))[1])
    monkeypatch.setattr(Pipeline, "from_options", classmethod(lambda cls, *a, **kw: fake_pipeline()))
    assert cli.main(["generate", "--prompt", "a fox", "--output", str(tmp_path / "a.mp4"), "--quiet",
                     "--num_frames", "5", "--resolution", "480p"]) == 0
    assert len(calls) == 1 and calls[0].text_encoder is None


def test_offload_moves_models_only_while_used():
    enc = FakeTextEncoder()
    pipe = Pipeline(FakeDiT(), enc, FakeVAE(), offload=True)
    pipe.device = torch.device("meta")  # pretend the accelerator is elsewhere; record where models go
    enc.devices.clear()
    with pipe._on_device(enc):
        assert enc.devices == ["meta"]
    assert enc.devices == ["meta", "cpu"]
    pipe.offload = False
    enc.devices.clear()
    with pipe._on_device(enc):
        pass
    assert enc.devices == []


@pytest.mark.parametrize("offload", [False, True])
def test_text_encoder_cpu_keeps_the_encoder_on_the_cpu_and_encodes_there(offload):
    enc = FakeTextEncoder()
    pipe = Pipeline(FakeDiT(), enc, FakeVAE(), device="meta", offload=offload, text_encoder_cpu=True)
    assert enc.devices == ["cpu"] and pipe.settings["text_encoder_cpu"] is True
    dit_devices = {p.device.type for p in pipe.dit.parameters()}
    assert dit_devices == {"cpu" if offload else "meta"}  # the others go where they would anyway
    with pipe._on_device(enc, stays=pipe.text_encoder_cpu):
        pass
    assert enc.devices == ["cpu"]  # not moved to the GPU for encoding, even with --offload
    # the context it encodes on the CPU reaches the DiT on the pipeline's device
    cpu_pipe = fake_pipeline(text_encoder_cpu=True)
    cpu_pipe.generate(GenerationRequest(seed=1, **SMALL))
    assert cpu_pipe.text_encoder.prompts and cpu_pipe.dit.calls


def test_text_encoder_cpu_from_options_and_cli(monkeypatch, tmp_path):
    pipe = Pipeline.from_options(PipelineOptions(model="tiny-random", device="cpu", text_encoder_cpu=True))
    assert pipe.text_encoder_cpu and pipe.text_encoder.device.type == "cpu"
    from turbovid import cli

    seen = []
    monkeypatch.setattr(Pipeline, "from_options", classmethod(lambda cls, opts, **kw: seen.append(opts) or fake_pipeline()))
    assert cli.main(["generate", "--text-encoder-cpu", "--quiet", "--output", str(tmp_path / "a.mp4"),
                     "--num_frames", "5"]) == 0
    assert seen[0].text_encoder_cpu is True
    assert Pipeline._prewarm_tasks(seen[0], torch.device("cuda"), torch.bfloat16) == []  # no GPU kernels to warm


def test_cuda_oom_becomes_a_one_line_suggestion():
    pipe = fake_pipeline()

    def boom(*a, **kw):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20 GiB")

    pipe.dit.forward = boom
    with pytest.raises(OutOfMemory, match="during sampling.*--offload.*--quant int8") as info:
        pipe.generate(GenerationRequest(**SMALL))
    assert isinstance(info.value, torch.cuda.OutOfMemoryError)  # callers catching CUDA OOM still do
    assert "\n" not in str(info.value)


def test_metadata_sidecar_fields():
    pipe = fake_pipeline()
    res = pipe.generate(GenerationRequest(prompt="a fox", seed=9, **SMALL))
    meta = res.metadata(0, "v.mp4", {"load": 1.5})
    assert meta["prompt"] == "a fox" and meta["seed"] == 9 and meta["video"] == "v.mp4"
    assert meta["settings"]["num_frames"] == 5 and meta["settings"]["width"] == 128 and meta["settings"]["fps"] == 16
    assert meta["timings"]["load"] == 1.5 and len(meta["timings"]["steps"]) == 4
    assert meta["version"] and "noise" in meta["note"]


@pytest.fixture(scope="module")
def tiny():
    return Pipeline.from_options(PipelineOptions(model="tiny-random", device="cpu"))


def test_tiny_random_pipeline_end_to_end(tiny):
    req = GenerationRequest(prompt="a red fox", num_frames=1, resolution="128p", aspect_ratio="1:1", num_steps=2)
    a = tiny.generate(req)
    assert a.frames.shape == (1, 128, 128, 3) and a.frames.dtype == np.uint8
    assert a.frames.std() > 0  # random weights still move the pixels
    b = tiny.generate(req)
    c = tiny.generate(dataclasses.replace(req, seed=43))
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)
    assert tiny.settings["model"] == "tiny-random" and tiny.settings["attention"] in ("dense", "sla", "sagesla")


def test_dit_gets_the_prompt_rows_unpadded(tiny):
    """The context reaches the DiT trimmed to the prompt's umT5 rows (the DiT pads it itself, and a
    short context takes the tail cross-attention), with the same video as a padded one would give."""
    seen = []
    hook = tiny.dit.register_forward_pre_hook(lambda m, args: seen.append(args[2].clone()))
    try:
        req = GenerationRequest(prompt="a red fox", num_frames=1, resolution="128p", aspect_ratio="1:1", num_steps=1)
        tiny.generate(req)
    finally:
        hook.remove()
    _, mask = tiny.text_encoder.tokenizer(["a red fox"])
    rows = int(mask.sum())
    assert seen[0].shape[1] == rows < tiny.text_encoder.text_len
    assert seen[0].ne(0).any(-1).all()  # no padding rows left
    padded = tiny.text_encoder.encode(["a red fox"])
    torch.testing.assert_close(seen[0], padded[:, :rows].to(seen[0].dtype))


def test_frames_reach_the_sink_while_decoding(tiny, monkeypatch):
    # the real VAE hands frames over chunk by chunk (one latent frame a chunk, as on a GPU at 480p);
    # the result still holds every frame
    from turbovid.models import vae_fast

    real_plan = vae_fast.plan_decode
    monkeypatch.setattr(vae_fast, "plan_decode", lambda *a, **kw: dataclasses.replace(real_plan(*a, **kw), chunk=1))
    got, events = [], []
    req = GenerationRequest(prompt="a red fox", num_frames=9, resolution="128p", aspect_ratio="1:1", num_steps=1)
    res = tiny.generate(req, progress=lambda *e: events.append(e),
                        on_frames=lambda i, frames, wait: (wait(), got.append((i, frames.copy()))))
    assert [len(f) for _, f in got] == [1, 4, 4] and {i for i, _ in got} == {0}
    assert [e for e in events if e[0] == "decode"] == [("decode", n, 9) for n in (0, 1, 5, 9)]  # frames decoded
    assert np.array_equal(np.concatenate([f for _, f in got]), res.frames)
    assert np.array_equal(tiny.generate(req).frames, res.frames)  # the sink changes nothing
    # a VAE without on_frames: each sample's whole video, once decoded
    pipe, got = fake_pipeline(), []
    two = pipe.generate(GenerationRequest(num_samples=2, **SMALL), on_frames=lambda i, frames, wait: got.append((i, frames)))
    assert [i for i, _ in got] == [0, 1] and all(np.array_equal(f, v) for (_, f), v in zip(got, two.videos))


def test_generate_into_writes_each_sample_and_cleans_up_on_errors(tmp_path):
    from turbovid.io import read_video

    pipe = fake_pipeline()
    req = GenerationRequest(num_samples=2, **SMALL)
    paths = [tmp_path / "a.mp4", tmp_path / "b.webm"]
    result, writers = pipe.generate_into(req, paths)
    assert not any(p.exists() for p in paths)  # the files appear when the writers close
    for w in writers:
        w.close()
    for p, frames in zip(paths, result.videos):
        back, _ = read_video(p)
        assert back.shape == frames.shape and np.abs(back.astype(int) - frames).mean() < 5  # lossy codecs: ~3 here
    with pytest.raises(ValueError, match="1 output paths for 2 samples"):
        pipe.generate_into(req, paths[:1])

    def boom(*a, **kw):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    pipe.vae.decode = boom
    with pytest.raises(OutOfMemory):
        pipe.generate_into(req, [tmp_path / "c.mp4", tmp_path / "d.mp4"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.webm"]  # no temp files left


def test_quant_fp8_swaps_block_linears_and_generates(monkeypatch):
    """--quant fp8 quantizes every block linear but SLA's proj_l to fp8 after loading (here on the
    CPU reference path: the GPU check is bypassed) and records it in the settings."""
    from turbovid import pipeline as pl
    from turbovid.ops.quant import Fp8Linear

    monkeypatch.setattr(pl, "_fp8_unavailable", lambda device: None)
    pipe = Pipeline.from_options(PipelineOptions(model="tiny-random", device="cpu", quant="fp8"))
    block = pipe.dit.blocks[0]
    assert isinstance(block.self_attn.q, Fp8Linear) and isinstance(block.ffn[0], Fp8Linear)
    assert not isinstance(block.self_attn.proj_l, Fp8Linear)
    assert pipe.settings["quant"] == "fp8"
    req = GenerationRequest(prompt="a red fox", num_frames=1, resolution="128p", aspect_ratio="1:1", num_steps=1)
    frames = pipe.generate(req).frames
    assert frames.shape == (1, 128, 128, 3) and frames.std() > 0
