"""Helpers for the studio tests: launch the app as a real process, make datasets and bad uploads."""

from __future__ import annotations

import struct
import time
import zipfile
import zlib
from pathlib import Path

from devtools.launcher import StudioProcess, free_port  # noqa: F401  (re-exported for the tests)
from devtools.launcher import checked as check_with

REPO = Path(__file__).resolve().parent.parent
OWNER = "test-owner-" + "a" * 20
App = StudioProcess  # the tests' name for it


def dataset_zip(
    folder: Path, n: int = 4, size: int = 80, task: str = "dichotomous", seed: int = 1, domain: str | None = None
) -> Path:
    from adapt.data.synthetic import make_dataset, write_folder

    domain = domain or ("camouflage" if task == "dichotomous" else "source")
    data = write_folder(
        make_dataset(domain, n=n, size=size, seed=seed), folder / f"data-{task}-{domain}-{n}-{size}", task=task
    )
    return zip_tree(data, folder / f"{data.name}.zip")


def checked(client, data: Path, task: str = "dichotomous", owner: str = OWNER) -> str:
    """devtools.launcher.checked with the tests' owner: what /train takes for `data`."""
    return check_with(client, owner, data, task)


def zip_tree(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(folder).as_posix())
    return dest


def huge_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A valid grayscale PNG of width x height black pixels (a few hundred KB: it compresses)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", body)
        + chunk(b"IEND", b"")
    )
    return path


def bad_uploads(folder: Path) -> dict[str, tuple[list, list, str]]:
    """name -> (image files, mask files, the words the message must contain)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("good", "masks", "bad_masks", "corrupt", "huge"):
        (folder / sub).mkdir(exist_ok=True)
    ok = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:40, 10:40] = 255
    for stem in ("a", "b"):
        Image.fromarray(ok).save(folder / "good" / f"{stem}.png")
        Image.fromarray(mask).save(folder / "masks" / f"{stem}.png")
    Image.fromarray(mask).save(folder / "bad_masks" / "a.png")
    Image.fromarray(mask[:32, :48]).save(folder / "bad_masks" / "b.png")  # not the image's size
    (folder / "corrupt" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    huge_png(folder / "huge" / "a.png")
    good, masks = [folder / "good" / "a.png", folder / "good" / "b.png"], sorted((folder / "masks").glob("*.png"))
    return {
        "corrupt": ([folder / "corrupt" / "a.png", good[1]], masks, "corrupt"),
        "mismatched sizes": (good, sorted((folder / "bad_masks").glob("*.png")), "48x32"),
        "huge": ([folder / "huge" / "a.png", good[1]], masks, "too large"),
    }


def slip_zip(path: Path) -> Path:
    """A zip with an entry that climbs out of the folder it is extracted into."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images/a.png", b"x")
        z.writestr("../../evil.txt", b"owned")
    return path


def work(studio) -> list[str]:
    """Run every queued job of `studio` to its end in this process, as a worker would; returns
    their final statuses."""
    import threading

    from app.run.worker import run_job

    statuses = []
    while (job := studio.store.claim("w1", 1)) is not None:
        statuses.append(run_job(studio.store, studio.paths, job, "w1", threading.Event(), 40_000_000))
    return statuses


def wait_for(predicate, timeout: float, every: float = 0.5, what: str = "condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}; last: {last}")
