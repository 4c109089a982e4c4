"""The studio's web app: Gradio UI only. It calls the `adapt` library, never the reverse."""
