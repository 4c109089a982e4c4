"""The page: one module per tab, assembled by page.build."""

from app.ui.page import CSS, build

__all__ = ["CSS", "build"]
