"""Where backbone weights come from: official checkpoints (downloaded on demand) and bundled tiny ones.

Three kinds of backbone names:

* official SAM (``sam-vit-b``, ``sam-vit-l``, ``sam-vit-h``): Meta's released ``.pth`` files, with
  their published sha256 and size; downloaded into :func:`weights_dir` and verified.
* official CLIP (``clip-vit-b-16``, ``clip-vit-l-14``): open_clip weights for a pretrained *tag*
  (``openai``, ``laion2b_s34b_b88k``, ...). The download location comes from open_clip's own
  pretrained registry (``open_clip.get_pretrained_cfg``), never hard-coded here.
* bundled tiny models (``tiny-sam``, ``tiny-clip``): small files committed in ``weights/`` and
  described by ``weights/manifest.json`` ``{name: {file, sha256, bytes, command, seed, metrics}}``.
  They work offline. They may not exist yet; :func:`available` then reports them as missing and
  :func:`resolve_checkpoint` raises :class:`WeightsUnavailable` with the command that makes them.

:func:`resolve_checkpoint` turns (backbone name, optional user choice) into a local file for
``adapt.backbones.build_backbone(name, checkpoint=path)``:

* ``checkpoint="random"`` -> ``None``: build the architecture with random weights. This is the only
  way to get ``None``; a missing file is always an error, never a silent random init.
* ``checkpoint=<local path>`` -> that path (it must exist; a bare file name is also looked up in
  :func:`weights_dir`). ``checkpoint=<http(s) or file:// URL>`` -> downloaded once into
  :func:`weights_dir` (no checksum known, so none is checked).
* ``checkpoint=None`` -> the registry: the bundled file (sha256 checked against the manifest) or
  the official file (cached and verified, else downloaded if ``download=True``).

Failures to obtain weights raise :class:`WeightsUnavailable` (a ``RuntimeError``); a file whose
checksum does not match raises its subclass :class:`ChecksumMismatch`, so one ``except
WeightsUnavailable`` catches both. Every message says what to download, the exact file name to
save it as, the folder to put it in, and that the bundled tiny models work offline.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from functools import cache
from pathlib import Path

from adapt.backbones.catalog import CATALOG, Checkpoint, missing_extra
from adapt.files import atomic_path, format_bytes, sha256_file, write_json

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO_WEIGHTS_DIR = REPO_ROOT / "weights"
MANIFEST_NAME = "manifest.json"
ENV_VAR = "ADAPT_WEIGHTS_DIR"
CHUNK = 1 << 20


class WeightsUnavailable(RuntimeError):
    """The weights for a backbone cannot be obtained (no network, missing file, bad download)."""


class ChecksumMismatch(WeightsUnavailable):
    """A file's sha256 (or size) is not the expected one."""


# The registry is a view of the backbone catalog (adapt/backbones/catalog.py), where each backbone
# is declared once with its checkpoint or open_clip tags.
SAM_CHECKPOINTS: dict[str, Checkpoint] = {n: e.checkpoint for n, e in CATALOG.items() if e.checkpoint is not None}

# Backbone name -> (open_clip architecture, default pretrained tag, other tags offered).
CLIP_MODELS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    n: (e.arch["open_clip_name"], e.pretrained[0], tuple(e.pretrained[1:])) for n, e in CATALOG.items() if e.pretrained
}

BUNDLED = tuple(n for n, e in CATALOG.items() if e.bundled)
# test configs without weights (configs/*.json with "bundled": false): always random-init
RANDOM_INIT = tuple(n for n, e in CATALOG.items() if not e.bundled and not e.official)

# open_clip's own names for the files in a Hugging Face repo (open_clip.constants): it prefers the
# safetensors file and falls back to the pickled state dict, and so do we.
_HF_FILES = (("open_clip_model.safetensors", ".safetensors"), ("open_clip_pytorch_model.bin", ".bin"))


