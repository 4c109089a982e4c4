"""The one guard every zip goes through before anything in it is unpacked: datasets, adapters, and
whatever a stranger uploads next.

    safe_extract("upload.zip", dest)        # ArchiveError listing every problem, or the entries

Checked before a byte is written, from the zip's own directory:
- paths: no absolute paths, drive letters or '..' (zip-slip), no symbolic links, no
  password-protected entries;
- counts and sizes: at most `max_entries` entries and `max_bytes` declared in all;
- compression ratio: an entry over 1 MiB that claims to inflate more than `max_ratio` times is a
  zip bomb (images, masks and weights compress a few times at most), and so is a whole archive
  over 1 MiB that does (many small entries, each under the per-entry floor, add up);
- names: two entries that unpack to the same path (the later would silently replace the earlier).
While extracting, the bytes actually written are counted (a header can lie): an entry larger than
it declared, or a total over the limit, stops the extraction. On any failure the destination is
removed, so nothing half-extracted is left; a full disk is raised as the OSError it is
(adapt.files.disk_full), so that callers say the disk is full, not that the zip is bad.
`declared_size` is what a zip may write (the guard never writes more): what a storage quota counts. The limits come from the environment
(ADAPT_MAX_UNZIPPED_MB, ADAPT_MAX_ZIP_ENTRIES) or are given.

Standard library only (and adapt.files, which is too): every layer may use it.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from adapt.files import disk_full

CHUNK = 1 << 20
RATIO_FLOOR = 1 << 20  # entries smaller than this may compress as well as they like


class ArchiveError(ValueError):
    """A zip refused by the guard; `problems` lists (entry name or "", what is wrong)."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "zip"):
        self.problems, self.source = list(problems), source
        lines = [f"{name}: {what}" if name else what for name, what in self.problems]
        super().__init__(f"{source}: " + "; ".join(lines))


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


@dataclass(frozen=True)
class ArchiveLimits:
    max_bytes: int = 8 << 30  # declared and written, all entries together
    max_entries: int = 100_000
    max_ratio: float = 200.0

    @classmethod
    def from_env(cls) -> ArchiveLimits:
        return cls(
            max_bytes=_env_int("ADAPT_MAX_UNZIPPED_MB", cls.max_bytes >> 20) << 20,
            max_entries=_env_int("ADAPT_MAX_ZIP_ENTRIES", cls.max_entries),
        )


def entry_parts(name: str) -> list[str]:
    """The path components of a zip entry name ('\\' read as '/', empty and '.' dropped)."""
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def problems(zf: zipfile.ZipFile, limits: ArchiveLimits, folder: str = "the folder") -> list[tuple[str, str]]:
    """Everything wrong with a zip's directory, before anything is read from it (`folder`: how
    the messages name where it unpacks, e.g. "the dataset folder")."""
    found = []
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        found.append(("", f"the zip has {len(infos)} entries; at most {limits.max_entries} are accepted"))
    total = packed = 0
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        path = "/".join(entry_parts(name))
        if path and not info.is_dir():
            if path in seen:
                found.append((name, "the zip holds two entries of this name; keep one"))
            seen.add(path)
        norm = name.replace("\\", "/")
        if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or ".." in entry_parts(name):
            found.append((name, f"zip entry points outside {folder} (absolute path or '..'); refusing the zip"))
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            found.append((name, "zip entry is a symbolic link; refusing the zip"))
            continue
        if info.flag_bits & 0x1:
            found.append((name, "zip entry is password-protected; zip it without a password"))
            continue
        if info.file_size > RATIO_FLOOR and info.file_size > limits.max_ratio * max(1, info.compress_size):
            found.append(
                (
                    name,
                    f"zip entry claims to inflate {info.file_size / max(1, info.compress_size):,.0f} times "
                    f"(to {info.file_size / 2**20:,.0f} MiB); refusing a likely zip bomb",
                )
            )
        total += info.file_size
        packed += info.compress_size
    if total > RATIO_FLOOR and total > limits.max_ratio * max(1, packed):
        found.append(
            (
                "",
                f"the zip's entries together claim to inflate {total / max(1, packed):,.0f} times "
                f"(to {total / 2**20:,.0f} MiB); refusing a likely zip bomb",
            )
        )
    if total > limits.max_bytes:
        found.append(
            (
                "",
                f"the zip would unpack to {total / 2**20:,.0f} MiB; at most {limits.max_bytes / 2**20:,.0f} MiB is accepted",
            )
        )
    return found


def declared_size(path: str | Path) -> int:
    """The bytes a zip declares it unpacks to (0 for a file that is not a readable zip): what
    extracting it may write, since the guard stops an entry that writes more than it declared."""
    try:
        with zipfile.ZipFile(path) as zf:
            return sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError):
        return 0


def safe_extract(
    path: str | Path,
    dest: str | Path,
    limits: ArchiveLimits | None = None,
    skip: Callable[[list[str]], bool] = lambda parts: False,
    folder: str = "the folder",
) -> list[Path]:
    """Check the zip at `path`, then extract it into the folder `dest` (created; an empty one of
    the caller's is fine); entries whose path parts `skip` accepts are left out. Returns the files
    written. Raises ArchiveError, with `dest` removed, for a zip the guard refuses or cannot read."""
    path, dest = Path(path), Path(dest)
    limits = limits or ArchiveLimits.from_env()
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ArchiveError([("", f"not a readable zip file ({e})")], source=path.name) from None
    with zf:
        found = problems(zf, limits, folder)
        if found:
            raise ArchiveError(found, source=path.name)
        dest.mkdir(parents=True, exist_ok=True)
        written, total = [], 0
        try:
            for info in zf.infolist():
                parts = entry_parts(info.filename)
                if not parts or skip(parts):
                    continue
                target = dest.joinpath(*parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                size = 0
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(CHUNK):
                        size += len(chunk)
                        total += len(chunk)
                        if size > info.file_size:  # a lying header: stop a zip bomb early
                            raise ArchiveError(
                                [(info.filename, "zip entry is larger than its header says; the zip is corrupt")],
                                source=path.name,
                            )
                        if total > limits.max_bytes:
                            raise ArchiveError(
                                [("", f"the zip unpacks to more than {limits.max_bytes / 2**20:,.0f} MiB")],
                                source=path.name,
                            )
                        out.write(chunk)
                written.append(target)
        except ArchiveError:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as e:
            shutil.rmtree(dest, ignore_errors=True)
            if disk_full(e):  # the server's problem, not the zip's
                raise
            raise ArchiveError([("", f"the zip could not be extracted ({e})")], source=path.name) from None
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    return written
