"""Stage and step times of one generation, without making the host wait for the device between
stages: each wait lets the GPU run dry while the host queues the next work (on an H100, 22 ms of
idle GPU in a 1.2 s 480p generation, most of it at the syncs between the stages and the sampling
steps; benchmarks/profile_pipeline.py).

On CUDA a mark is an event recorded on the current stream, read once the device has passed it;
elsewhere the work is done when the host gets to the mark, and the host clock is read there.
"""
from __future__ import annotations

import time

import torch


class StageClock:
    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.start = time.perf_counter()
        self._marks: dict[str, object] = {}
        self.mark("start")

    def mark(self, name: str) -> None:
        """The point the device reaches once all the work queued so far is done."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks[name] = event
        else:
            self._marks[name] = time.perf_counter()

    def wait(self, name: str) -> None:
        """Block the host until the device has passed mark `name` (the work queued after it goes on)."""
        if self.cuda:
            self._marks[name].synchronize()

    def seconds(self, first: str, last: str) -> float:
        """Seconds from mark `first` to mark `last`; the device must have passed `last`."""
        a, b = self._marks[first], self._marks[last]
        return a.elapsed_time(b) / 1e3 if self.cuda else b - a