def weights_dir() -> Path:
    """Folder for downloaded (and bundled) weights: ``$ADAPT_WEIGHTS_DIR`` or ``<repo>/weights``."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else REPO_WEIGHTS_DIR


def names() -> list[str]:
    """Every backbone name the registry knows."""
    return [*SAM_CHECKPOINTS, *CLIP_MODELS, *BUNDLED]


def clip_tags(backbone_name: str) -> list[str]:
    """The pretrained tags offered for a CLIP backbone (default first)."""
    model, default, others = CLIP_MODELS[backbone_name]
    return [default, *others]


def _clip_stem(model: str, tag: str) -> str:
    """The file name (without suffix) an official open_clip checkpoint is downloaded to."""
    return f"open_clip_{model}_{tag}"


def clip_checkpoint_for_file(backbone_name: str, path) -> Checkpoint | None:
    """The registry entry of a file downloaded by :func:`clip_checkpoint` (read back from its
    name), or None for any other file."""
    if backbone_name not in CLIP_MODELS:
        return None
    prefix = _clip_stem(CLIP_MODELS[backbone_name][0], "")
    stem = Path(str(path)).name.split(".")[0]
    if not stem.startswith(prefix):
        return None
    try:
        return clip_checkpoint(backbone_name, stem[len(prefix) :])
    except ValueError:
        return None


@cache
def clip_checkpoint(backbone_name: str, pretrained: str | None = None) -> Checkpoint:
    """The open_clip checkpoint for a CLIP backbone and pretrained tag (default tag if None).

    Locations come from open_clip's pretrained registry. Only its Hugging Face copies are used:
    for the ``openai`` tag the registry also lists OpenAI's original URL, but that file is a
    TorchScript archive, which ``torch.load(weights_only=True)`` refuses to read; the Hugging Face
    copy is the same weights as a plain open_clip state dict. open_clip's registry carries no
    checksum for Hugging Face files, so ``sha256``/``bytes`` are ``None`` (only the announced
    length is checked).
    """
    import open_clip  # heavy import, only needed here

    if backbone_name not in CLIP_MODELS:
        raise ValueError(f"{backbone_name!r} is not a CLIP backbone; choose one of: {', '.join(CLIP_MODELS)}")
    model, default, _ = CLIP_MODELS[backbone_name]
    tag = pretrained or default
    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise ValueError(f"open_clip has no pretrained tag {tag!r} for {model}; it has: {', '.join(tags)}")
    hub = cfg.get("hf_hub", "")
    if not hub:
        raise ValueError(
            f"open_clip lists no Hugging Face copy of {model}/{tag}; only {cfg.get('url')!r}, "
            "which this loader cannot read with weights_only=True"
        )
    repo, fname = hub.rstrip("/"), ""
    if not hub.endswith("/"):  # 'org/repo/file' form names the file itself
        repo, fname = os.path.split(hub)
    stem = _clip_stem(model, tag)
    if fname:
        suffix = Path(fname).suffix or ".bin"
        sources = ((f"https://huggingface.co/{repo}/resolve/main/{fname}", stem + suffix),)
    else:
        sources = tuple((f"https://huggingface.co/{repo}/resolve/main/{f}", stem + sfx) for f, sfx in _HF_FILES)
    return Checkpoint(
        backbone_name,
        "clip",
        sources,
        sha256=None,
        bytes=None,
        description=f"open_clip {model} pretrained={tag} (huggingface.co/{repo})",
        open_clip_model=model,
        pretrained=tag,
        quick_gelu=bool(cfg.get("quick_gelu", False)),
        mean=tuple(cfg["mean"]) if "mean" in cfg else None,
        std=tuple(cfg["std"]) if "std" in cfg else None,
    )


def official(backbone_name: str, pretrained: str | None = None) -> Checkpoint:
    """The registry entry for an official backbone (``pretrained`` = open_clip tag, CLIP only)."""
    if backbone_name in SAM_CHECKPOINTS:
        if pretrained is not None:
            raise ValueError(f"{backbone_name} has one official checkpoint; pretrained={pretrained!r} does not apply")
        return SAM_CHECKPOINTS[backbone_name]
    if backbone_name in CLIP_MODELS:
        return clip_checkpoint(backbone_name, pretrained)
    raise ValueError(f"no official checkpoint for {backbone_name!r}; known: {', '.join(names())}")


# ----------------------------------------------------------------------------------------------
# hashing and download


def _offline_hint() -> str:
    return (
        "The bundled tiny models (tiny-sam, tiny-clip) work offline, and any backbone can be built "
        "with random weights (checkpoint='random')."
    )


def _gated_hint(entry: Checkpoint) -> str:
    """For a file gated on the Hugging Face Hub: what to do before it downloads ("" otherwise)."""
    if not entry.gated:
        return ""
    return (
        f" {entry.file} is gated on the Hugging Face Hub: accept its licence at "
        f"https://huggingface.co/{entry.gated} while signed in, then set $HF_TOKEN to an access token "
        "(or run `hf auth login`) and download again."
    )


def _auth_headers(url: str) -> dict:
    """An Authorization header for a Hugging Face download when a token is set ($HF_TOKEN, or
    the one `hf auth login` saved): gated files need it; nothing for any other host."""
    if urllib.parse.urlparse(url).hostname != "huggingface.co":
        return {}
    token = os.environ.get("HF_TOKEN")
    if not token:
        from huggingface_hub import get_token

        token = get_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _place_by_hand(url: str, dest: Path) -> str:
    return (
        f"To install it by hand, download {url} on a machine with internet access and save it as "
        f"'{dest.name}' in the folder {dest.parent} (set ${ENV_VAR} to use another folder)."
    )


def download(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    expected_bytes: int | None = None,
    progress: bool = True,
    timeout: float = 30,
) -> Path:
    """Download ``url`` to ``dest`` through a ``.part`` file in the same folder.

    The data is streamed into ``<dest name>.<random>.part`` while its sha256 is computed; only a
    complete, verified file is renamed (atomically) to ``dest``, so a partial or corrupt download
    never appears under the final name, and the ``.part`` file is removed on any failure
    (including Ctrl-C). ``expected_bytes`` also bounds the download: a server sending more is cut
    off. Network failures raise :class:`WeightsUnavailable` naming the URL and where to place the
    file; a wrong size or sha256 raises :class:`ChecksumMismatch` with both values.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    h = hashlib.sha256()
    received = 0
    with atomic_path(dest, mode=0o644) as part, open(part, "wb") as out:
        try:
            response = urllib.request.urlopen(urllib.request.Request(url, headers=_auth_headers(url)), timeout=timeout)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            if isinstance(e, urllib.error.HTTPError):
                reason = f"HTTP {e.code} {e.reason}"
            else:
                reason = getattr(e, "reason", None) or e
            raise WeightsUnavailable(
                f"could not download {url}: {reason}. {_place_by_hand(url, dest)} {_offline_hint()}"
            ) from e
        with response:
            length = response.headers.get("Content-Length")
            announced = int(length) if length and length.isdigit() else None
            if expected_bytes is not None and announced is not None and announced != expected_bytes:
                raise ChecksumMismatch(
                    f"{url} announces {announced} bytes but {dest.name} should have "
                    f"{expected_bytes}; not downloading it. {_place_by_hand(url, dest)}"
                )
            total = expected_bytes if expected_bytes is not None else announced
            limit = total  # never accept more than the expected/announced size
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=not progress,
                leave=False,
            ) as bar:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except (http.client.HTTPException, OSError, ValueError) as e:  # IncompleteRead, timeouts
                        raise WeightsUnavailable(
                            f"download of {url} broke off after {received} bytes: {e}. "
                            f"{_place_by_hand(url, dest)} {_offline_hint()}"
                        ) from e
                    if not block:
                        break
                    received += len(block)
                    if limit is not None and received > limit:
                        raise ChecksumMismatch(
                            f"{url} sent more than the expected {limit} bytes for {dest.name}; download discarded"
                        )
                    h.update(block)
                    out.write(block)
                    bar.update(len(block))
        out.flush()
        os.fsync(out.fileno())
        if total is not None and received != total:
            raise WeightsUnavailable(
                f"download of {url} is incomplete: {received} of {total} bytes. "
                f"{_place_by_hand(url, dest)} {_offline_hint()}"
            )
        digest = h.hexdigest()
        if sha256 is not None and digest != sha256.lower():
            raise ChecksumMismatch(
                f"sha256 mismatch for {dest.name} downloaded from {url}: expected {sha256.lower()}, "
                f"got {digest}; the download was discarded"
            )
    _write_stamp(dest, digest)
    return dest


