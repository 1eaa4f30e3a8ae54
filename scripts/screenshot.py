"""Screenshot an HTML report with headless Chromium and check the picture is not blank.

    python scripts/screenshot.py reports/gd_wipes/report.html /tmp/gd_wipes.png

Exit 0 with a one-line summary when the page rendered (enough rows with ink, enough distinct colours for
figures to be present); exit 1 with a one-line reason when it looks blank; exit 2 with a one-line error when
Chromium or the HTML file is missing or Chromium fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from lab.io import OneLineParser

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def find_chromium() -> str | None:
    """``/usr/bin/chromium`` if present, else ``chromium`` (or ``chromium-browser``) on PATH."""
    if os.path.exists("/usr/bin/chromium") and os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(chromium: str, html: Path, png: Path, window: str, timeout: float) -> None:
    """Runs headless Chromium on ``html``; ``RuntimeError`` with one line when no PNG comes out."""
    with tempfile.TemporaryDirectory(prefix="screenshot-profile-") as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={window}",
               f"--screenshot={png}", html.resolve().as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"chromium did not finish within {timeout:g} s") from None
        if not png.is_file() or png.stat().st_size == 0:
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()
            raise RuntimeError(f"chromium exited {proc.returncode} without writing {png}"
                               + (f" ({tail[-1][:200]})" if tail else ""))


def inspect(png: Path) -> dict:
    """Size, share of rows with non-white pixels and number of distinct colours of a PNG."""
    from PIL import Image

    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB"))
    inked = np.any(rgb.min(axis=-1) < 245, axis=1)  # a row with any pixel visibly off white
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    return {"width": rgb.shape[1], "height": rgb.shape[0], "inked_rows": float(inked.mean()),
            "colours": int(np.unique(packed).size)}


def main(argv=None) -> int:
    p = OneLineParser(prog="screenshot.py", description=__doc__.split("\n\n")[0])
    p.add_argument("html", type=Path, help="the HTML file to render")
    p.add_argument("png", type=Path, help="where to write the screenshot")
    p.add_argument("--window-size", default="1200,4000", help="WIDTH,HEIGHT of the headless window")
    p.add_argument("--min-inked-rows", type=float, default=0.1, help="share of rows that must have ink")
    p.add_argument("--min-colours", type=int, default=1000, help="distinct colours required (figures present)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for chromium")
    args = p.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        print("screenshot.py: error: chromium not found (/usr/bin/chromium or chromium on PATH)", file=sys.stderr)
        return 2
    if not args.html.is_file():
        print(f"screenshot.py: error: no such file: {args.html}", file=sys.stderr)
        return 2
    try:
        args.png.parent.mkdir(parents=True, exist_ok=True)
        args.png.unlink(missing_ok=True)
        screenshot(chromium, args.html, args.png, args.window_size, args.timeout)
        stats = inspect(args.png)
    except (RuntimeError, OSError, ValueError) as e:
        print(f"screenshot.py: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    summary = (f"{args.png}: {stats['width']}x{stats['height']}, {stats['inked_rows']:.0%} of rows inked, "
               f"{stats['colours']} colours")
    if stats["inked_rows"] < args.min_inked_rows:
        print(f"blank: {summary} (fewer than {args.min_inked_rows:.0%} of rows inked)")
        return 1
    if stats["colours"] < args.min_colours:
        print(f"blank: {summary} (fewer than {args.min_colours} colours: no figures?)")
        return 1
    print(f"ok: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
