"""`quantkit validate` on the four SmolLM2-135M compressed-tensors artifacts, before and after the
stored base reference, measured in one run: wall time and peak RSS of one fresh subprocess that
validates the whole folder (serve check off, CPU).

before: the code at --before (default 3df14a2, extracted with `git archive` under /tmp and imported
through PYTHONPATH with this venv): base and artifact loaded together for every artifact.
after: the working tree: the base scored once into a full-vocabulary 16-bit reference in the cache,
then one model in memory per artifact. "cold" starts with no stored references (QUANTKIT_CACHE is a
temp folder linking every entry of the real cache except `references/`: the float base, fingerprints
and llama.cpp are found as usual); "warm" runs again on the references the cold run stored.
Both sides get the same --context and --stride; the old code is also run at its own default stride
(= context). Ratios are against before at the same stride. Peak RSS is the subprocess's ru_maxrss.

    python benchmarks/validate_before_after.py                           # --max-tokens 1024, ~ a few minutes
    python benchmarks/validate_before_after.py --max-tokens 4096 --artifacts out/
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# runs the command given after it and prints its wall time and peak RSS; a small process of its own,
# so the child's ru_maxrss is not inflated by a large parent's address space at fork time
WRAPPER = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
           "rc = subprocess.run(sys.argv[1:]).returncode; "
           "print(json.dumps({'rc': rc, 'wall_s': time.perf_counter() - t, "
           "'peak_rss_bytes': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))")
QUIET = {"TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}


def old_tree(rev: str) -> Path:
    """quantkit as of `rev`, extracted once under /tmp (nothing in the repository changes)."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=9", rev], capture_output=True, text=True,
                            check=True).stdout.strip()
    tree = Path(tempfile.gettempdir()) / f"quantkit-{commit}"
    if not (tree / "quantkit" / "__init__.py").is_file():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "quantkit"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def validate_cmd(folder: Path, context: int, stride: int | None, max_tokens: int) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", str(folder), "--context", str(context),
            "--stride", str(stride or 0), "--max-tokens", str(max_tokens)]


def measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, dict]:
    """(wall s, peak RSS bytes, the child's JSON result line) of `cmd` run in a fresh wrapper process."""
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True,
                          env={**os.environ, **QUIET, **(env or {})})
    lines = proc.stdout.strip().splitlines()
    usage = json.loads(lines[-1])
    if usage["rc"] != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return usage["wall_s"], usage["peak_rss_bytes"], json.loads(lines[-2])


def child(folder: str, context: int, stride: int, max_tokens: int) -> None:
    import inspect

    import quantkit
    from quantkit.validate import validate, validate_run

    options = {"context": context, "stride": stride or None, "max_tokens": max_tokens, "serve": None}
    if "device" in inspect.signature(validate).parameters:  # the old code has no device option (CPU only)
        options["device"] = "cpu"
    reports = validate_run(folder, **options)
    scored = sum(s.n_tokens for r in reports for t in r.targets for s in t.scores)
    print(json.dumps({"quantkit": quantkit.__file__, "stride": reports[0].settings["stride"], "scored": scored}))


def cache_without_references(root: Path) -> Path:
    """A fresh QUANTKIT_CACHE linking every entry of the real cache but `references/`."""
    from quantkit.files import cache_dir

    real = cache_dir()
    root.mkdir(parents=True)
    for entry in real.iterdir():
        if entry.name != "references":
            (root / entry.name).symlink_to(entry)
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", type=Path, default=Path("/tmp/smol-art"),
                    help="folder of artifacts; its compressed-tensors ones are validated")
    ap.add_argument("--before", default="3df14a2", help="git revision of the lockstep code")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.context, args.stride, args.max_tokens)
        return

    with tempfile.TemporaryDirectory(prefix="validate-bench-") as tmp:
        folder = Path(tmp) / "artifacts"
        folder.mkdir()
        for art in sorted(args.artifacts.iterdir()):
            manifest = art / "quantkit.json"
            if manifest.is_file() and json.loads(manifest.read_text()).get("format") == "compressed-tensors":
                (folder / art.name).symlink_to(art.resolve())
        names = sorted(p.name for p in folder.iterdir())
        print(f"{len(names)} artifacts: {', '.join(names)}; context {args.context}, max tokens {args.max_tokens}", flush=True)
        old = {"PYTHONPATH": str(old_tree(args.before))}
        new = {"PYTHONPATH": str(REPO), "QUANTKIT_CACHE": str(cache_without_references(Path(tmp) / "cache"))}
        runs = [
            (f"before {args.before}", old, args.stride),
            (f"before {args.before}, its default stride", old, None),
            ("after, cold reference cache", new, args.stride),
            ("after, warm reference cache", new, args.stride),
        ]
        rows = []
        for label, env, stride in runs:
            wall, rss, result = measure(validate_cmd(folder, args.context, stride, args.max_tokens), env)
            rows.append((label, wall, rss, result))
            print(f"  {label}: {wall:.1f} s, {rss / 1e9:.2f} GB ({result['quantkit']})", flush=True)

    _, wall0, rss0, _ = rows[0]
    print(f"\n{'variant':38s} {'stride':>6s} {'scored':>7s} {'wall s':>7s} {'peak GB':>8s} {'wall/before':>11s} "
          f"{'RSS/before':>10s}")
    for label, wall, rss, result in rows:
        print(f"{label:38s} {result['stride']:6d} {result['scored']:7d} {wall:7.1f} {rss / 1e9:8.2f} {wall / wall0:11.2f} "
              f"{rss / rss0:10.2f}")


if __name__ == "__main__":
    main()
