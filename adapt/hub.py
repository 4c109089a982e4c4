"""The Hugging Face Hub, the network side only: download a repository's files by reference, upload a
folder. What an adapter repository holds and how it is staged is adapt.export's business:

    adapt.export.push_to_hub("runs/x/adapter", "me/camouflage-parser", token=...)  # -> its URL
    adapt.export.load_adapter("hf://me/camouflage-parser")                        # resolves hf://

What is uploaded is the adapter folder as it is (adapter_config.json, adapter_model.safetensors and
README.md, whose front matter is the Hub's model-card metadata: base model, library, task, tags,
the held-out metrics before and after); nothing else is read or sent. A pulled repository must
hold an adapter folder; it is downloaded into the Hugging Face cache (its three files only) and
loaded with the same checks as a local adapter. The token is passed to huggingface_hub for the one
call and never stored, logged or put into a message. Offline, both say so; nothing else in the
studio needs the network.
"""

from __future__ import annotations

import re
from pathlib import Path

PREFIX = "hf://"
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
REPO_ID = re.compile(rf"{_PART}/{_PART}")
# a branch or tag name (git's rules: "/"-separated parts, none empty, none starting with ".", no
# "..", not ending in ".lock") or a commit hash; never a path that leaves the Hub cache's folder
REVISION = re.compile(r"(?!.*\.\.)(?!.*\.lock$)[A-Za-z0-9_-][A-Za-z0-9._-]*(?:/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")
MAX_REVISION = 100


class HubError(ValueError):
    """A Hub push or pull that failed; the message says why and what to do."""


def is_hub_ref(ref) -> bool:
    return isinstance(ref, str) and ref.startswith(PREFIX)


def parse_ref(ref: str) -> tuple[str, str | None]:
    """ "hf://user/repo" or "hf://user/repo@revision" -> (repo id, revision or None)."""
    body = ref[len(PREFIX) :] if is_hub_ref(ref) else ref
    repo, _, revision = body.partition("@")
    check_repo_id(repo)
    if revision and (len(revision) > MAX_REVISION or not REVISION.fullmatch(revision)):
        raise HubError(f"{revision[:40]!r} is not a Hub revision (a branch, tag or commit)")
    return repo, revision or None


def check_repo_id(repo: str) -> str:
    if not isinstance(repo, str) or not REPO_ID.fullmatch(repo) or ".." in repo:
        raise HubError(
            f"{str(repo)[:60]!r} is not a Hub repository id: give USER/NAME (letters, digits, '.', '_', '-')"
        )
    return repo


def _hide(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _network_error(e: Exception) -> bool:
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    if isinstance(e, (OfflineModeIsEnabled, LocalEntryNotFoundError, ConnectionError, TimeoutError)):
        return True
    name = type(e).__name__
    return name in ("ConnectError", "ConnectTimeout", "ReadTimeout", "NetworkError") or "connect" in str(e).lower()


def download(ref: str, files: list[str], required: list[str], token: str | None = None) -> Path:
    """The folder of a Hub repository ("hf://user/repo[@revision]") with only `files` downloaded,
    into the Hugging Face cache; refused unless it holds every one of `required`."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    repo, revision = parse_ref(ref)
    try:
        folder = snapshot_download(
            repo, revision=revision, allow_patterns=files, token=token, library_name="segmentation-adaptation-studio"
        )
    except (RepositoryNotFoundError, GatedRepoError):
        raise HubError(
            f"{repo}: no such model repository on the Hub, or it is private or gated "
            "(log in with `hf auth login` or set HF_TOKEN for a private one)"
        ) from None
    except RevisionNotFoundError:
        raise HubError(f"{repo} has no revision {revision!r}") from None
    except Exception as e:
        if _network_error(e):
            raise HubError(
                f"cannot download {repo}: the Hugging Face Hub cannot be reached from here (offline?). "
                "Download the adapter folder where there is a network and give its path instead."
            ) from None
        raise HubError(f"cannot download {repo}: {_hide(str(e), token)[:300]}") from None
    folder = Path(folder)
    if not all((folder / name).is_file() for name in required):
        raise HubError(f"{repo} is not an adapter repository: it has no {' and '.join(required)}")
    return folder


def upload(folder: Path, repo_id: str, message: str, token: str | None = None, private: bool = False) -> str:
    """Upload `folder` to the model repository `repo_id` (created when missing); returns its URL.
    `token`: a Hub write token (default: the logged-in one, or HF_TOKEN)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    check_repo_id(repo_id)
    try:
        api = HfApi(token=token or None)
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message)
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise HubError(
                f"the Hub refused the upload to {repo_id} (HTTP {status}): give a token with write access to it"
            ) from None
        raise HubError(f"the upload to {repo_id} failed: {_hide(str(e), token)[:300]}") from None
    except Exception as e:
        if _network_error(e):
            raise HubError(
                f"cannot upload to {repo_id}: the Hugging Face Hub cannot be reached from here (offline?)"
            ) from None
        raise HubError(f"the upload to {repo_id} failed: {_hide(str(e), token)[:300]}") from None
    return str(url)
