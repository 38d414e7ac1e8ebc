"""A FIFO of video jobs run one at a time by a worker thread (one GPU, one model: no parallel runs).

Each video is encoded while the VAE decodes it (io.VideoWriter's thread; PyAV releases the GIL
while it encodes), and a second thread finishes the files, so the GPU starts the next job while
the CPU encodes the end of the last one (a whole 480p .mp4 took 0.6 s on 16 cores, a third of a
1.3B generation on an H100). At most `write_backlog` finished videos wait for that thread; past
that the worker waits too, which bounds the host memory they hold."""
from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from turbovid.io import write_json
from turbovid.options import GenerationRequest

log = logging.getLogger("turbovid.server")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = (SUCCEEDED, FAILED, CANCELLED)


class QueueFull(Exception):
    pass


@dataclass
class Job:
    id: str
    request: GenerationRequest
    status: str = QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    stage: str | None = None
    progress: float = 0.0  # 0..1 over the whole job
    error: str | None = None
    files: list[Path] = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "object": "video",
            "status": self.status,
            "progress": round(self.progress, 3),
            "stage": self.stage,
            "error": self.error,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "request": self.request.to_dict(),
            "num_videos": len(self.files),
            "content_url": f"/v1/videos/{self.id}/content" if self.status == SUCCEEDED else None,
            "timings": self.timings,
        }


# Share of the job's time each stage takes, for a progress figure that moves smoothly enough.
_STAGE_SPAN = {"encode": (0.0, 0.1), "sample": (0.1, 0.8), "decode": (0.8, 0.95), "write": (0.95, 1.0)}


class JobQueue:
    def __init__(self, pipeline, output_dir: str | Path, max_queue: int = 16, keep: int = 100, write_backlog: int = 2):
        self.pipeline = pipeline
        self.output_dir = Path(output_dir)
        self.max_queue, self.keep = max_queue, keep
        self.jobs: dict[str, Job] = {}
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._writes: queue.Queue = queue.Queue(maxsize=write_backlog)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="turbovid-worker", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name="turbovid-writer", daemon=True)
        self._thread.start()
        self._writer.start()

    # -- called from request handlers

    def submit(self, request: GenerationRequest) -> Job:
        with self._lock:
            waiting = sum(j.status == QUEUED for j in self.jobs.values())
            if waiting >= self.max_queue:
                raise QueueFull(f"{waiting} jobs are waiting; try again later")
            job = Job(id=f"video_{secrets.token_hex(8)}", request=request)
            self.jobs[job.id] = job
            self._prune()
        self._queue.put(job)
        return job

    def cancel(self, job: Job) -> None:
        with self._lock:
            if job.status == QUEUED:
                job.status, job.finished = CANCELLED, time.time()

    def delete(self, job: Job) -> None:
        with self._lock:
            self.jobs.pop(job.id, None)
        for f in job.files:
            f.unlink(missing_ok=True)
            f.with_suffix(".json").unlink(missing_ok=True)

    def stop(self) -> None:
        self._queue.put(None)

    # -- the worker

    def _prune(self) -> None:
        done = [j for j in self.jobs.values() if j.status in FINISHED]
        for job in sorted(done, key=lambda j: j.created)[: max(0, len(done) - self.keep)]:
            self.jobs.pop(job.id, None)
            for f in job.files:
                f.unlink(missing_ok=True)
                f.with_suffix(".json").unlink(missing_ok=True)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                self._writes.put(None)  # the writer finishes what is queued, then stops
                return
            with self._lock:
                if job.status != QUEUED:  # cancelled while waiting
                    continue
                job.status, job.started = RUNNING, time.time()
            try:
                result, writers = self._generate(job)
            except ValueError as e:  # UsageError / OutOfMemory / CheckpointError: the user's to fix
                self._finish(job, FAILED, str(e))
                continue
            except Exception as e:  # a bug: keep serving, log the traceback
                log.exception("job %s failed", job.id)
                self._finish(job, FAILED, f"internal error: {type(e).__name__}: {e}")
                continue
            job.stage, job.progress = "write", _STAGE_SPAN["write"][0]
            self._writes.put((job, result, writers))  # waits while write_backlog videos are waiting

    def _write_loop(self) -> None:
        while True:
            item = self._writes.get()
            if item is None:
                return
            job, result, writers = item
            try:
                self._write(job, result, writers)
            except Exception as e:  # disk full, unwritable folder, codec failure
                log.exception("job %s: writing the video failed", job.id)
                self._finish(job, FAILED, f"writing the video failed: {type(e).__name__}: {e}")
                continue
            self._finish(job, SUCCEEDED)

    @staticmethod
    def _finish(job: Job, status: str, error: str | None = None) -> None:
        job.status, job.error = status, error
        job.finished = time.time()
        job.stage = None

    def _generate(self, job: Job) -> tuple:
        """Run the job, its videos encoding as they are decoded: (result, one VideoWriter per video)."""
        def progress(stage: str, done: int, total: int) -> None:
            lo, hi = _STAGE_SPAN.get(stage, (0.0, 0.0))
            job.stage = stage
            job.progress = lo + (hi - lo) * (done / max(total, 1))

        n = self.pipeline.resolve(job.request).num_samples
        paths = [self.output_dir / (f"{job.id}.mp4" if n == 1 else f"{job.id}_{i}.mp4") for i in range(n)]
        return self.pipeline.generate_into(job.request, paths, progress=progress)

    def _write(self, job: Job, result, writers: list) -> None:
        """Finish each file (the encoding left after the decode) and its JSON sidecar."""
        files = []
        try:
            for i, writer in enumerate(writers):
                path = writer.close()
                write_json(result.metadata(i, path.name), path.with_suffix(".json"))
                files.append(path)
        except BaseException:
            for w in writers:
                w.abort()  # a no-op for those already closed
            for f in files:
                f.unlink(missing_ok=True)
                f.with_suffix(".json").unlink(missing_ok=True)
            raise
        job.files, job.timings, job.progress = files, result.timings, 1.0
