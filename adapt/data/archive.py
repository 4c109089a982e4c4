"""Dataset zips: extracted through the one archive guard (adapt.archive) into a private temporary
folder that lives as long as the dataset needs it.

`extract_zip(path) -> Storage` is the whole public surface: the guard's refusals (zip-slip,
symbolic links, passwords, entry count, total size, compression ratio, lying headers) come back
as one `DatasetError` naming every problem, and nothing is left extracted. The folder is removed
on any failure, and otherwise when the returned `Storage` is cleaned up or garbage collected.
Names in JUNK_NAMES (macOS and Windows litter) are not extracted; layout discovery ignores the
same names in folders.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

from adapt.archive import ArchiveError, safe_extract
from adapt.data.errors import DatasetError

__all__ = ["Storage", "extract_zip", "JUNK_NAMES"]

JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "__macosx"}


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



def _junk(parts: list[str]) -> bool:
    return any(p.startswith("._") or p.lower() in JUNK_NAMES for p in parts)


def extract_zip(path: Path) -> Storage:
    """Check every entry (adapt.archive, the one guard), then extract into a new temporary folder
    (removed again on failure); a refusal is a DatasetError naming each problem."""
    tmp = Path(tempfile.mkdtemp(prefix="adapt-dataset-"))
    storage = Storage(tmp)
    try:
        safe_extract(path, tmp, skip=_junk, folder="the dataset folder")
    except ArchiveError as e:
        storage.cleanup()
        raise DatasetError([(name or path.name, what) for name, what in e.problems], source=path.name) from None
    except BaseException:
        storage.cleanup()
        raise
    return storage
