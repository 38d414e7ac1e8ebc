"""HTTP API and web page over one loaded Pipeline.

    POST   /v1/videos               JSON GenerationRequest -> 202 {"id", "status", ...}
    GET    /v1/videos               recent jobs
    GET    /v1/videos/{id}          job status and progress
    GET    /v1/videos/{id}/content  the MP4 (?sample=i when num_samples > 1)
    DELETE /v1/videos/{id}          cancel a queued job / delete a finished one
    GET    /v1/options              defaults and choices (the web page builds its form from them)
    GET    /health                  model settings and queue length
    GET    /                        the web page
"""
from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from turbovid.options import ASPECT_RATIOS, RESOLUTIONS, GenerationRequest
from turbovid.server.jobs import FINISHED, QUEUED, SUCCEEDED, JobQueue, QueueFull

MAX_PROMPT_CHARS = 4000
MAX_BODY_BYTES = 64 * 1024


def create_app(pipeline, *, output_dir: str | Path = "outputs/server", max_queue: int = 16, keep: int = 100) -> FastAPI:
    """A FastAPI app serving `pipeline` (anything with `resolve`, `generate` and `settings`, e.g. a Pipeline)."""
    from turbovid import __version__

    jobs = JobQueue(pipeline, output_dir, max_queue=max_queue, keep=keep)
    app = FastAPI(title="turbovid", version=__version__)
    app.state.jobs = jobs
    app.router.on_shutdown.append(jobs.stop)

    def get_job(job_id: str):
        job = jobs.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return job

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(resources.files("turbovid.server").joinpath("static/index.html").read_text("utf-8"))

    @app.get("/health")
    def health() -> dict:
        waiting = sum(j.status == QUEUED for j in jobs.jobs.values())
        return {"status": "ok", "version": __version__, "settings": pipeline.settings, "queued": waiting}

    @app.get("/v1/options")
    def options() -> dict:
        defaults = pipeline.resolve(GenerationRequest())
        return {
            "defaults": dataclasses.asdict(defaults),
            "resolutions": {r: {a: list(s) for a, s in sizes.items()} for r, sizes in RESOLUTIONS.items()},
            "aspect_ratios": list(ASPECT_RATIOS),
            "sampler": pipeline.settings.get("sampler"),
            "model": pipeline.settings.get("model"),
        }

    @app.post("/v1/videos", status_code=202)
    async def submit(request: Request) -> JSONResponse:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, f"request body over {MAX_BODY_BYTES} bytes")
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            raise HTTPException(400, "body is not valid JSON") from None
        try:
            req = GenerationRequest.from_dict(data)
            if isinstance(req.prompt, str) and len(req.prompt) > MAX_PROMPT_CHARS:
                raise ValueError(f"prompt over {MAX_PROMPT_CHARS} characters; shorten it")
            req = pipeline.resolve(req)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        try:
            job = jobs.submit(req)
        except QueueFull as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "30"}) from None
        return JSONResponse(job.to_dict(), status_code=202, headers={"Location": f"/v1/videos/{job.id}"})

    @app.get("/v1/videos")
    def list_jobs() -> dict:
        recent = sorted(jobs.jobs.values(), key=lambda j: j.created, reverse=True)
        return {"object": "list", "data": [j.to_dict() for j in recent]}

    @app.get("/v1/videos/{job_id}")
    def status(job_id: str) -> dict:
        return get_job(job_id).to_dict()

    @app.get("/v1/videos/{job_id}/content")
    def content(job_id: str, sample: int = 0) -> FileResponse:
        job = get_job(job_id)
        if job.status != SUCCEEDED:
            why = f": {job.error}" if job.error else ""
            raise HTTPException(409, f"job {job_id} is {job.status}{why}")
        if not 0 <= sample < len(job.files):
            raise HTTPException(404, f"job {job_id} has {len(job.files)} video(s); sample={sample} does not exist")
        path = job.files[sample]
        if not path.is_file():
            raise HTTPException(410, f"the video of job {job_id} was deleted")
        return FileResponse(path, media_type="video/mp4", filename=path.name)

    @app.delete("/v1/videos/{job_id}", status_code=204)
    def delete(job_id: str) -> Response:
        job = get_job(job_id)
        if job.status == QUEUED:
            jobs.cancel(job)
        elif job.status in FINISHED:
            jobs.delete(job)
        else:
            raise HTTPException(409, f"job {job_id} is running and cannot be stopped")
        return Response(status_code=204)

    return app
