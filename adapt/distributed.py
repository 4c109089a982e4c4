"""One training job on several processes: data parallel, one process per GPU (or, for tests and
CPU machines, per CPU process with the gloo backend).

    train_adapter(cfg, dataset, "runs/x", gpus=2)     # adapt.pipeline; train --gpus 2

Every process builds the same model from the same seed and draws the same batch each step (the
trainer's generators depend only on seed and step); each computes the gradients of its share of
the batch (images rank, rank + N, ...), weighted by its share, and the gradients are summed over
the processes (torch.distributed.all_reduce) before every optimizer step, so the processes stay
identical and the update is the whole batch's, as with DistributedDataParallel. Rank 0 writes the
events, checkpoints and the adapter and scores the held-out split; a resume reads rank 0's
checkpoint in every process. Random draws inside the loss (a jittered box prompt, augmentation)
are taken per process, so a data-parallel run is the same as a single-process one exactly only
where the loss draws nothing (prompt-free, no augmentation): the test checks that case.

This module holds the processes (run_data_parallel), what a process asks about its place among
them (`ranks()`) and how a cancel reaches them (`stop_flag`); what each process runs is
adapt.pipeline's.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STOP_FLAG = "stop.flag"  # in the run folder: the ranks stop at their next step once it exists


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run, or a single process's (rank 0 of 1)."""

    rank: int = 0
    size: int = 1

    @property
    def lead(self) -> bool:
        """Rank 0 writes the events, checkpoints and adapter and evaluates."""
        return self.rank == 0

    @property
    def alone(self) -> bool:
        return self.size == 1

    def share(self, batch: list) -> list:
        """This process's images of the step's batch."""
        return batch[self.rank :: self.size]

    def sum(self, params, loss: torch.Tensor) -> None:
        """Sum every gradient (and the loss) over the ranks: each rank computed its share of the
        batch, weighted by its share, so the sum is the whole batch's gradient on every rank."""
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
        dist.all_reduce(loss)


def ranks() -> Ranks:
    """This process's place: in a process group (run_data_parallel), its rank; else alone."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, backend: str, fn, args, results) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        results[rank] = fn(rank, *args)
    finally:
        dist.destroy_process_group()


def run_data_parallel(world_size: int, fn, *args, backend: str | None = None) -> list:
    """Run fn(rank, *args) in `world_size` processes joined in one process group (nccl when there
    are that many GPUs, else gloo); returns each rank's result (what it returns must pickle)."""
    if world_size < 1:
        raise ValueError(f"the number of processes must be at least 1, not {world_size}")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world_size else "gloo"
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise ValueError(f"{world_size} GPUs asked for, {torch.cuda.device_count()} present")
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_entry, args=(world_size, _free_port(), backend, fn, args, results), nprocs=world_size, join=True)
        return [results.get(r) for r in range(world_size)]


@contextmanager
def stop_flag(folder: Path, should_stop: Callable[[], bool] | None) -> Iterator[str | None]:
    """The path of a flag file the ranks watch (None when nothing can stop the run): this
    process creates it once `should_stop()` says so, from a thread, because the ranks cannot call
    this process's function. The flag is removed before and after."""
    if should_stop is None:
        yield None
        return
    flag = Path(folder) / STOP_FLAG
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.unlink(missing_ok=True)
    done = threading.Event()

    def watch():
        while not done.wait(0.5):
            if should_stop():
                flag.touch()
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield str(flag)
    finally:
        done.set()
        watcher.join(timeout=5)
        flag.unlink(missing_ok=True)
