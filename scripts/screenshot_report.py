"""Render an HTML report (e.g. from ``xray_gen.evaluation.html_report``) to a PNG with headless Chromium.

    python scripts/screenshot_report.py report.html [--out report.png] [--window-size 1280,2400]
        [--chromium /usr/bin/chromium]

Network access is blocked for the page (every host name fails to resolve), so the screenshot
also shows whether the report is really self-contained. Chromium is optional for the project:
install it with e.g. ``apt-get install chromium``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Optional, Sequence

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome",
              "headless_shell")


def find_chromium(candidates: Sequence[str] = CANDIDATES) -> Optional[str]:
    """The first Chromium-like binary on PATH (``$CHROMIUM`` first, when set), else None."""
    env = os.environ.get("CHROMIUM")
    for name in ((env,) if env else ()) + tuple(candidates):
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(html_path: str, png_path: str, *, width: int = 1280, height: int = 2400,
               chromium: Optional[str] = None, timeout: float = 120.0) -> str:
    """Screenshots ``html_path`` into ``png_path`` (``width`` x ``height`` window); returns ``png_path``."""
    binary = chromium or find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium binary on PATH (tried " + ", ".join(CANDIDATES) + ")")
    if not os.path.isfile(html_path):
        raise FileNotFoundError(html_path)
    png_path = os.path.abspath(png_path)
    os.makedirs(os.path.dirname(png_path), exist_ok=True)
    if os.path.exists(png_path):
        os.remove(png_path)
    with tempfile.TemporaryDirectory(prefix="xray_gen_chromium_") as profile:
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--no-default-browser-check", "--hide-scrollbars", "--mute-audio",
               f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
               f"--window-size={int(width)},{int(height)}", f"--screenshot={png_path}",
               "file://" + os.path.abspath(html_path)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                              text=True, env={**os.environ, "HOME": profile})
    if not os.path.isfile(png_path) or os.path.getsize(png_path) == 0:
        raise RuntimeError(f"chromium wrote no screenshot (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return png_path


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("html")
    ap.add_argument("--out", default=None, help="PNG path (default: the report's path with .png)")
    ap.add_argument("--window-size", default="1280,2400", help="WIDTH,HEIGHT in CSS pixels")
    ap.add_argument("--chromium", default=None, help="browser binary (default: found on PATH)")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args(argv)
    width, height = (int(x) for x in args.window_size.split(","))
    out = args.out or os.path.splitext(args.html)[0] + ".png"
    print(screenshot(args.html, out, width=width, height=height, chromium=args.chromium, timeout=args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
