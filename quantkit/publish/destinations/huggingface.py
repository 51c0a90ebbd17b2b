"""The Hugging Face Hub (or any server speaking its API): `HfApi.create_repo` + `create_commit`.

Endpoint and token come from huggingface_hub's standard environment and login (`HF_ENDPOINT`,
`HF_TOKEN`, `hf auth login`). The token is never printed, logged or written by quantkit.
A re-run after a dropped connection does not re-send large files the hub already has: `create_commit`
asks the hub's LFS batch endpoint first, which answers without an upload action for stored objects.
"""

from __future__ import annotations

import re
from pathlib import Path

from quantkit.errors import QuantkitError
from quantkit.progress import Reporter
from quantkit.publish.bundle import Bundle
from quantkit.publish.destinations.base import Destination, PushError, PushOptions, PushResult

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
PREFIX = "hf://"


def parse_repo_id(text: str) -> str:
    repo = text.removeprefix(PREFIX)
    if not REPO_ID.match(repo) or ".." in repo or repo.endswith((".git", ".")):
        raise QuantkitError(f"--repo {text!r}: expected a Hugging Face repo id ORG/NAME (letters, digits, '-', '_', '.')")
    return repo


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


class HuggingFaceHub(Destination):
    kind = "hf"

    @property
    def verify_ref(self) -> str:
        return "hf://" + self.ref

    def __init__(self, target: str):
        self.ref = parse_repo_id(target)

    def describe(self) -> str:
        return f"{endpoint()}/{self.ref}"

    def _api(self):
        from huggingface_hub import HfApi

        return HfApi()  # endpoint and token: huggingface_hub's own resolution, nothing of ours

    def _fail(self, what: str, e: Exception) -> PushError:
        from huggingface_hub import get_token

        reason = f"{type(e).__name__}: {e}"
        token = get_token()
        if token:
            reason = reason.replace(token, "<token>")
        return PushError(f"{what} {self.describe()} failed ({reason.splitlines()[0]}); files already uploaded stay on "
                         f"the hub: run the same command again to finish (they are not sent again)")

    def push(self, bundle: Bundle, options: PushOptions, reporter: Reporter) -> PushResult:
        from huggingface_hub import CommitOperationAdd

        api = self._api()
        ops = [CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(f.source) if f.source is not None else f.data)
               for f in bundle.files]
        try:
            with reporter.task(f"create {self.describe()}"):
                url = api.create_repo(self.ref, private=options.private, exist_ok=True, repo_type="model")
            if options.revision and options.revision != "main" and not options.create_pr:
                api.create_branch(self.ref, branch=options.revision, exist_ok=True)
            message = options.commit_message or f"quantkit push {bundle.artifact.name}"
            with reporter.task(f"upload {len(ops)} files ({_mb(bundle.size)}) to {self.describe()}"):
                info = api.create_commit(self.ref, operations=ops, commit_message=message, revision=options.revision,
                                         create_pr=options.create_pr)
        except QuantkitError:
            raise
        except Exception as e:  # httpx transport errors, HfHubHTTPError and OSError all end the same way
            raise self._fail("upload to", e) from None
        return PushResult(self.ref, url=info.commit_url, pr_url=info.pr_url,
                          details={"repo_url": str(url), "commit": info.oid})

    def download(self, folder: Path, reporter: Reporter, revision: str | None = None) -> dict:
        from huggingface_hub import snapshot_download

        try:
            with reporter.task(f"download {self.describe()}"):
                snapshot_download(self.ref, revision=revision, local_dir=folder)
        except Exception as e:
            raise self._fail("download from", e) from None
        cache = folder / ".cache"  # huggingface_hub's bookkeeping for local_dir downloads: not a pushed file
        if cache.is_dir():
            import shutil

            shutil.rmtree(cache)
        return {"ref": self.ref, "revision": revision}


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
