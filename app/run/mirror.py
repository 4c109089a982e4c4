"""A job folder that travels: what an executor on another machine needs to run a job without a
shared filesystem, and what comes back while it runs.

    payload = pack(job, files)                 # the app's side: the job's files, paths made relative
    job2, files2 = unpack(payload, scratch)    # the remote side: the same folder under `scratch`
    mirror = Mirror(files2.folder)             # what the job writes, as changes, every scan:
    changes = mirror.scan()                    #   new or rewritten files whole, appended logs by
    apply(changes, files.folder)               #   their new lines, removals; applied on the app's side

Only plain files written the studio's way travel back: every writer in the project replaces a file
atomically (a hidden `.name.xxxx.part` beside it, then a rename) or appends whole lines to a log
(events.jsonl, the label ledger), so a scan never reads half a file, and a half-written last line of
a log waits for the next scan. Hidden files, temporary folders and the job's inputs (which the job
only reads) never travel back.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from adapt.files import atomic_path
from app.config import JOB_INPUTS as INPUTS

# logs a job appends whole lines to (and may rewrite atomically, e.g. a rewind on resume)
LOGS = (".jsonl",)
# an app-side file outside the job folder that the job reads (the adapter a label job predicts with)
EXTERNAL = "external"
MAX_PAYLOAD_BYTES = 8 << 30  # a job folder larger than this is refused rather than sent


class MirrorError(RuntimeError):
    """A job folder that cannot travel (too large, or a path that escapes it)."""


def _travels(rel: Path) -> bool:
    parts = rel.parts
    return not any(p.startswith((".", "tmp")) for p in parts)


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and _travels(p.relative_to(folder)))


def _relocate(value, mapping: dict[str, str]):
    """`value` (a job's config) with every string that names a mapped path replaced."""
    if isinstance(value, dict):
        return {k: _relocate(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [_relocate(v, mapping) for v in value]
    if isinstance(value, str):
        for old, new in mapping.items():
            if value == old or value.startswith(old + os.sep):
                return new + value[len(old) :]
    return value


def pack(job: dict, folder: Path, externals: list[str] | None = None) -> dict:
    """Everything a job needs, as bytes: its folder's files (inputs, checkpoint, events so far) and
    any file outside it that the job reads (`externals`: absolute paths named in its config), with
    the job's paths made relative to the folder ("{job}/...", "{external}/N/..."); `unpack` makes
    them absolute again on the other side. Nothing of the app's filesystem is named in it."""
    folder = Path(folder).resolve()
    files, total = {}, 0
    for path in _files_under(folder):
        files[path.relative_to(folder).as_posix()] = path.read_bytes()
        total += path.stat().st_size
    mapping = {str(folder): "{job}"}
    for i, ext in enumerate(externals or []):
        src = Path(ext).resolve()
        if not src.exists():
            continue
        mapping[str(src)] = f"{{external}}/{i}/{src.name}"
        for path in [src] if src.is_file() else _files_under(src):
            rel = Path(EXTERNAL) / str(i) / src.name / (path.relative_to(src) if src.is_dir() else "")
            files[rel.as_posix().rstrip("/")] = path.read_bytes()
            total += path.stat().st_size
    if total > MAX_PAYLOAD_BYTES:
        raise MirrorError(f"the job's files are {total / 2**30:.1f} GiB; at most {MAX_PAYLOAD_BYTES >> 30} GiB travel")
    portable = _relocate({k: v for k, v in job.items()}, mapping)
    return {"job": portable, "files": files}


def unpack(payload: dict, scratch: Path) -> tuple[dict, Path]:
    """Write a packed job under `scratch` (its folder at scratch/job, externals beside it); returns
    the job with its paths pointing there, and the folder."""
    scratch = Path(scratch).resolve()
    folder = scratch / "job"
    folder.mkdir(parents=True, exist_ok=True)
    for rel, data in payload["files"].items():
        base = scratch if rel.startswith(EXTERNAL + "/") else folder
        dest = (base / rel).resolve()
        if not dest.is_relative_to(scratch):
            raise MirrorError(f"a packed file climbs out of its folder: {rel}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    mapping = {"{job}": str(folder), f"{{{EXTERNAL}}}": str(scratch / EXTERNAL)}
    return _relocate(payload["job"], mapping), folder


@dataclass
class _Seen:
    key: tuple  # (inode, size, mtime_ns)
    sent: int = 0  # a log's bytes already sent


@dataclass
class Mirror:
    """Scans a job folder for what changed since the last scan. The files there at the start
    (what was unpacked) count as already sent."""

    folder: Path
    _seen: dict = field(default_factory=dict)

    def __post_init__(self):
        self.folder = Path(self.folder)
        for path in _files_under(self.folder):
            rel, st = path.relative_to(self.folder).as_posix(), path.stat()
            if rel.split("/")[0] not in INPUTS:
                self._seen[rel] = _Seen(_key(st), st.st_size)

    def scan(self) -> list[tuple]:
        """Changes since the last scan, in order: ("put", rel, bytes) for a new or rewritten file,
        ("append", rel, bytes) for a log's new whole lines, ("remove", rel) for a file that went."""
        changes, now = [], {}
        for path in _files_under(self.folder):
            rel = path.relative_to(self.folder).as_posix()
            if rel.split("/")[0] in INPUTS:
                continue
            try:
                st = path.stat()
                seen = self._seen.get(rel)
                if seen is not None and seen.key == _key(st):
                    now[rel] = seen
                    continue
                if rel.endswith(LOGS) and seen is not None and st.st_ino == seen.key[0] and st.st_size >= seen.sent:
                    with open(path, "rb") as f:  # the same file, grown: its new whole lines
                        f.seek(seen.sent)
                        new = f.read(st.st_size - seen.sent)
                    whole = new[: new.rfind(b"\n") + 1]
                    if whole:
                        changes.append(("append", rel, whole))
                    now[rel] = _Seen(_key(st), seen.sent + len(whole))
                    continue
                data = path.read_bytes()
            except FileNotFoundError:  # replaced or removed while we looked: the next scan sees it
                continue
            if rel.endswith(LOGS):
                data = data[: data.rfind(b"\n") + 1]
            changes.append(("put", rel, data))
            now[rel] = _Seen(_key(st), len(data))
        for rel in self._seen:
            if rel not in now and not (self.folder / rel).exists():
                changes.append(("remove", rel))
        self._seen = now
        return changes


def _key(st: os.stat_result) -> tuple:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def apply(changes: list[tuple], folder: Path) -> None:
    """Apply a remote job's changes to its folder on this machine: whole files atomically, log
    lines appended, removals. A path that would leave the folder is refused."""
    folder = Path(folder).resolve()
    for change in changes:
        kind, rel = change[0], change[1]
        dest = (folder / rel).resolve()
        if not dest.is_relative_to(folder) or dest == folder:
            raise MirrorError(f"a change outside the job folder: {rel}")
        if kind == "put":
            with atomic_path(dest) as tmp:
                tmp.write_bytes(change[2])
        elif kind == "append":
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(dest, "ab") as f:
                f.write(change[2])
        elif kind == "remove":
            if dest.is_dir():
                shutil.rmtree(dest, ignore_errors=True)
            else:
                dest.unlink(missing_ok=True)
        else:
            raise MirrorError(f"unknown change {kind!r}")


__all__ = ["INPUTS", "Mirror", "MirrorError", "apply", "pack", "unpack"]
