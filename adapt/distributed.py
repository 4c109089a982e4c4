"""One training job on several processes: data parallel, one process per GPU (or, for tests and
CPU machines, per CPU process with the gloo backend).

    summaries = run_data_parallel(2, train_job, cfg, "data/", "runs/x")   # train --gpus 2

Every process builds the same model from the same seed and draws the same batch each step (the
trainer's generators depend only on seed and step); each computes the gradients of its share of
the batch (images rank, rank + N, ...), weighted by its share, and the gradients are summed over
the processes (torch.distributed.all_reduce) before every optimizer step, so the processes stay
identical and the update is the whole batch's, as with DistributedDataParallel. Rank 0 writes the
events, checkpoints and the adapter and scores the held-out split; a resume reads rank 0's
checkpoint in every process. Random draws inside the loss (a jittered box prompt, augmentation)
are taken per process, so a data-parallel run is the same as a single-process one exactly only
where the loss draws nothing (prompt-free, no augmentation): the test checks that case.
"""

from __future__ import annotations

import os
import socket
from dataclasses import replace


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, backend: str, fn, args, results) -> None:
    import torch
    import torch.distributed as dist

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
    import torch
    import torch.multiprocessing as mp

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


def train_job(
    rank: int,
    cfg,
    data: str,
    out: str,
    holdout=None,
    task: str | None = None,
    threads: int = 1,
    resume: bool = False,
    stop_file: str | None = None,
    on_eval=None,
    source: str | None = None,
    max_pixels: int | None = None,
) -> dict:
    """One process of a data-parallel `train_adapter` on the dataset at `data` (each process loads
    it); on a GPU machine, rank r trains on cuda:r. Returns rank 0's summary (others: None).

    stop_file: the run stops (checkpointed, status "cancelled") at the next step once this file
    exists; every rank sees it (how the studio's worker cancels a multi-GPU job). on_eval: rank 0's
    callback at each evaluation (the studio's previews)."""
    import torch

    from adapt.data import load_dataset
    from adapt.pipeline import train_adapter

    torch.set_num_threads(threads)
    if torch.cuda.is_available() and cfg.device in ("auto", "cuda"):
        cfg = replace(cfg, device=f"cuda:{rank}")
    extra = {"max_pixels": max_pixels} if max_pixels else {}
    options = {"source": source} if source else {}
    if stop_file:
        options["should_stop"] = lambda: os.path.exists(stop_file)
    if on_eval is not None and rank == 0:
        options["on_eval"] = on_eval
    dataset = load_dataset(data, task=task or cfg.task, **extra)
    summary = train_adapter(cfg, dataset, out, holdout=holdout, resume=resume, **options)
    if rank != 0:
        return None
    summary.pop("run", None)
    return {k: (str(v) if k == "adapter" else v) for k, v in summary.items()}
