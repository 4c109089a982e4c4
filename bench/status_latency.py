"""How fast the studio answers /status while a job trains: N clients poll at once, on 127.0.0.1.

    python bench/status_latency.py                    # 8 clients, 20 s each way, while a job trains
    python bench/status_latency.py --clients 8 --seconds 20 --idle   # also with no job, the baseline

The app runs as its own process (devtools.launcher), with one worker training a long tiny-sam PARSER job
on the CPU (the worker uses all cores, as in a default deployment). Each client calls /status in a
loop: as plain HTTP POSTs to the studio's light JSON route (/studio/v1/status, app/rest.py), as
plain HTTP POSTs to Gradio's REST route for the endpoint, and through gradio_client; the latency of
every call is recorded from the client's side. Reported:
median, p90, p99 and max, calls per second, and the same with no job running (--idle), so that
the figures are read as a ratio to the idle app on the same machine. Bounded in time; the app and
its worker are stopped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from adapt.files import zip_folder
from devtools.launcher import StudioProcess, checked

OWNER = "bench-owner-" + "b" * 16


def dataset_zip(folder: Path) -> Path:
    from adapt.data.synthetic import make_dataset, write_folder

    data = write_folder(make_dataset("camouflage", n=6, size=128, seed=1), folder / "data", task="dichotomous")
    return zip_folder(data, folder / "data.zip")


def poll(url: str, job: str, seconds: float, clients: int, via: str) -> dict:
    """`clients` threads calling /status for `seconds`: through gradio_client (what a Python user
    runs; its own overhead, ~80 ms a call here, is part of the figure), or as plain HTTP POSTs to
    Gradio's REST route for the endpoint ("http") or to the studio's JSON route ("json")."""
    from gradio_client import Client

    latencies, errors = [], []
    lock = threading.Lock()
    deadline = time.time() + seconds
    route, body, unwrap = {
        "http": ("/gradio_api/run/status", {"data": [OWNER, job]}, lambda a: a.get("data", [{}])[0]),
        "json": ("/studio/v1/status", {"owner": OWNER, "job": job}, lambda a: a),
    }.get(via, (None, None, None))
    body = json.dumps(body).encode()

    def http_caller():
        """POSTs over one kept-alive connection, as a browser or httpx client would."""
        parts = urllib.parse.urlsplit(url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)

        def call():
            connection.request("POST", route, body, {"Content-Type": "application/json"})
            answer = json.loads(connection.getresponse().read())
            if unwrap(answer).get("job") != job:
                raise RuntimeError(f"unexpected answer {str(answer)[:100]}")

        return call

    def client_loop():
        if via == "gradio_client":
            client = Client(url, verbose=False)
            call = lambda: client.predict(OWNER, job, api_name="/status")  # noqa: E731
        else:
            call = http_caller()
        while time.time() < deadline:
            start = time.perf_counter()
            try:
                call()
            except Exception as e:  # counted, not hidden
                with lock:
                    errors.append(str(e)[:200])
                continue
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    lat = sorted(latencies)
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    return {
        "calls": len(lat),
        "errors": len(errors),
        "calls_per_s": round(len(lat) / seconds, 1),
        "median_s": round(statistics.median(lat), 4) if lat else None,
        "p90_s": round(q[89], 4),
        "p99_s": round(q[98], 4),
        "max_s": round(lat[-1], 4) if lat else None,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--idle", action="store_true", help="also measure with no job running (the baseline)")
    p.add_argument("--nice", type=int, help="the worker's nice value (default: the app's, ADAPT_WORKER_NICE)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    extra = {"ADAPT_WORKER_NICE": str(args.nice)} if args.nice is not None else {}
    from gradio_client import Client, handle_file

    report = {"command": "python bench/status_latency.py " + " ".join(argv or sys.argv[1:]), "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cores = str(os.cpu_count() or 1)
        app = StudioProcess(
            tmp / "studio", env={"ADAPT_WORKER_THREADS": cores, "OMP_NUM_THREADS": cores, **extra}
        ).start()
        try:
            client = Client(app.url, verbose=False)
            data = handle_file(checked(client, OWNER, dataset_zip(tmp)))
            idle_job, _ = client.predict(
                OWNER, data, "dichotomous", "tiny-sam", "parser", 1, 1e-3, 1e-4, 2, api_name="/train"
            )
            while client.predict(OWNER, idle_job, api_name="/status")["status"] not in ("done", "failed"):
                time.sleep(0.5)
            vias = ("json", "http", "gradio_client")
            if args.idle:
                for via in vias:
                    report[f"idle {via}"] = poll(app.url, idle_job, args.seconds, args.clients, via)
                    print(f"idle {via}: {report[f'idle {via}']}", file=sys.stderr)
            job, _ = client.predict(
                OWNER, data, "dichotomous", "tiny-sam", "parser", 20_000, 1e-3, 1e-4, 4, api_name="/train"
            )
            while client.predict(OWNER, job, api_name="/status")["step"] < 3:  # training under way
                time.sleep(0.5)
            for via in vias:
                report[f"training {via}"] = poll(app.url, job, args.seconds, args.clients, via)
                report[f"training {via}"]["job_step"] = client.predict(OWNER, job, api_name="/status")["step"]
                print(f"training {via}: {report[f'training {via}']}", file=sys.stderr)
            client.predict(OWNER, job, api_name="/cancel")
        finally:
            app.stop()
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
