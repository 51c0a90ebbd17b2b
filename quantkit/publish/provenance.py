"""A signed provenance attestation for a pushed artifact: an in-toto Statement v1 whose subjects are the
pushed files' sha256 digests and whose predicate (SLSA provenance v1) records the base model, the recipe,
the calibration set, the tool versions and the validation verdict; wrapped in a DSSE envelope.

The statement is built with `in-toto-attestation`, signed and verified with `securesystemslib`'s DSSE.
`model-signing` was tried first: it signs folders offline, but its predicate is fixed to its own
(file digests only), so it cannot carry provenance (docs/decisions.md).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from quantkit.errors import QuantkitError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://github.com/quantkit/quantkit/blob/main/docs/formats.md#provenance-v1"
BUILDER_ID = "https://pypi.org/project/quantkit/"
KEY_PASSWORD_ENV = "QUANTKIT_SIGN_KEY_PASSWORD"


class AttestationError(QuantkitError):
    """An attestation that does not verify: exit 1, like a failed gate."""

    exit_code = 1


def statement(subjects: dict[str, str], predicate: dict) -> dict:
    """An in-toto Statement v1 over `subjects` ({name: sha256}), validated by in-toto-attestation."""
    from google.protobuf import json_format
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.v1.statement import Statement

    descriptors = [ResourceDescriptor(name=name, digest={"sha256": digest}).pb for name, digest in sorted(subjects.items())]
    st = Statement(descriptors, PREDICATE_TYPE, predicate)
    st.validate()
    return json.loads(json_format.MessageToJson(st.pb))


def load_private_key(path: Path):
    from cryptography.hazmat.primitives import serialization

    password = os.environ.get(KEY_PASSWORD_ENV)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise QuantkitError(f"--sign-key {path}: cannot read it ({e.strerror})") from None
    try:
        return serialization.load_pem_private_key(data, password.encode() if password else None)
    except TypeError:
        raise QuantkitError(f"--sign-key {path}: the key is encrypted; put its password in ${KEY_PASSWORD_ENV}") from None
    except ValueError:
        raise QuantkitError(f"--sign-key {path}: not a PEM private key (EC P-256/P-384, Ed25519 or RSA), "
                            f"or ${KEY_PASSWORD_ENV} is wrong") from None


def load_public_key(path: Path):
    """A PEM public key; a private key file is accepted too (its public half is used)."""
    from cryptography.hazmat.primitives import serialization
    from securesystemslib.signer import SSlibKey

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise QuantkitError(f"--key {path}: cannot read it ({e.strerror})") from None
    try:
        public = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            public = load_private_key(Path(path)).public_key()
        except QuantkitError:
            raise QuantkitError(f"--key {path}: not a PEM public key (EC P-256/P-384, Ed25519 or RSA)") from None
    try:
        return SSlibKey.from_crypto(public)
    except ValueError as e:
        raise QuantkitError(f"--key {path}: unsupported key type ({e})") from None


def sign(stmt: dict, key_path: Path | None) -> dict:
    """The DSSE envelope of `stmt`, signed with the PEM private key at `key_path` (unsigned when None)."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import CryptoSigner

    payload = json.dumps(stmt, sort_keys=True, separators=(",", ":")).encode()
    envelope = Envelope(payload=payload, payload_type=PAYLOAD_TYPE, signatures={})
    if key_path is not None:
        try:
            envelope.sign(CryptoSigner(load_private_key(key_path)))
        except ValueError as e:  # a key type securesystemslib cannot sign with (e.g. EC P-192)
            raise QuantkitError(f"--sign-key {key_path}: cannot sign with this key ({e})") from None
    return envelope.to_dict()


def key_id(key_path: Path) -> str:
    """The key id of a signing key (what the card names and `verify` reports)."""
    from securesystemslib.signer import SSlibKey

    try:
        return SSlibKey.from_crypto(load_private_key(key_path).public_key()).keyid
    except ValueError as e:
        raise QuantkitError(f"--sign-key {key_path}: unsupported key type ({e})") from None


@dataclass
class Attestation:
    """A parsed envelope: its statement, signer key ids and the subjects' digests."""

    envelope: dict
    statement: dict
    subjects: dict[str, str] = field(default_factory=dict)

    @property
    def key_ids(self) -> list[str]:
        return [s.get("keyid", "") for s in self.envelope.get("signatures", [])]

    @property
    def predicate(self) -> dict:
        return self.statement.get("predicate") or {}


def parse(data: bytes, where: str) -> Attestation:
    try:
        envelope = json.loads(data)
        if envelope.get("payloadType") != PAYLOAD_TYPE:
            raise AttestationError(f"{where}: payloadType is {envelope.get('payloadType')!r}, not {PAYLOAD_TYPE}")
        stmt = json.loads(base64.b64decode(envelope["payload"], validate=True))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise AttestationError(f"{where}: not a DSSE envelope of an in-toto statement ({type(e).__name__}: {e})") from None
    if stmt.get("_type") != STATEMENT_TYPE or stmt.get("predicateType") != PREDICATE_TYPE:
        raise AttestationError(f"{where}: statement type {stmt.get('_type')!r} / predicate {stmt.get('predicateType')!r} "
                               f"is not quantkit's ({STATEMENT_TYPE}, {PREDICATE_TYPE})")
    subjects = {}
    for s in stmt.get("subject") or []:
        digest = (s.get("digest") or {}).get("sha256")
        if not s.get("name") or not digest:
            raise AttestationError(f"{where}: a subject without a name or a sha256 digest: {s}")
        subjects[s["name"]] = digest
    return Attestation(envelope, stmt, subjects)


def verify_signature(att: Attestation, public_key_path: Path, where: str) -> str:
    """Check the envelope's signature with the public key; returns the key id that verified it."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError

    key = load_public_key(public_key_path)
    if not att.envelope.get("signatures"):
        raise AttestationError(f"{where}: the attestation is not signed (pushed without --sign-key)")
    try:
        accepted = Envelope.from_dict(json.loads(json.dumps(att.envelope))).verify([key], 1)  # from_dict mutates its input
    except (VerificationError, ValueError, KeyError) as e:
        raise AttestationError(f"{where}: the signature does not verify with {public_key_path} "
                               f"(key id {key.keyid[:16]}): {e}") from None
    return next(iter(accepted))


def keep_attested_report(folder: Path) -> str | None:
    """Before `validate` writes its reports into `folder`: where the folder carries an attestation whose subjects
    list validation.json and validation.json is still that attested file (a pulled artifact), move it to
    validation.attested.json, where `verify` checks it; validate's own report is then validation.json, which
    `push` reads. Returns the line saying so, or None when there was nothing to keep."""
    from quantkit.artifact import ATTESTATION_NAME, ATTESTED_VALIDATION_NAME
    from quantkit.files import sha256_file
    from quantkit.publish.bundle import VALIDATION_NAME

    report, att_path = folder / VALIDATION_NAME, folder / ATTESTATION_NAME
    if not report.is_file() or not att_path.is_file():
        return None
    try:
        att = parse(att_path.read_bytes(), str(att_path))
    except AttestationError as e:
        return f"{e}; {VALIDATION_NAME} is replaced (no attested report to keep)"
    if att.subjects.get(VALIDATION_NAME) != sha256_file(report):
        return None  # a report written here before (the attested one is kept already), or not the attested file
    report.replace(folder / ATTESTED_VALIDATION_NAME)
    return (f"{folder}: the attested {VALIDATION_NAME} is kept as {ATTESTED_VALIDATION_NAME} (quantkit verify checks it "
            f"there); this run's report is {VALIDATION_NAME}")
