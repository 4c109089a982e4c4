"""Zip safety and extraction: the one guard a zip goes through before anything in it is unpacked.

`extract_zip(path) -> Storage` is the whole public surface. It checks every entry first, in one
place (`_zip_problems`): no absolute paths or '..' (zip-slip), no symbolic links, no
password-protected entries, at most ZIP_MAX_ENTRIES entries and ZIP_MAX_BYTES unpacked; every
problem found is raised together as one `DatasetError`, and nothing is extracted. Only then are the
entries extracted, into a new private temporary folder, stopping at an entry that turns out larger
than its header says (a zip bomb). The folder is removed on any failure, and otherwise when the
returned `Storage` is cleaned up or garbage collected. Names in JUNK_NAMES (macOS and Windows
litter) are not extracted; layout discovery ignores the same names in folders.
"""

from __future__ import annotations

import re
import shutil
import stat
import tempfile
import weakref
import zipfile
from pathlib import Path

from adapt.data.errors import DatasetError

__all__ = ["Storage", "extract_zip", "JUNK_NAMES", "ZIP_MAX_BYTES", "ZIP_MAX_ENTRIES"]

JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "__macosx"}
ZIP_MAX_BYTES = 8 << 30          # refuse zips that would unpack to more than this
ZIP_MAX_ENTRIES = 100_000


class Storage:
    """An extracted zip's temporary folder; removed once nothing refers to it any more."""

    def __init__(self, path: Path):
        self.path = path
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(path), True)

    def cleanup(self):
        self._finalizer()

    def __reduce__(self):  # a copy in another process must not own (and delete) the folder
        return (_BorrowedStorage, (str(self.path),))


class _BorrowedStorage:
    def __init__(self, path):
        self.path = Path(path)

    def cleanup(self):
        pass



def _zip_problems(zf: zipfile.ZipFile) -> list[tuple[str, str]]:
    problems = []
    total = 0
    infos = zf.infolist()
    if len(infos) > ZIP_MAX_ENTRIES:
        problems.append(("", f"the zip has {len(infos)} entries; at most {ZIP_MAX_ENTRIES} are accepted"))
    for info in infos:
        name = info.filename
        norm = name.replace("\\", "/")
        parts = [p for p in norm.split("/") if p not in ("", ".")]
        if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or ".." in parts:
            problems.append((name, "zip entry points outside the dataset folder (absolute path or "
                                   "'..'); refusing to extract this zip"))
            continue
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            problems.append((name, "zip entry is a symbolic link; refusing to extract this zip"))
            continue
        if info.flag_bits & 0x1:
            problems.append((name, "zip entry is password-protected; zip the dataset without a password"))
            continue
        total += info.file_size
    if total > ZIP_MAX_BYTES:
        problems.append(("", f"the zip would unpack to {total / 2**30:.1f} GiB; at most "
                             f"{ZIP_MAX_BYTES / 2**30:.0f} GiB is accepted"))
    return problems


def extract_zip(path: Path) -> Storage:
    """Check every entry, then extract into a new temporary folder (removed again on failure)."""
    label = path.name
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DatasetError([(label, f"not a readable zip file ({e})")], source=label) from None
    with zf:
        problems = _zip_problems(zf)
        if problems:
            raise DatasetError(problems, source=label)
        tmp = Path(tempfile.mkdtemp(prefix="adapt-dataset-"))
        storage = Storage(tmp)
        try:
            for info in zf.infolist():
                parts = [p for p in info.filename.replace("\\", "/").split("/") if p not in ("", ".")]
                if not parts or any(p.startswith("._") or p.lower() in JUNK_NAMES for p in parts):
                    continue
                target = tmp.joinpath(*parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with zf.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > info.file_size:  # a lying header: stop a zip bomb early
                            raise DatasetError([(info.filename, "zip entry is larger than its header "
                                                 "says; the zip is corrupt")], source=label)
                        dst.write(chunk)
        except DatasetError:
            storage.cleanup()
            raise
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as e:
            storage.cleanup()
            raise DatasetError([(label, f"the zip could not be extracted ({e})")], source=label) from None
        except BaseException:
            storage.cleanup()
            raise
    return storage
