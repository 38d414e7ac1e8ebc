"""`turbovid bench` plumbing on the CPU: the tiny model end to end produces a well-formed JSON and tables."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from turbovid.bench import BenchOptions, main, run
from turbovid.bench.cases import latent_shape, tokens_of
from turbovid.bench.report import README_MARKERS, derived, summary_markdown, update_docs
from turbovid.bench.timing import forward_flops, interleaved_ms
from turbovid.configs import DIT_PRESETS


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    docs = out / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Attention\n\nkept: written by the attention engineer\n")
    readme = out / "README.md"
    readme.write_text(f"# x\n\n{README_MARKERS[0]}\nold table\n{README_MARKERS[1]}\n\nafter\n")
    rc = main([
        "--models", "tiny-random", "--resolutions", "256p", "--frames", "1", "--variants", "dense,sagesla+int8",
        "--repeats", "1", "--warmup", "0", "--out", str(out), "--name", "tiny.json", "--commit", "abc123",
        "--docs", str(docs), "--readme", str(readme), "--skip-cases", "tiny-random/256p/sagesla+int8",
    ])
    assert rc == 0
    return json.loads((out / "tiny.json").read_text()), docs, readme


def test_json_has_environment_and_every_requested_case(tiny_run):
    result, _, _ = tiny_run
    env = result["env"]
    for key in ("card", "driver", "torch", "triton", "commit", "command", "date"):
        assert key in env
    assert env["commit"] == "abc123" and "--models tiny-random" in env["command"]
    dit = [c for c in result["cases"] if c["what"] == "dit_forward"]
    assert {(c["variant"], c["path"]) for c in dit} == {(v, p) for v in ("dense", "sagesla+int8") for p in ("fast", "plain")}
    for c in dit:
        assert c["status"] in ("ok", "skipped")
        if c["status"] == "skipped":
            assert c["reason"]
    assert all("--skip-cases" in c["reason"] for c in dit if c["variant"] == "sagesla+int8")
    dense = [c for c in dit if c["variant"] == "dense"]
    assert all(c["status"] == "ok" and c["finite"] and c["ms"] > 0 and c["repeats"] == 1 for c in dense)
    assert dense[0]["tokens"] == tokens_of(DIT_PRESETS["tiny-random"], latent_shape("256p", 1))


def test_json_has_baseline_pipeline_and_derived_figures(tiny_run):
    result, _, _ = tiny_run
    base = [c for c in result["cases"] if c["what"] == "diffusers_forward"]
    assert len(base) == 1 and base[0]["status"] == "ok" and base[0]["ms"] > 0  # diffusers is in the test extras
    pipe = [c for c in result["cases"] if c["what"] == "pipeline"]
    assert len(pipe) == 1 and pipe[0]["status"] == "ok"
    p = pipe[0]
    assert p["total_s"] >= p["text_encoding_s"] + p["sampling_s"] + p["vae_decode_s"] - 1e-3
    assert p["mp4_encode_s"] > 0 and p["cpu_count"] >= 1  # the .mp4 write of one video, timed apart
    # prompt to .mp4 file with the encode during the decode: a whole generation, then the file (the
    # stages of that same run: the medians above come from other runs)
    assert p["to_file_s"] >= p["text_sampling_streamed_s"] + p["vae_decode_streamed_s"] - 1e-3
    # every streamed run's VAE stage, the median among them; the collector's time in both sets of runs
    assert len(p["vae_decode_streamed_all_s"]) == p["repeats"]
    assert p["vae_decode_streamed_s"] in p["vae_decode_streamed_all_s"]
    assert p["gc_s"] >= 0 and p["gc_streamed_s"] >= 0
    assert len(p["step_s"]) == 4
    rec = result["derived"]["recipe"][0]
    assert rec["original_recipe_s"] == pytest.approx(100 * base[0]["ms"] / 1e3)
    assert rec["speedup"] == pytest.approx(rec["original_recipe_s"] / p["sampling_s"])


def test_docs_and_readme_blocks_are_regenerated_and_the_rest_kept(tiny_run):
    result, docs, readme = tiny_run
    text = docs.read_text()
    assert "kept: written by the attention engineer" in text
    assert "<!-- bench:summary:start -->" in text and "<!-- bench:e2e:start -->" in text
    assert "| tiny-random | 256p |" in text
    assert ".mp4 encode after it (CPU) |" in text and " cores) |" in text  # the pipeline table's encode columns
    assert "| prompt to .mp4 file, encoded during the decode |" in text and "(VAE stage " in text
    r = readme.read_text()
    assert "old table" not in r and "after" in r and "| target | goal | measured | met |" in r
    assert result["docs_status"]["readme"] == "updated"


def test_readme_without_markers_is_left_alone(tmp_path, tiny_run):
    result, _, _ = tiny_run
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    status = update_docs(result, tmp_path / "b.md", readme)
    assert readme.read_text() == "# no markers\n" and "not changed" in status["readme"]


def test_targets_are_judged_from_the_right_rows():
    def fwd(model, res, variant, ms):
        return {"what": "dit_forward", "status": "ok", "model": model, "resolution": res, "variant": variant,
                "path": "fast", "ms": ms, "tokens": 1}
    result = {"env": {"date": "2026-11-26", "card": "H100"}, "options": {"steps": 4}, "cases": [
        fwd("Wan2.1-1.3B", "480p", "sagesla+int8", 100.0), fwd("Wan2.1-1.3B", "480p", "sagesla+fp8", 90.0),
        {"what": "diffusers_forward", "status": "ok", "model": "Wan2.1-1.3B", "resolution": "480p", "ms": 600.0},
        fwd("Wan2.1-14B", "480p", "sagesla+int8", 1200.0),
    ]}
    d = derived(result)
    assert d["targets"]["forward_480p"] == pytest.approx(0.100)  # the sagesla+int8 row, not the faster fp8 one
    assert d["targets"]["sampling_480p"] == pytest.approx(0.36)  # 4 x the fastest forward (no pipeline row)
    assert d["targets"]["speedup_480p"] == pytest.approx(60.0 / 0.36)
    assert d["targets"]["sampling_14b_480p"] == pytest.approx(4.8)
    md = summary_markdown(result)
    assert "| DiT forward, 1.3B 480p, sagesla+int8 | <= 0.11 s | 0.100 s | yes |" in md
    assert "| 4-step sampling, 14B 480p | <= 4 s | 4.800 s | no |" in md


def test_flop_model_matches_the_issue_figures():
    f = forward_flops(DIT_PRESETS["Wan2.1-1.3B"], 32760, 0.1)
    assert 81 < f["linear_tflop"] < 84  # "about 82 TFLOP of linear layers"
    assert 19 < f["self_attention_tflop"] < 21  # "~20 TFLOP of 10%-sparse attention"
    assert f["cross_attention_tflop"] == pytest.approx(4 * 32760 * 512 * 1536 * 30 / 1e12)


def test_bad_options_fail_with_one_line(capsys):
    assert main(["--models", "Wan9"]) == 2
    assert "unknown model" in capsys.readouterr().err
    with pytest.raises(ValueError, match="4n\\+1"):
        run(BenchOptions(models=["tiny-random"], frames=4))


def test_turbovid_cli_hands_bench_to_the_harness(capsys):
    from turbovid.cli import main as cli_main

    assert cli_main(["bench", "--models", "Wan9"]) == 2
    assert "turbovid bench: error: unknown model" in capsys.readouterr().err


def test_summary_leaves_out_combinations_with_nothing_measured():
    result = {"env": {"date": "2026-11-26", "card": "H100"}, "options": {"steps": 4}, "cases": [
        {"what": "dit_forward", "status": "ok", "model": "Wan2.1-14B", "resolution": "480p", "variant": "sla",
         "path": "fast", "ms": 1500.0, "tokens": 1},
        {"what": "dit_forward", "status": "skipped", "reason": "x", "model": "Wan2.1-14B", "resolution": "720p",
         "variant": "sla", "path": "fast"},
    ]}
    md = summary_markdown(result)
    assert "| Wan2.1-14B | 480p | sla | 1500 ms | 6.00 s | — | — | — |" in md
    assert "| Wan2.1-14B | 720p |" not in md


def test_mp4_timing_is_skipped_without_pyav(monkeypatch):
    # the GPU machine may lack PyAV: the pipeline row keeps its figures, the encode is left out
    import importlib.util

    import numpy as np

    from turbovid.bench import cases

    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    assert cases._mp4_seconds(frames) > 0
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "av" else real(name, *a))
    assert cases._mp4_seconds(frames) is None


def test_gc_pauses_counts_collections_in_the_block_only():
    import gc

    from turbovid.bench.cases import gc_pauses

    before = len(gc.callbacks)
    with gc_pauses() as seconds:
        junk = [[i] for i in range(200_000)]  # many containers: a full collection takes measurable time
        gc.collect()
        assert seconds[0] > 0
        del junk
    inside = seconds[0]
    gc.collect()  # after the block: not counted, and the callback is gone
    assert seconds[0] == inside and len(gc.callbacks) == before


def test_interleaved_timing_rotates_the_candidates_each_round():
    order = []
    fns = {name: (lambda name=name: name) for name in "abc"}

    def bench(fn):
        order.append(fn())
        return float(len(order))  # later calls "take longer", like a card that heats up

    times = interleaved_ms(fns, bench, rounds=3)
    assert order == list("abc" "bca" "cab")
    assert times == {"a": [1.0, 6.0, 8.0], "b": [2.0, 4.0, 9.0], "c": [3.0, 5.0, 7.0]}


def test_forward_cases_feed_a_prompt_of_prompt_rows():
    """The forward cases' context is PROMPT_ROWS random rows, unpadded as the pipeline passes them
    (so cross-attention takes the path real prompts take), and the row says how many."""
    import torch

    from turbovid.bench import cases

    dit = cases.build_dit("tiny-random", torch.device("cpu"), torch.float32)
    seen = []

    def runner(latents, t, context):
        seen.append(context)
        return dit(latents, t, context)

    row = cases.dit_case(runner, dit, model="tiny-random", resolution="256p", frames=1, variant="dense", path="plain",
                         topk=0.1, device=torch.device("cpu"), dtype=torch.float32, warmup=0, repeats=1,
                         max_seconds=10.0, ceilings=None)
    assert row["status"] == "ok" and row["prompt_rows"] == cases.PROMPT_ROWS
    ctx = seen[0]
    assert ctx.shape[1] == cases.PROMPT_ROWS < DIT_PRESETS["tiny-random"].text_len
    assert ctx.ne(0).any(-1).all()
