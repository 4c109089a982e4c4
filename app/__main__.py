"""python -m app: start the studio. Binds to 127.0.0.1 unless GRADIO_SERVER_NAME says otherwise."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the app works offline

from app.ui import build  # noqa: E402


def main() -> None:
    demo = build()
    demo.queue().launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    )


if __name__ == "__main__":
    main()
