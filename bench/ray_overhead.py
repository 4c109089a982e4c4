"""What running jobs on Ray costs against the local executor, on the same machine in the same run.

    python bench/ray_overhead.py                      # 3 jobs per executor, 40 steps each
    python bench/ray_overhead.py --jobs 5 --steps 60

For each executor the studio runs as its own process (devtools.launcher): the local one with its one
worker process; the Ray one against a two-node Ray cluster on 127.0.0.1 (devtools.launcher.RayCluster,
2 CPUs per node). The same tiny-sam PARSER job (6 images of 128 px, batch 2) is submitted through
the API, one after the other. Reported per executor, as the mean over the jobs:
- submission to first progress: from the /train call to the first step event in the job's folder
  on the app's machine (for Ray: a fresh worker process, the job's files through the object store,
  the first events back through the channel actor);
- time per step: the median gap between step events (steps 5 onwards), as the trainer stamped them;
  for Ray this includes the shipping thread that sends the folder's changes every 0.5 s.
and the ratios Ray / local. Bounded in time; the apps and the cluster are stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from adapt.files import zip_folder
from devtools.launcher import RayCluster, StudioProcess, checked

OWNER = "bench-owner-" + "r" * 16


def dataset_zip(folder: Path) -> Path:
    from adapt.data.synthetic import make_dataset, write_folder

    data = write_folder(make_dataset("camouflage", n=6, size=128, seed=1), folder / "data", task="dichotomous")
    return zip_folder(data, folder / "data.zip")


def events(folder: Path) -> list[dict]:
    path = folder / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def run_jobs(app: StudioProcess, data: Path, jobs: int, steps: int, timeout: float = 600) -> dict:
    from gradio_client import Client, handle_file

    client = Client(app.url, verbose=False)
    first, per_step = [], []
    for _ in range(jobs):
        start = time.time()
        job, _ = client.predict(
            OWNER,
            handle_file(checked(client, OWNER, data)),
            "dichotomous",
            "tiny-sam",
            "parser",
            steps,
            1e-3,
            1e-4,
            2,
            api_name="/train",
        )
        folder, seen = app.root / "jobs" / job, None
        deadline = time.time() + timeout
        while time.time() < deadline:
            if seen is None and any(e["type"] == "step" for e in events(folder)):
                seen = time.time() - start
            state = client.predict(OWNER, job, api_name="/status")["status"]
            if state in ("done", "failed", "cancelled"):
                break
            time.sleep(0.05)
        if state != "done":
            raise RuntimeError(f"job {job} ended {state}:\n{app.log()}")
        stamps = [e["time"] for e in events(folder) if e["type"] == "step" and e["step"] >= 5]
        first.append(seen)
        per_step.append(statistics.median(b - a for a, b in zip(stamps, stamps[1:])))
        print(f"  job {job[:8]}: first progress {seen:.2f} s, {per_step[-1] * 1000:.0f} ms/step", file=sys.stderr)
    return {"first_s": statistics.mean(first), "step_s": statistics.mean(per_step), "firsts": first}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=3)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args(argv)
    command = "python bench/ray_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = dataset_zip(tmp)
        print("local executor", file=sys.stderr)
        app = StudioProcess(tmp / "local").start()
        try:
            results["local"] = run_jobs(app, data, args.jobs, args.steps)
        finally:
            app.stop()
        print("Ray executor", file=sys.stderr)
        cluster = RayCluster(cpus_per_node=2, nodes=2).start()
        try:
            app = StudioProcess(tmp / "ray", env=cluster.app_env()).start()
            try:
                results["ray"] = run_jobs(app, data, args.jobs, args.steps)
            finally:
                app.stop()
        finally:
            cluster.stop()
    local, ray = results["local"], results["ray"]
    lines = [
        f"Command: `{command.strip()}` ({args.jobs} jobs per executor, {args.steps} steps each, tiny-sam PARSER, CPU)",
        "",
        "| executor | submission to first progress (s) | time per step (ms) |",
        "|---|---:|---:|",
        f"| local | {local['first_s']:.2f} | {local['step_s'] * 1000:.0f} |",
        f"| ray (2 nodes on 127.0.0.1) | {ray['first_s']:.2f} | {ray['step_s'] * 1000:.0f} |",
        f"| ratio ray / local | **{ray['first_s'] / local['first_s']:.2f}x** | **{ray['step_s'] / local['step_s']:.2f}x** |",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
