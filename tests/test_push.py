"""quantkit push / verify / pull: what is uploaded, what is refused, the card, the attestation, and the
round trips to a real OCI registry (Debian's docker-registry on loopback) and to a Hugging Face Hub
STAND-IN (tests/hub_standin.py: a small local server speaking the hub's upload API, not the Hub)."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import run_cli, tiny_recipe_text
from hub_standin import HubStandIn
from oci_registry import LoopbackRegistry, registry_binary

import quantkit
from quantkit.artifact import ATTESTATION_NAME, json_digest
from quantkit.errors import ArtifactError, QuantkitError
from quantkit.publish.destinations import destination_for
from quantkit.publish.provenance import AttestationError
from quantkit.publish.verbs import PushSettings, prepare, verify
from quantkit.validate import validate

pytestmark = pytest.mark.integration

TOKEN = "hf_quantkitTestTOKEN0123456789"
LOOSE = {"kld_mean_max": 100.0, "ppl_increase_max": 100.0, "top1_agreement_min": 0.0}


def require_registry():
    if registry_binary() is None:
        if os.environ.get("QUANTKIT_REQUIRE_REGISTRY"):
            pytest.fail("docker-registry is not installed and $QUANTKIT_REQUIRE_REGISTRY is set (.ci/run installs it)")
        pytest.skip("Debian's docker-registry is not installed (apt-get install docker-registry)")


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path, Path]:
    """An EC P-256 signing key, its public half, and an unrelated public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = tmp_path_factory.mktemp("keys")
    out = []
    for name in ("signer", "other"):
        key = ec.generate_private_key(ec.SECP256R1())
        (folder / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
        (folder / f"{name}.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
        out.append(folder / name)
    return out[0].with_suffix(".key"), out[0].with_suffix(".pub"), out[1].with_suffix(".pub")


@pytest.fixture(scope="module")
def tiny_artifact(tiny_model, tmp_path_factory) -> Path:
    """A validated (gates loosened: a random model) weight-only int8 artifact of the tiny Llama."""
    out = tmp_path_factory.mktemp("push") / "out"
    recipe = quantkit.parse_recipe(tiny_recipe_text(tiny_model, out, "  - {method: rtn, name: tiny-w8a16, scheme: W8A16}\n"))
    [art] = quantkit.quantize(recipe)
    assert validate(art.path, max_tokens=256, context=64, gate_overrides=LOOSE).passed
    return art.path


@pytest.fixture
def artifact(tiny_artifact, tmp_path) -> Path:
    """A private copy each test may change."""
    return Path(shutil.copytree(tiny_artifact, tmp_path / "art" / tiny_artifact.name))


def hub_env(hub: HubStandIn) -> dict:
    return {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": TOKEN, "QUANTKIT_PROGRESS": "plain"}


def local_paths(art: Path) -> list[str]:
    return [str(art.resolve()), str(art.resolve().parent), os.path.expanduser("~")]


# ------------------------------------------------------------------ what is refused


def test_refuses_unvalidated_stale_and_failed_artifacts_unless_allowed(artifact, keys):
    dest = destination_for("me/tiny")
    settings = PushSettings(license="apache-2.0")
    bundle = prepare(artifact, dest, settings)
    assert not bundle.notes

    report = json.loads((artifact / "validation.json").read_text())
    stale = {**report, "manifest_sha256": "0" * 64}
    (artifact / "validation.json").write_text(json.dumps(stale))
    with pytest.raises(ArtifactError, match="different quantkit.json.*--allow-unvalidated"):
        prepare(artifact, dest, settings)
    card = prepare(artifact, dest, PushSettings(license="apache-2.0", allow_unvalidated=True)).file("README.md").data.decode()
    body = card.split("---", 2)[2].lstrip()
    assert body.startswith("> **NOT VALIDATED:")
    unvalidated = prepare(artifact, dest, PushSettings(license="mit", allow_unvalidated=True))
    assert "validation.json" not in {f.path for f in unvalidated.files}

    (artifact / "validation.json").unlink()
    with pytest.raises(ArtifactError, match="never validated.*--allow-unvalidated"):
        prepare(artifact, dest, settings)

    # an unmeasured metric never passes its gate: a failure that does not depend on the numbers
    assert not validate(artifact, max_tokens=256, context=64, gate_overrides={"recovery_min": 0.5}).passed
    with pytest.raises(ArtifactError, match="failed validation gates.*recovery_min missing vs 0.5.*--allow-failed"):
        prepare(artifact, dest, settings)
    with pytest.raises(ArtifactError, match="--allow-failed"):  # --allow-unvalidated is not enough
        prepare(artifact, dest, PushSettings(license="apache-2.0", allow_unvalidated=True))
    failed = prepare(artifact, dest, PushSettings(license="apache-2.0", allow_failed=True))
    text = failed.file("README.md").data.decode()
    assert text.split("---", 2)[2].lstrip().startswith("> **FAILED VALIDATION:") and "| FAIL |" in text


def test_refuses_an_unknown_license_and_a_modified_file(artifact):
    dest = destination_for("me/tiny")
    with pytest.raises(QuantkitError, match="--license: the license of tiny-w8a16's base model .* is unknown"):
        prepare(artifact, dest, PushSettings())
    with open(artifact / "config.json", "a") as f:
        f.write(" ")
    with pytest.raises(ArtifactError, match="modified: config.json"):
        prepare(artifact, dest, PushSettings(license="apache-2.0"))


def test_bad_input_is_one_line_and_exit_2(artifact, keys, tmp_path):
    cases = [
        (["--repo", "not a repo"], "--repo 'not a repo': expected a Hugging Face repo id"),
        (["--to", "oci://Registry/UPPER:tag"], "expected oci://HOST[:PORT]/NAME"),
        (["--to", "s3://bucket/x"], "unknown destination 's3://'"),
        (["--repo", "me/x", "--to", "oci://localhost:5000/x:y"], "give exactly one of --repo"),
        (["--repo", "me/x", "--sign-key", str(tmp_path / "missing.key")], "--sign-key"),
        (["--repo", "me/{nope}"], "unknown placeholder"),
    ]
    (tmp_path / "bad.key").write_text("not a key")
    cases.append((["--repo", "me/x", "--sign-key", str(tmp_path / "bad.key")], "not a PEM private key"))
    for args, message in cases:
        r = run_cli("push", str(artifact), *args, "--license", "mit", "--dry-run")
        assert r.returncode == 2, (args, r.stderr)
        said = " ".join(r.stderr.split())  # the terminal may wrap long paths
        assert message in said and "Traceback" not in said, (args, r.stderr)


# ------------------------------------------------------------------ Hugging Face Hub (stand-in)


def test_dry_run_prints_everything_and_sends_nothing(artifact, keys):
    with HubStandIn() as hub:
        r = run_cli("push", str(artifact), "--repo", "me/{name}", "--license", "apache-2.0", "--sign-key", str(keys[0]),
                    "--dry-run", env=hub_env(hub))
        assert r.returncode == 0, r.stderr
        assert hub.state.requests == []
    for name in ("model.safetensors", "config.json", "quantkit.json", "README.md", ATTESTATION_NAME):
        assert name in r.stdout
    assert "would push" in r.stdout and "me/tiny-w8a16" in r.stdout and "dry run: nothing was uploaded" in r.stdout
    assert "base_model_relation" not in r.stdout  # a local base: no hub id to name
    assert "license: apache-2.0" in r.stdout and TOKEN not in r.stdout + r.stderr


def test_hub_push_resumes_after_a_dropped_connection_and_leaks_nothing(artifact, keys, monkeypatch):
    import hub_standin

    monkeypatch.setattr(hub_standin, "LFS_THRESHOLD", 100_000)  # the tiny weights go through LFS like real ones
    with HubStandIn() as hub:
        hub.state.drop_commits = 1
        args = ("push", str(artifact), "--repo", "me/tiny", "--license", "apache-2.0", "--sign-key", str(keys[0]), "--private")
        first = run_cli(*args, env=hub_env(hub))
        assert first.returncode == 1, first.stderr
        assert "upload to" in first.stderr and "run the same command again" in first.stderr and "Traceback" not in first.stderr
        weights_oid = json.loads((artifact / "quantkit.json").read_text())["files"]["model.safetensors"]["sha256"]
        assert hub.state.lfs_puts.count(weights_oid) == 1
        assert hub.state.commits == 0

        second = run_cli(*args, env=hub_env(hub))
        assert second.returncode == 0, second.stderr
        assert hub.state.lfs_puts.count(weights_oid) == 1  # not sent again
        assert hub.state.commits == 1 and hub.state.repos["me/tiny"]["private"]
        files = hub.files("me/tiny")
        assert set(files) == {*json.loads((artifact / "quantkit.json").read_text())["files"], "quantkit.json", "validation.json",
                              "README.md", ATTESTATION_NAME}
        assert all(auth for _, path, auth in hub.state.requests if path == "/api/repos/create")  # the token was used...
        for body in hub.state.received:  # ...but never sent in a body, and no local path went up
            assert TOKEN.encode() not in body
            for p in local_paths(artifact):
                assert p.encode() not in body, p
        assert TOKEN not in first.stdout + first.stderr + second.stdout + second.stderr

        pushed = json.loads(files["quantkit.json"])
        assert pushed["base_model"]["path"] == "" and not pushed["recipe"]["model"]["source"].startswith("/")
        assert "quantkit.local.json" not in files  # the side file with this machine's paths never goes up

        ok = run_cli("verify", "hf://me/tiny", "--key", str(keys[1]), env=hub_env(hub))
        assert ok.returncode == 0, ok.stderr
        assert "signature verified" in ok.stdout and "files match their sha256" in ok.stdout
        files["config.json"] = files["config.json"] + b" "
        bad = run_cli("verify", "hf://me/tiny", "--key", str(keys[1]), env=hub_env(hub))
        assert bad.returncode == 1 and "modified: config.json" in bad.stderr, bad.stderr


def test_create_pr_and_revision_reach_the_hub(artifact):
    with HubStandIn() as hub:
        env = hub_env(hub)
        r = run_cli("push", str(artifact), "--repo", "me/tiny", "--license", "mit", "--create-pr", "--commit-message", "first",
                    env=env)
        assert r.returncode == 0, r.stderr
        assert hub.state.pull_requests == 1 and "discussions/1" in r.stdout
        r = run_cli("push", str(artifact), "--repo", "me/tiny", "--license", "mit", "--revision", "v1", env=env)
        assert r.returncode == 0, r.stderr
        assert "README.md" in hub.files("me/tiny", "v1")


# ------------------------------------------------------------------ the attestation


def test_verify_catches_tampering_of_files_statement_and_key(artifact, keys, tmp_path, monkeypatch):
    with HubStandIn() as hub:
        r = run_cli("push", str(artifact), "--repo", "me/tiny", "--license", "mit", "--sign-key", str(keys[0]), env=hub_env(hub))
        assert r.returncode == 0, r.stderr
        pushed = tmp_path / "pushed"
        pushed.mkdir()
        for name, data in hub.files("me/tiny").items():
            (pushed / name).write_bytes(data)
    report = verify(pushed, key=keys[1])
    assert report.key_id and set(report.files) == {p.name for p in pushed.iterdir()} - {ATTESTATION_NAME}
    pred = report.predicate
    deps = {d["name"]: d for d in pred["buildDefinition"]["resolvedDependencies"]}
    manifest = json.loads((artifact / "quantkit.json").read_text())
    assert deps[f"base-model:{manifest['base_model']['source']}"]["digest"]["sha256"] == manifest["base_model"]["fingerprint"]
    assert manifest["calibration"] is None and not [d for d in deps if d.startswith("calibration:")]  # RTN needs no data
    [validation] = pred["runDetails"]["byproducts"]
    assert validation["annotations"]["passed"] is True
    assert pred["runDetails"]["builder"]["version"]["quantkit"] == quantkit.__version__

    with pytest.raises(AttestationError, match="does not verify"):
        verify(pushed, key=keys[2])
    with pytest.raises(QuantkitError, match="--key"):
        verify(pushed)
    assert verify(pushed, digests_only=True).key_id is None
    from collections import Counter

    from quantkit import files

    reads, real_sha256 = Counter(), files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda p, *a, **k: reads.update([Path(p).name]) or real_sha256(p, *a, **k))
    verify(pushed, digests_only=True)
    assert reads and max(reads.values()) == 1, f"a file was hashed twice: {reads}"  # attestation and manifest share it
    monkeypatch.undo()

    envelope = json.loads((pushed / ATTESTATION_NAME).read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["subject"][0]["digest"]["sha256"] = "0" * 64
    forged = {**envelope, "payload": base64.b64encode(json.dumps(statement).encode()).decode()}
    (pushed / ATTESTATION_NAME).write_text(json.dumps(forged))
    with pytest.raises(AttestationError, match="does not verify"):
        verify(pushed, key=keys[1])
    (pushed / ATTESTATION_NAME).write_text(json.dumps(envelope))

    (pushed / "extra.py").write_text("print('hi')")
    r = run_cli("verify", str(pushed), "--key", str(keys[1]))
    assert r.returncode == 1 and "not in the attestation: extra.py" in r.stderr


# ------------------------------------------------------------------ OCI (a real registry on loopback)


def test_oci_round_trip_against_a_real_registry(artifact, keys, tmp_path):
    require_registry()
    with LoopbackRegistry(tmp_path / "registry") as registry:
        ref = f"oci://{registry.host}/models/tiny:w8a16"
        r = run_cli("push", str(artifact), "--to", ref, "--license", "apache-2.0", "--sign-key", str(keys[0]), "--json")
        assert r.returncode == 0, r.stderr
        [out] = json.loads(r.stdout)
        result = out["result"]
        manifest = result["details"]["manifest"]
        assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        assert manifest["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
        assert manifest["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
        kinds = {layer["annotations"]["org.cncf.model.filepath"]: layer["mediaType"] for layer in manifest["layers"]}
        assert kinds["model.safetensors"] == "application/vnd.cncf.model.weight.v1.raw"
        assert kinds["config.json"] == "application/vnd.cncf.model.weight.config.v1.raw"
        assert kinds["README.md"] == "application/vnd.cncf.model.doc.v1.raw"
        assert ATTESTATION_NAME not in kinds  # attached as a referrer instead
        assert manifest["annotations"]["dev.quantkit.quantization.method"] == "rtn"
        config = json.loads(registry.blob_path(manifest["config"]["digest"]).read_bytes())
        assert config["modelfs"]["diffIds"] == [layer["digest"] for layer in manifest["layers"]]
        assert config["descriptor"]["licenses"] == ["apache-2.0"] and config["config"]["format"] == "safetensors"
        assert "tag schema" in result["details"]["attestation"]  # distribution 2.8 has no referrers API

        again = run_cli("push", str(artifact), "--to", ref, "--license", "apache-2.0", "--sign-key", str(keys[0]), "--json")
        [out2] = json.loads(again.stdout)
        assert out2["result"]["digest"] == result["digest"]

        pulled = tmp_path / "pulled"
        r = run_cli("pull", ref, str(pulled))
        assert r.returncode == 0, r.stderr
        for name in json.loads((artifact / "quantkit.json").read_text())["files"]:
            assert (pulled / name).read_bytes() == (artifact / name).read_bytes(), name
        assert quantkit.Artifact.load(pulled).name == "tiny-w8a16"
        assert run_cli("pull", ref, str(pulled)).returncode == 2  # never over an existing folder

        ok = run_cli("verify", ref, "--key", str(keys[1]))
        assert ok.returncode == 0, ok.stderr
        wrong = run_cli("verify", ref, "--key", str(keys[2]))
        assert wrong.returncode == 1 and "does not verify" in wrong.stderr

        for root, _, names in os.walk(tmp_path / "registry" / "data"):
            for name in names:
                data = (Path(root) / name).read_bytes()
                for p in local_paths(artifact):
                    assert p.encode() not in data, (name, p)

        weights = next(layer for layer in manifest["layers"]
                       if layer["annotations"]["org.cncf.model.filepath"] == "model.safetensors")
        blob = registry.blob_path(weights["digest"])
        data = bytearray(blob.read_bytes())
        data[-1] ^= 1
        blob.write_bytes(bytes(data))
        tampered = run_cli("verify", ref, "--key", str(keys[1]))
        assert tampered.returncode == 1 and "does not match its digest" in tampered.stderr, tampered.stderr


def test_a_dead_registry_fails_fast_with_a_clear_message(artifact):
    from oci_registry import free_port

    r = run_cli("push", str(artifact), "--to", f"oci://127.0.0.1:{free_port()}/x:y", "--license", "mit", timeout=120)
    assert r.returncode == 1 and "failed (ConnectionError" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_folder_of_artifacts_needs_a_name_per_artifact(artifact, tmp_path):
    twin = shutil.copytree(artifact, artifact.parent / "tiny-twin")
    manifest = json.loads((twin / "quantkit.json").read_text())
    manifest["name"] = manifest["output"]["name"] = "tiny-twin"
    manifest["inputs"]["output"] = json_digest(manifest["output"])  # as quantize would have recorded it
    (twin / "quantkit.json").write_text(json.dumps(manifest))
    r = run_cli("push", str(artifact.parent), "--repo", "me/same", "--license", "mit", "--dry-run", "--allow-unvalidated")
    assert r.returncode == 2 and "put {name} in it" in r.stderr
    r = run_cli("push", str(artifact.parent), "--repo", "me/{name}", "--license", "mit", "--dry-run", "--allow-unvalidated",
                "--json")
    assert r.returncode == 0, r.stderr
    assert sorted(o["destination"].rsplit("/", 1)[1] for o in json.loads(r.stdout)) == ["tiny-twin", "tiny-w8a16"]

