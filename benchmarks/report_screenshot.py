"""Render a run's validation.html in headless Chromium (Debian's `chromium`) and save a PNG, so
layout breakage is seen, not guessed.

    python benchmarks/report_screenshot.py out/ [--png out/validation.png]

Runs `quantkit validate FOLDER` first unless FOLDER/validation.html exists (--revalidate forces it).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--png", type=Path)
    ap.add_argument("--revalidate", action="store_true")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1600)
    args = ap.parse_args()
    page = args.folder / "validation.html"
    if args.revalidate or not page.is_file():
        subprocess.run([sys.executable, "-m", "quantkit.cli.main", "validate", str(args.folder)], check=False)
    if not page.is_file():
        raise SystemExit(f"no report at {page}")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        raise SystemExit("headless Chromium not found: apt-get install chromium")
    png = args.png or args.folder / "validation.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--window-size={args.width},{args.height}",
             f"--screenshot={png.resolve()}", page.resolve().as_uri()],
            check=True, capture_output=True, timeout=120,
        )
    print(f"screenshot: {png} ({png.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
