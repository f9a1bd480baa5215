"""The audit report looked at as a person would: headless Chromium renders ``audit.html``.

:func:`render_png` writes a screenshot of the page (committed beside the report in
``results/audit/``); :func:`image_load_status` opens the page, waits for it to load, and reports
for every ``<img>`` whether the browser decoded it (``complete`` and ``naturalWidth > 0``), so a
broken embedded image is caught the way a reader would notice it. Both need a Chromium
(Debian: ``apt-get install -y chromium``); :func:`find_chromium` says where it is, or ``None``.

Run as ``python -m fedbench.audit.render REPORT.html [OUT.png]``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Flags for a headless Chromium in a container (no GPU, possibly running as root).
FLAGS = ("--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
         "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions")

#: Appended to a copy of the page: after ``load``, its images' state and height as JSON.
_PROBE = """<script>window.addEventListener('load', function () {
  var s = Array.prototype.map.call(document.images, function (i) {
    return {alt: i.alt, loaded: i.complete && i.naturalWidth > 0, width: i.naturalWidth}; });
  document.body.setAttribute('data-probe', JSON.stringify(
    {images: s, height: document.documentElement.scrollHeight,
     width: document.documentElement.scrollWidth})); });</script>"""


def find_chromium() -> str | None:
    """The path of a Chromium/Chrome executable (``$CHROMIUM`` first), or ``None``."""
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    for name in CANDIDATES:
        if shutil.which(name):
            return shutil.which(name)
    return None


def _chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium found (tried $CHROMIUM, " + ", ".join(CANDIDATES)
                                + "); Debian: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout, check=True)


def render_png(html_path: str | Path, png_path: str | Path, width: int = 1200,
               height: int | None = None, timeout: float = 120.0) -> Path:
    """Screenshot of ``html_path`` into ``png_path``, ``width`` pixels wide; ``height``: the
    window's (``None``: the page's full height as laid out at this width)."""
    html_path, png_path = Path(html_path).resolve(), Path(png_path).resolve()
    if height is None:
        height = min(int(_probe(html_path, width, timeout)["height"]) + 16, 16000)
    _chromium([f"--screenshot={png_path}", f"--window-size={width},{height}",
               "--virtual-time-budget=5000", html_path.as_uri()], timeout)
    return png_path


def _probe(html_path: Path, width: int, timeout: float) -> dict:
    """The page's images after ``load`` and its laid-out height, read from Chromium's DOM."""
    import html

    page = Path(html_path).read_text()
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.html"
        probe.write_text(page.replace("</body>", _PROBE + "</body>") if "</body>" in page
                         else page + _PROBE)
        done = _chromium([f"--window-size={width},800", "--virtual-time-budget=5000",
                          "--dump-dom", probe.as_uri()], timeout)
    found = re.search(r'<body[^>]*data-probe="([^"]*)"', done.stdout)
    if found is None:
        raise RuntimeError("Chromium did not run the page's load handler; DOM starts: "
                           + done.stdout[:300])
    return json.loads(html.unescape(found.group(1)))


def page_width(html_path: str | Path, window: int = 1200, timeout: float = 120.0) -> int:
    """The laid-out width of the page in a ``window``-pixel-wide Chromium window
    (``scrollWidth``): more than ``window`` means a reader has to scroll sideways."""
    return int(_probe(Path(html_path), window, timeout)["width"])


def image_load_status(html_path: str | Path, timeout: float = 120.0) -> list[dict]:
    """Every ``<img>`` of the page after it loaded in Chromium: ``alt``, ``loaded``, ``width``
    (its decoded width in pixels; 0 when it did not load)."""
    return _probe(Path(html_path), 1200, timeout)["images"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or len(argv) > 2:
        print("usage: python -m fedbench.audit.render REPORT.html [OUT.png]", file=sys.stderr)
        return 2
    html_path = Path(argv[0])
    png = Path(argv[1]) if len(argv) > 1 else html_path.with_suffix(".png")
    if find_chromium() is None:
        print(f"no Chromium: {html_path} not rendered (Debian: apt-get install -y chromium)",
              file=sys.stderr)
        return 1
    status = image_load_status(html_path)
    broken = [s["alt"] for s in status if not s["loaded"]]
    render_png(html_path, png)
    print(f"{png}: {len(status) - len(broken)} of {len(status)} images loaded"
          + (f"; broken: {broken}" if broken else ""))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