_fetch = download  # resolve_checkpoint's `download` flag shadows the function's name there


# ----------------------------------------------------------------------------------------------
# verification of files already on disk
#
# Hashing a 2.5 GB checkpoint takes seconds, so a verified file gets a small stamp,
# "<folder>/cache/<file>.sha256.json" {sha256, bytes, mtime_ns} (cache/ is git-ignored); while size
# and mtime are unchanged the stamp stands for the hash. Any change to the file makes it be hashed again.


def _stamp_path(path: Path) -> Path:
    return path.parent / "cache" / (path.name + ".sha256.json")


def _write_stamp(path: Path, digest: str) -> None:
    st = path.stat()
    try:
        write_json(_stamp_path(path), {"sha256": digest, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}, indent=None)
    except OSError:  # read-only folder: fine, it is only a cache
        pass


def _known_sha256(path: Path) -> str:
    st = path.stat()
    try:
        stamp = json.loads(_stamp_path(path).read_text())
        if stamp.get("bytes") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns:
            return stamp["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = sha256_file(path)
    _write_stamp(path, digest)
    return digest


def verify_file(
    path: str | Path,
    sha256: str | None = None,
    expected_bytes: int | None = None,
    what: str | None = None,
    advice: str | None = None,
) -> Path:
    """Check a file's size and sha256 (where known); raise :class:`ChecksumMismatch` if wrong."""
    path = Path(path)
    what = what or path.name
    advice = advice or (
        "It is incomplete, corrupt or a different file; delete it (or replace it with the right one) and try again."
    )
    size = path.stat().st_size
    if expected_bytes is not None and size != expected_bytes:
        raise ChecksumMismatch(f"{what}: {path} has {size} bytes, expected {expected_bytes}. {advice}")
    if sha256 is not None:
        digest = _known_sha256(path)
        if digest != sha256.lower():
            raise ChecksumMismatch(
                f"{what}: sha256 mismatch for {path}: expected {sha256.lower()}, got {digest}. {advice}"
            )
    return path


# ----------------------------------------------------------------------------------------------
# bundled tiny models


def _manifest(folder: Path) -> dict:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise WeightsUnavailable(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise WeightsUnavailable(f"{path} should hold an object {{name: {{file, sha256, bytes, ...}}}}")
    return data


def _bundled_folders() -> list[Path]:
    folders = [weights_dir(), REPO_WEIGHTS_DIR]
    out = []
    for f in folders:
        if f.resolve() not in [o.resolve() for o in out]:
            out.append(f)
    return out


def bundled_entry(name: str) -> tuple[Path, dict | None]:
    """(file path, manifest entry or None) for a bundled model, whether or not the file exists.

    The first folder among :func:`weights_dir` and ``<repo>/weights`` whose manifest lists the
    name wins; without any manifest entry, ``<weights_dir>/<name>.safetensors`` is assumed.
    """
    for folder in _bundled_folders():
        entry = _manifest(folder).get(name)
        if isinstance(entry, dict):
            return folder / entry.get("file", f"{name}.safetensors"), entry
    for folder in _bundled_folders():
        candidate = folder / f"{name}.safetensors"
        if candidate.is_file():
            return candidate, None
    return weights_dir() / f"{name}.safetensors", None


def _resolve_bundled(name: str) -> Path:
    path, entry = bundled_entry(name)
    command = (entry or {}).get("command")
    make = f" Recreate it with: {command}" if command else ""
    if not path.is_file():
        raise WeightsUnavailable(
            f"the bundled {name} weights are missing: expected {path}.{make or ' They have not been built yet.'} "
            "Meanwhile the backbone can be built with random weights (checkpoint='random')."
        )
    if entry is None:
        log.warning("%s: no manifest entry for %s, its checksum is not verified", name, path)
        return path
    advice = (
        f"The file does not match {path.parent / MANIFEST_NAME}: restore it (git checkout weights/) "
        f"or rebuild it and its manifest entry.{make}"
    )
    return verify_file(path, entry.get("sha256"), entry.get("bytes"), what=f"bundled {name} weights", advice=advice)


# ----------------------------------------------------------------------------------------------
# resolution


def _is_url(s: str) -> bool:
    return urllib.parse.urlparse(s).scheme in ("http", "https", "file")


def _cached(entry: Checkpoint) -> Path | None:
    folder = weights_dir()
    for _, fname in entry.sources:
        if (folder / fname).is_file():
            return folder / fname
    return None


def resolve_checkpoint(
    backbone_name: str,
    checkpoint: str | Path | None = None,
    download: bool = True,
    progress: bool = True,
    pretrained: str | None = None,
    timeout: float = 30,
) -> Path | None:
    """A local checkpoint file for ``build_backbone(backbone_name, checkpoint=...)``, or None.

    ``checkpoint``: ``"random"`` -> None (random init; also what a random-init test config such as
    tiny-sam2 always gets); a local path ->
    that path (must exist; a bare name is also looked for in :func:`weights_dir`); a URL ->
    downloaded once into :func:`weights_dir`; None -> the registry (bundled tiny file verified
    against the manifest, or the official file: cached copy verified, else downloaded when
    ``download`` is true). ``pretrained``: the open_clip tag for CLIP backbones (default: the
    first of :func:`clip_tags`). Raises :class:`WeightsUnavailable` / :class:`ChecksumMismatch`.
    """
    if checkpoint is not None:
        text = str(checkpoint)
        if text == "random":
            return None
        if _is_url(text):
            fname = Path(urllib.parse.urlparse(text).path).name or "checkpoint.bin"
            dest = weights_dir() / fname
            if dest.is_file():
                return dest
            if not download:
                raise WeightsUnavailable(
                    f"{fname} is not in {dest.parent} and downloading is disabled. {_place_by_hand(text, dest)}"
                )
            return _fetch(text, dest, progress=progress, timeout=timeout)
        path = Path(text).expanduser()
        if path.is_file():
            return path
        if not path.is_absolute() and (weights_dir() / path).is_file():
            return weights_dir() / path
        raise FileNotFoundError(f"checkpoint file {path} does not exist (also looked in {weights_dir()})")

    if backbone_name in BUNDLED:
        return _resolve_bundled(backbone_name)
    if backbone_name in RANDOM_INIT:
        return None

    entry = official(backbone_name, pretrained)
    cached = _cached(entry)
    if cached is not None:
        return verify_file(cached, entry.sha256, entry.bytes, what=f"{backbone_name} checkpoint")
    dest = weights_dir() / entry.file
    if not download:
        raise WeightsUnavailable(
            f"{backbone_name} weights are not downloaded yet and downloading is disabled. "
            f"{_place_by_hand(entry.url, dest)}{_gated_hint(entry)} {_offline_hint()}"
        )
    last = None
    for i, (url, fname) in enumerate(entry.sources):
        try:
            return _fetch(
                url,
                weights_dir() / fname,
                sha256=entry.sha256,
                expected_bytes=entry.bytes,
                progress=progress,
                timeout=timeout,
            )
        except WeightsUnavailable as e:
            cause = e.__cause__
            # a 404 on one of several candidate files (e.g. no safetensors copy): try the next one
            if isinstance(cause, urllib.error.HTTPError) and cause.code == 404 and i + 1 < len(entry.sources):
                last = e
                continue
            raise WeightsUnavailable(
                f"{backbone_name} ({entry.description}) is not available: {e}{_gated_hint(entry)}"
            ) from e
    raise WeightsUnavailable(f"{backbone_name} is not available: {last}")  # pragma: no cover


def available(backbone_name: str, pretrained: str | None = None) -> dict:
    """What a UI shows about a backbone's weights; never downloads, never hashes large files.

    Keys: ``name``, ``kind`` ("bundled" | "official" | "random-init" | "unknown"), ``path`` (where the file is or
    would go), ``file``, ``cached`` (an official file is in :func:`weights_dir`), ``bundled`` (the
    bundled file exists), ``downloadable`` (a download URL is known), ``url``, ``bytes`` (expected
    size, or the file's size), ``sha256`` (expected, if known), ``ready`` (resolve_checkpoint would
    not need the network), ``message``; CLIP adds ``pretrained`` and ``quick_gelu``.
    """
    info = {
        "name": backbone_name,
        "kind": "unknown",
        "path": None,
        "file": None,
        "cached": False,
        "bundled": False,
        "downloadable": False,
        "url": None,
        "bytes": None,
        "sha256": None,
        "ready": False,
        "message": "",
    }
    missing = missing_extra(backbone_name) if backbone_name in CATALOG else None
    if backbone_name in RANDOM_INIT:
        info.update(
            kind="random-init",
            ready=missing is None,
            message=missing or "a test architecture with random weights (none to load)",
        )
        return info
    if backbone_name in BUNDLED:
        try:
            path, entry = bundled_entry(backbone_name)
        except WeightsUnavailable as e:
            info.update(kind="bundled", message=str(e))
            return info
        exists = path.is_file()
        info.update(
            kind="bundled",
            path=str(path),
            file=path.name,
            bundled=exists,
            ready=exists,
            bytes=(entry or {}).get("bytes") or (path.stat().st_size if exists else None),
            sha256=(entry or {}).get("sha256"),
            message="bundled, works offline" if exists else "bundled weights not built yet",
        )
        if entry:
            info.update(command=entry.get("command"), seed=entry.get("seed"), metrics=entry.get("metrics"))
        return info
    try:
        entry = official(backbone_name, pretrained)
    except (ValueError, ImportError) as e:
        info["message"] = str(e)
        return info
    cached = _cached(entry)
    path = cached or weights_dir() / entry.file
    size = entry.bytes if entry.bytes is not None else (cached.stat().st_size if cached else None)
    info.update(
        kind="official",
        path=str(path),
        file=path.name,
        cached=cached is not None,
        downloadable=True,
        url=entry.url,
        bytes=size,
        sha256=entry.sha256,
        ready=cached is not None,
        description=entry.description,
        message=(
            f"downloaded: {path}"
            if cached
            else f"not downloaded; {format_bytes(size)} from {urllib.parse.urlparse(entry.url).netloc}"
        ),
    )
    if entry.family == "clip":
        info.update(pretrained=entry.pretrained, quick_gelu=entry.quick_gelu, mean=entry.mean, std=entry.std)
    if entry.gated:
        info["message"] += f"; gated: accept its licence at https://huggingface.co/{entry.gated} and set $HF_TOKEN"
    if missing:
        info.update(ready=False, message=missing)
    return info
