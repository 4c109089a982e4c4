"""Files written whole or not at all, and the two file facts every layer needs (sha256, sizes).

Every file the project writes for someone else to read (adapters, checkpoints, PNGs, JSON, zips,
downloads, datasets) goes through :func:`atomic_path` or :func:`atomic_folder`: the content is
written under a temporary name in the destination's own folder and renamed onto the final name
only once complete (``os.replace`` is atomic within one filesystem), so a crash, a kill or a full
disk never leaves a half-written file under the name a reader looks for. The temporary name is
``.<name>.<random>.part``: hidden, unique per writer, and removed on any failure.

This module imports only the standard library, so every other module may use it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CHUNK = 1 << 20
PART_SUFFIX = ".part"


def part_path(dest: Path) -> Path:
    """A fresh temporary name beside `dest` (same folder, so the final rename is atomic)."""
    return dest.with_name(f".{dest.name}.{secrets.token_hex(4)}{PART_SUFFIX}")


@contextmanager
def atomic_path(dest: str | Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write `dest`'s content to; on success it becomes `dest`.

        with atomic_path("out/mask.png") as tmp:
            Image.fromarray(a).save(tmp, format="PNG")

    The parent folder is created. On any exception (Ctrl-C included) the temporary file is removed
    and `dest` is untouched. `mode`: permission bits for the final file (default: the writer's).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = part_path(dest)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_folder(dest: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `dest`; on success it replaces `dest` (whose old
    content, if any, is removed). On failure the temporary folder goes and `dest` stays as it was."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=PART_SUFFIX, dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_parts(folder: str | Path) -> list[Path]:
    """Remove the temporary files a killed writer left in `folder` (only call it where no writer
    is at work, e.g. before a resumed run starts); returns what was removed."""
    removed = [p for p in Path(folder).glob(f".*{PART_SUFFIX}") if p.is_file()]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def write_text(path: str | Path, text: str, mode: int | None = None) -> Path:
    """Write a text file atomically; returns its path."""
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj, indent: int | None = 1, sort_keys: bool = False) -> Path:
    """Write `obj` as JSON (with a final newline) atomically; returns the path."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


def copy_file(src: str | Path, dest: str | Path) -> Path:
    """Copy `src` to `dest` atomically; returns `dest`."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dest)


def zip_folder(folder: str | Path, dest: str | Path, keep: Callable[[Path], bool] | None = None) -> Path:
    """Zip the files under `folder` into `dest` atomically, deflated, under their paths relative to
    `folder` (sorted; nothing else of the filesystem is named); `keep(relative path)` picks which
    (default: all). Returns `dest`. The one folder zipper: datasets, adapters, labelling results."""
    folder = Path(folder)
    with atomic_path(dest) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if path.is_file() and (keep is None or keep(rel)):
                z.write(path, rel.as_posix())
    return Path(dest)


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks (checkpoints are gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def disk_full(error: BaseException) -> bool:
    """Whether an error means the disk is full: the OS's ENOSPC, or SQLite's "database or disk is
    full" (which it raises as an OperationalError)."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return isinstance(error, sqlite3.OperationalError) and "full" in str(error)


def format_bytes(n: float | None) -> str:
    """A size for people: "512 B", "3.4 MB", "1.2 GB" (binary multiples); "size unknown" for None."""
    if n is None:
        return "size unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover
