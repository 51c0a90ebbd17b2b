"""Push throughput to a real OCI registry on loopback (Debian's docker-registry, the CNCF distribution
registry) against a plain file copy of the same bytes, measured in one run.

    python benchmarks/push_throughput.py out/smollm2-135m-gguf [--repeat 3]

Prints, per repeat: the push to an empty repository (hash check, card, attestation, upload), the
same push again (every blob already there), a pull, and `shutil.copyfile` of the artifact's files
into a fresh folder on the same disk; then the ratios. The artifact is pushed with
--allow-unvalidated semantics (the benchmark measures transport, not gates).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from oci_registry import LoopbackRegistry  # noqa: E402

from quantkit.artifact import Artifact  # noqa: E402
from quantkit.publish.verbs import PushSettings, pull, push  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    art = Artifact.load(args.artifact)
    size = sum(r.bytes for r in art.manifest.files.values())
    settings = PushSettings(license="apache-2.0", allow_unvalidated=True, allow_failed=True)
    print(f"{art.name}: {len(art.manifest.files)} files, {size / 1e6:.1f} MB")
    rows = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="push-bench-") as tmp:
            tmp = Path(tmp)
            with LoopbackRegistry(tmp / "registry") as registry:
                ref = f"oci://{registry.host}/bench/{art.name}:r{i}"
                t = time.perf_counter()
                [first] = push(art.path, ref, settings=settings)
                t_push = time.perf_counter() - t
                t = time.perf_counter()
                [again] = push(art.path, ref, settings=settings)
                t_again = time.perf_counter() - t
                t = time.perf_counter()
                pull(ref, tmp / "pulled")
                t_pull = time.perf_counter() - t
            copy = tmp / "copy"
            copy.mkdir()
            t = time.perf_counter()
            for rel in art.manifest.files:
                (copy / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(art.path / rel, copy / rel)
            t_copy = time.perf_counter() - t
        rows.append((t_push, t_again, t_pull, t_copy, first.result.sent_bytes, again.result.sent_bytes))
        print(f"repeat {i + 1}: push {t_push:.2f} s ({first.result.sent_bytes / 1e6 / t_push:.0f} MB/s, "
              f"{first.result.sent_bytes / 1e6:.1f} MB sent); re-push {t_again:.2f} s ({again.result.sent_bytes} B sent); "
              f"pull {t_pull:.2f} s ({size / 1e6 / t_pull:.0f} MB/s); copy {t_copy:.2f} s ({size / 1e6 / t_copy:.0f} MB/s)")
    best = [min(r[k] for r in rows) for k in range(4)]
    print(f"best of {args.repeat}: push {best[0]:.2f} s = {best[0] / best[3]:.1f}x the copy's {best[3]:.2f} s; "
          f"re-push {best[1]:.2f} s; pull {best[2]:.2f} s = {best[2] / best[3]:.1f}x the copy")


if __name__ == "__main__":
    main()
