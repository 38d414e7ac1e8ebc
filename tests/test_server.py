import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient

from pipeline_fakes import fake_pipeline
from turbovid.io import read_video
from turbovid.server import create_app

SMALL = {"resolution": "128p", "aspect_ratio": "1:1", "num_frames": 5}


def wait(client, job_id, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        job = client.get(f"/v1/videos/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.fixture
def client(tmp_path):
    app = create_app(fake_pipeline(), output_dir=tmp_path / "out", max_queue=2)
    with TestClient(app) as c:
        yield c


def test_submit_poll_download(client, tmp_path):
    r = client.post("/v1/videos", json={"prompt": "a fox", "seed": 5, **SMALL})
    assert r.status_code == 202
    job = r.json()
    assert job["status"] in ("queued", "running") and r.headers["location"] == f"/v1/videos/{job['id']}"
    assert job["request"]["num_steps"] == 4  # defaults filled in at submission
    done = wait(client, job["id"])
    assert done["status"] == "succeeded" and done["progress"] == 1.0
    assert done["content_url"] == f"/v1/videos/{job['id']}/content"
    assert len(done["timings"]["steps"]) == 4

    r = client.get(done["content_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    path = tmp_path / "got.mp4"
    path.write_bytes(r.content)
    frames, fps = read_video(path)
    assert frames.shape == (5, 128, 128, 3) and fps == 16

    listed = client.get("/v1/videos").json()["data"]
    assert [j["id"] for j in listed] == [job["id"]]
    assert client.delete(f"/v1/videos/{job['id']}").status_code == 204
    assert client.get(f"/v1/videos/{job['id']}").status_code == 404
    assert not list((tmp_path / "out").glob("*.mp4"))


def test_same_seed_same_video(client):
    ids = [client.post("/v1/videos", json={"seed": s, **SMALL}).json()["id"] for s in (1, 1, 2)]
    videos = []
    for i in ids:
        wait(client, i)
        videos.append(client.get(f"/v1/videos/{i}/content").content)
    assert videos[0] == videos[1] and videos[0] != videos[2]


@pytest.mark.parametrize("body,status,message", [
    ({"prompt": ""}, 422, "prompt is empty"),
    ({"num_frames": 80}, 422, "4n+1"),
    ({"num_steps": 9}, 422, "between 1 and 4"),
    ({"resolution": "1080p"}, 422, "unknown --resolution"),
    ({"aspect_ratio": "2:1"}, 422, "unknown --aspect_ratio"),
    ({"num_frames": "81"}, 422, "must be of type int"),
    ({"seed": True}, 422, "must be of type int"),
    ({"prompt": None}, 422, "must not be null"),
    ({"output": "/etc/passwd"}, 422, "unknown field 'output'"),
    ({"prompt": "x" * 5000}, 422, "prompt over"),
])
def test_bad_requests_are_4xx(client, body, status, message):
    r = client.post("/v1/videos", json=body)
    assert r.status_code == status
    assert message in r.json()["detail"]
    assert client.get("/v1/videos").json()["data"] == []


def test_malformed_json_and_unknown_ids(client):
    r = client.post("/v1/videos", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert client.post("/v1/videos", json=[1, 2]).status_code == 422
    assert client.get("/v1/videos/video_nope").status_code == 404
    assert client.get("/v1/videos/video_nope/content").status_code == 404
    assert client.delete("/v1/videos/video_nope").status_code == 404


def test_content_before_done_queue_full_and_cancel(tmp_path):
    pipe = fake_pipeline()
    gate = threading.Event()
    real = pipe.generate

    def slow(*a, **kw):
        gate.wait(30)
        return real(*a, **kw)

    pipe.generate = slow
    with TestClient(create_app(pipe, output_dir=tmp_path, max_queue=2)) as client:
        first = client.post("/v1/videos", json=SMALL).json()["id"]
        end = time.time() + 10
        while client.get(f"/v1/videos/{first}").json()["status"] != "running" and time.time() < end:
            time.sleep(0.01)
        r = client.get(f"/v1/videos/{first}/content")
        assert r.status_code == 409 and "running" in r.json()["detail"]
        assert client.delete(f"/v1/videos/{first}").status_code == 409  # running: cannot stop
        queued = [client.post("/v1/videos", json=SMALL).json()["id"] for _ in range(2)]
        r = client.post("/v1/videos", json=SMALL)
        assert r.status_code == 503 and r.headers["retry-after"]
        assert client.delete(f"/v1/videos/{queued[0]}").status_code == 204
        assert client.get(f"/v1/videos/{queued[0]}").json()["status"] == "cancelled"
        gate.set()
        assert wait(client, first)["status"] == "succeeded"
        assert wait(client, queued[1])["status"] == "succeeded"
        assert client.get(f"/v1/videos/{queued[0]}/content").status_code == 409


def test_failed_job_reports_the_error(tmp_path):
    pipe = fake_pipeline()

    def boom(*a, **kw):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    pipe.dit.forward = boom
    with TestClient(create_app(pipe, output_dir=tmp_path)) as client:
        job = client.post("/v1/videos", json=SMALL).json()
        done = wait(client, job["id"])
        assert done["status"] == "failed" and "--offload" in done["error"]
        r = client.get(f"/v1/videos/{job['id']}/content")
        assert r.status_code == 409 and "failed" in r.json()["detail"]
        # the worker survives a failure
        pipe.dit.forward = type(pipe.dit).forward.__get__(pipe.dit)
        assert wait(client, client.post("/v1/videos", json=SMALL).json()["id"])["status"] == "succeeded"


def _blocked_writes(monkeypatch):
    """VideoWriter whose close() waits for `release`; `writing` is set once a close has started."""
    from turbovid import pipeline as pipeline_module

    writing, release = threading.Event(), threading.Event()

    class Blocked(pipeline_module.VideoWriter):
        def close(self):
            writing.set()
            release.wait(30)
            return super().close()

    monkeypatch.setattr(pipeline_module, "VideoWriter", Blocked)
    return writing, release


def _wait_for(condition, timeout=10):
    end = time.time() + timeout
    while not condition() and time.time() < end:
        time.sleep(0.01)
    return condition()


def test_next_job_runs_while_the_last_video_is_written(tmp_path, monkeypatch):
    from turbovid.server.jobs import JobQueue
    from turbovid.options import GenerationRequest

    writing, release = _blocked_writes(monkeypatch)
    pipe = fake_pipeline()
    calls, real = [], pipe.generate
    pipe.generate = lambda *a, **kw: (calls.append(1), real(*a, **kw))[1]
    jobs = JobQueue(pipe, tmp_path, write_backlog=1)
    try:
        req = GenerationRequest(prompt="x", resolution="128p", aspect_ratio="1:1", num_frames=5)
        first, second, third, fourth = (jobs.submit(req) for _ in range(4))
        assert writing.wait(10)
        # the first video is being written; the GPU worker went on to the second and third job
        # (the third waits as the one backlogged video), not to the fourth
        assert _wait_for(lambda: len(calls) == 3)
        time.sleep(0.3)
        assert len(calls) == 3 and first.status == "running" and first.stage == "write"
        assert second.stage == "write" and second.progress == 0.95 and fourth.status == "queued"
        release.set()
        assert _wait_for(lambda: all(j.status == "succeeded" for j in (first, second, third, fourth)))
        assert len(calls) == 4 and all(j.progress == 1.0 and j.files[0].exists() for j in (first, fourth))
    finally:
        release.set()
        jobs.stop()


def test_failed_write_fails_the_job_and_the_writer_goes_on(tmp_path, monkeypatch):
    from turbovid import pipeline as pipeline_module

    fail = {"next": True}

    class Flaky(pipeline_module.VideoWriter):
        def close(self):
            if fail.pop("next", False):
                self.abort()
                raise OSError(28, "No space left on device")
            return super().close()

    monkeypatch.setattr(pipeline_module, "VideoWriter", Flaky)
    with TestClient(create_app(fake_pipeline(), output_dir=tmp_path)) as client:
        bad = wait(client, client.post("/v1/videos", json=SMALL).json()["id"])
        assert bad["status"] == "failed" and "No space left on device" in bad["error"]
        assert wait(client, client.post("/v1/videos", json=SMALL).json()["id"])["status"] == "succeeded"
    assert not list(tmp_path.glob(".*.part"))  # the failed video left no temp file


def test_web_page_options_and_health(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "/v1/videos" in r.text and "<form" in r.text
    opts = client.get("/v1/options").json()
    assert opts["defaults"]["resolution"] == "128p" and opts["defaults"]["num_steps"] == 4
    assert "480p" in opts["resolutions"] and opts["model"] == "tiny-random"
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["settings"]["sampler"] == "rcm"


def test_real_tiny_pipeline_job(tmp_path):
    from turbovid.options import PipelineOptions
    from turbovid.pipeline import Pipeline

    pipe = Pipeline.from_options(PipelineOptions(model="tiny-random", device="cpu", attention="dense"))
    with TestClient(create_app(pipe, output_dir=tmp_path)) as client:
        job = client.post("/v1/videos", json={"prompt": "a fox", "num_frames": 1, "num_steps": 1}).json()
        assert wait(client, job["id"], timeout=120)["status"] == "succeeded"
        (tmp_path / "got.mp4").write_bytes(client.get(f"/v1/videos/{job['id']}/content").content)
        assert read_video(tmp_path / "got.mp4")[0].shape == (1, 128, 224, 3)


def test_serve_defaults_to_localhost():
    from turbovid.cli import build_parser

    args = build_parser().parse_args(["serve", "--model", "tiny-random"])
    assert args.host == "127.0.0.1" and args.port == 8000


def _serve_calls(monkeypatch, pipe, argv):
    """Run `turbovid serve argv` with `pipe` as the loaded pipeline and uvicorn stubbed out: the order of
    generations (by resolution) and the start of serving (by port)."""
    import uvicorn

    from turbovid import cli
    from turbovid.pipeline import Pipeline

    calls = []
    real = pipe.generate

    def generate(request=None, *a, **kw):
        calls.append(("generate", request.resolution))
        return real(request, *a, **kw)

    monkeypatch.setattr(Pipeline, "from_options", classmethod(lambda cls, *a, **k: pipe))
    monkeypatch.setattr(pipe, "generate", generate)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(("serve", kw["port"])))
    assert cli.main(["serve", "--model", "tiny-random", *argv]) == 0
    return calls


def test_serve_warms_up_before_listening(monkeypatch):
    # the first request should not pay for kernel compiles, tuning and graph capture
    assert _serve_calls(monkeypatch, fake_pipeline(), ["--port", "8123"]) == [("generate", "480p"), ("serve", 8123)]
    assert _serve_calls(monkeypatch, fake_pipeline(), ["--resolution", "720p"])[0] == ("generate", "720p")
    assert _serve_calls(monkeypatch, fake_pipeline(), ["--no-warmup"]) == [("serve", 8000)]


def test_serve_still_starts_when_the_warm_up_runs_out_of_memory(monkeypatch, caplog):
    from turbovid.pipeline import OutOfMemory

    def oom(*a, **kw):
        raise OutOfMemory("CUDA out of memory during sampling (832x480, 81 frames); use --offload")
    pipe = fake_pipeline()
    monkeypatch.setattr(pipe, "generate", oom)
    with caplog.at_level("WARNING", logger="turbovid"):
        assert _serve_calls(monkeypatch, pipe, []) == [("generate", "480p"), ("serve", 8000)]
    assert "warm-up skipped: CUDA out of memory" in caplog.text
