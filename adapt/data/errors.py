"""Dataset errors, in a module of their own that imports nothing from adapt.data.

Every other adapt.data module raises these, so they live at the bottom of the import graph, where
any module can import them without an import cycle. `DatasetError` is what the user sees: every
problem found, each naming its file, raised together. `_Bad` is one file's problem inside the
loader, turned into a (file, message) entry by whoever collects the problems.
"""

from __future__ import annotations

__all__ = ["DatasetError", "MAX_LISTED"]

MAX_LISTED = 20                  # problems listed in a DatasetError's message; the rest are counted


class DatasetError(ValueError):
    """Every problem found in a dataset. `.problems` is a list of (file, message)."""

    def __init__(self, problems, source: str | None = None):
        self.problems = [(str(f), str(m)) for f, m in problems]
        self.source = source
        super().__init__(self._format())

    def _format(self) -> str:
        n = len(self.problems)
        where = f"Dataset {self.source}" if self.source else "Dataset"
        head = f"{where} has {n} problem{'s' if n != 1 else ''}:"
        lines = [f"  {f}: {m}" if f else f"  {m}" for f, m in self.problems[:MAX_LISTED]]
        if n > MAX_LISTED:
            lines.append(f"  ... and {n - MAX_LISTED} more")
        return "\n".join([head, *lines])


class _Bad(Exception):
    """One file's problem, turned into a (file, message) entry by the caller."""
