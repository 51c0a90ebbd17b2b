"""A place artifacts are pushed to and pulled from. One module per kind (Hugging Face Hub, OCI registry),
registered in `quantkit.publish.destinations.DESTINATIONS`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from quantkit.errors import QuantkitError
from quantkit.progress import Reporter
from quantkit.publish.bundle import Bundle


class PushError(QuantkitError):
    """The destination refused the upload or could not be reached (exit 1: nothing wrong with the input)."""

    exit_code = 1


@dataclass(frozen=True)
class PushOptions:
    private: bool = False
    revision: str | None = None
    create_pr: bool = False
    commit_message: str | None = None


@dataclass
class PushResult:
    ref: str
    url: str | None = None
    pr_url: str | None = None
    digest: str | None = None  # OCI manifest digest
    sent_bytes: int = 0  # bytes actually sent (files the destination already had are not)
    skipped: list[str] = field(default_factory=list)  # files the destination already had
    details: dict = field(default_factory=dict)


class Destination(ABC):
    kind: str
    ref: str  # as the user names it in a card or a command
    # a user copies the files to a folder before running them (`quantkit pull`): the card's run commands
    # name that folder; otherwise runtimes fetch from `ref` themselves (a hub repo id)
    pulled_before_run: bool = False

    @property
    def verify_ref(self) -> str:
        """How `quantkit verify` names what was pushed here."""
        return self.ref

    @abstractmethod
    def push(self, bundle: Bundle, options: PushOptions, reporter: Reporter) -> PushResult: ...

    @abstractmethod
    def download(self, folder: Path, reporter: Reporter) -> dict:
        """Write every pushed file (the attestation included) into `folder`; returns what was fetched."""

    def describe(self) -> str:
        return self.ref
