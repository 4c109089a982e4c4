"""python -m app: start the studio (the page, its API and the executor that runs its jobs: this
machine's workers, or a Ray cluster with ADAPT_EXECUTOR=ray; see app/run/executor.py).

Binds to 127.0.0.1 unless GRADIO_SERVER_NAME says otherwise; files live under ADAPT_STUDIO_DIR
(see app/config.py). Stopping the app stops the workers; their jobs resume at the next start.
"""

import logging
import os
import signal
import threading
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the app works offline


def janitor(studio, every_s: float = 3600) -> None:
    """Remove expired jobs and uploads (ADAPT_RETENTION_DAYS) at start and then hourly."""
    log = logging.getLogger("app.janitor")
    while True:
        try:
            removed = studio.clean()
            if removed["jobs"] or removed["uploads"]:
                log.info("removed %d expired job(s) and %d upload(s)", len(removed["jobs"]), len(removed["uploads"]))
        except Exception:  # a full or read-only disk must not end the app
            log.exception("cleanup failed; trying again later")
        time.sleep(every_s)


def main() -> None:
    import torch

    from app.config import Limits, Paths, default_root
    from app.lsbackend import add_routes as add_labelstudio_routes
    from app.rest import add_routes
    from app.run.executor import make_executor
    from app.studio import Studio
    from app.ui import CSS, build

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own start-up probes, one line each
    torch.set_num_threads(int(os.environ.get("ADAPT_APP_THREADS") or min(2, os.cpu_count() or 1)))
    paths = Paths(default_root()).ensure()
    limits = Limits.from_env()
    studio = Studio(paths, limits)
    executor = make_executor(paths).start()  # ADAPT_EXECUTOR: local workers (default) or Ray

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    threading.Thread(target=janitor, args=(studio,), name="janitor", daemon=True).start()
    logging.getLogger("app").info("studio folder: %s; %s", paths.root, executor.describe())
    try:
        blocks = build(studio).queue(default_concurrency_limit=4)
        blocks.launch(
            server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
            server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
            max_file_size=f"{limits.upload_mb}mb",
            # every endpoint turns its own errors into messages (app.ui.common.user_errors); this
            # makes the few gradio raises itself, checking a malformed payload, say what they are
            show_error=True,
            css=CSS,
            footer_links=["api"],
            prevent_thread_lock=True,
        )
        add_routes(blocks.app, studio)  # the light JSON routes for polling clients (app/rest.py)
        add_labelstudio_routes(blocks.app, studio)  # the Label Studio ML backend (app/lsbackend.py)
        blocks.block_thread()
    finally:
        executor.stop()


if __name__ == "__main__":
    main()
