"""A real browser looks at ``nerfbs view``: headless Chromium (Debian's ``chromium`` package) loads the
viewer's page and writes a screenshot (the avatar behind the panel of sliders).

    python bench/viewer_screenshot.py runs/me/checkpoints/latest.pth --out /tmp/viewer/screenshot.png

Starts the viewer on a free local port, drives Chromium over its DevTools protocol (load the page, wait
for the first full-resolution frame, take the screenshot), stops the viewer. ``tests/test_viewer_browser.py``
runs the same function on the tiny test avatar (and skips when Chromium is missing).
"""
from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerfbs.atomic import write_bytes  # noqa: E402

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) executable on PATH, or None."""
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def chromium_screenshot(url: str, out: Path, *, width: int = 1280, height: int = 800,
                        ready: Optional[Callable[[], bool]] = None, settle: float = 3.0,
                        timeout: float = 180.0) -> Path:
    """Load ``url`` in headless Chromium and write a ``width`` x ``height`` PNG screenshot to ``out``.

    The page is driven over the DevTools protocol, so the screenshot waits for the page rather than for a
    guessed time: once ``ready()`` is true (e.g. the viewer sent a full-resolution frame), ``settle`` more
    seconds let the browser draw it. Raises RuntimeError when Chromium fails."""
    from websockets.sync.client import connect

    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError("no chromium on PATH: apt-get install -y chromium")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    # ignore_cleanup_errors: a Chromium still closing may write into its profile while the folder is removed
    with tempfile.TemporaryDirectory(prefix="nerfbs-chromium-", ignore_cleanup_errors=True) as profile:
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
                   "--remote-debugging-port=0", "about:blank"]
        browser = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "HOME": profile})
        try:
            port = None
            for line in browser.stderr:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/..."
                found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
                if found:
                    port = int(found.group(1))
                    break
            if port is None:
                raise RuntimeError(f"chromium did not start (exit {browser.wait()})")
            threading.Thread(target=browser.stderr.read, daemon=True).start()  # keep its pipe drained
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
                page = next(t for t in json.load(answer) if t["type"] == "page")
            with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
                calls = itertools.count(1)

                def call(method: str, **params):
                    ident = next(calls)
                    ws.send(json.dumps({"id": ident, "method": method, "params": params}))
                    while True:
                        reply = json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 1.0)))
                        if reply.get("id") == ident:
                            if "error" in reply:
                                raise RuntimeError(f"chromium: {method}: {reply['error']}")
                            return reply["result"]

                call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
                call("Page.navigate", url=url)
                while ready is not None and not ready():
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{url}: the page was not ready within {timeout:.0f} s")
                    time.sleep(0.2)
                time.sleep(settle)
                shot = call("Page.captureScreenshot", format="png")
            write_bytes(out, base64.b64decode(shot["data"]))
        finally:
            browser.terminate()
            try:
                browser.wait(10)
            except subprocess.TimeoutExpired:
                browser.kill()
    return out


def full_frame_sent(viewer) -> bool:
    """Whether ``viewer`` (a ``nerfbs.viewer.server.Viewer``) sent a browser a frame at its full resolution."""
    stats = viewer.loop.stats()
    return stats.frames > 0 and max(stats.size) == viewer.state.side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, default=Path("/tmp/viewer/screenshot.png"))
    parser.add_argument("--size", default="1280x800", help="window WIDTHxHEIGHT")
    parser.add_argument("--resolution", type=int, default=0, help="the viewer's image side (0: its default)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between the first full frame and the shot")
    args = parser.parse_args()
    from nerfbs.viewer.server import open_viewer

    width, height = (int(v) for v in args.size.lower().split("x"))
    with open_viewer(args.checkpoint, port=0, side=args.resolution) as viewer:
        path = chromium_screenshot(viewer.url, args.out, width=width, height=height, settle=args.settle,
                                   ready=lambda: full_frame_sent(viewer))
        stats = viewer.loop.stats()
    print(f"{path}: {viewer.url} in {width}x{height}; the viewer sent {stats.frames} frames, the last "
          f"{stats.size[1]}x{stats.size[0]} in {stats.render_ms:.0f} ms")


if __name__ == "__main__":
    main()
