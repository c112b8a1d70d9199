"""Open an HTML page (an `align report`) in headless Chromium: console errors, drawn plots, screenshot.

    python scripts/tools/render_report.py report.html --screenshot report.png [--width 1280]

Talks to Chromium over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages
ending in a NUL byte on file descriptors 3 and 4), so it needs nothing beyond the Python standard
library and a `chromium` binary (Debian: `apt-get install chromium`; `.ci/run` installs it). It
loads the page, collects every console error, uncaught exception and failed log entry, counts
each `.plot`'s drawn marks (`data-drawn`, set by the page's script) and SVG shapes, and saves a
full-page PNG. Exit status 1 when the page logged errors or a plot drew nothing.

Used by tests/test_report_browser.py and to make the screenshots under results/reports/.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """A Chromium binary: $CHROMIUM (None when it names no executable), else the first of
    CANDIDATES on PATH; None when there is none."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    return next((shutil.which(name) for name in CANDIDATES if shutil.which(name)), None)


class _Browser:
    """A headless Chromium and one page, driven over the DevTools pipe."""

    def __init__(self, binary: str, width: int, height: int) -> None:
        self.profile = tempfile.mkdtemp(prefix="align-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        for fd in (to_browser_r, self._to_browser, self._from_browser, from_browser_w):
            os.set_inheritable(fd, False)
        args = [binary, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"]

        def child_fds() -> None:  # the protocol's pipes are the child's fds 3 (in) and 4 (out)
            high_in, high_out = os.dup(to_browser_r), os.dup(from_browser_w)  # neither is 3 or 4 any more
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        # close_fds=False: the fds 3 and 4 made in the child must survive until exec (the parent's
        # own pipe ends are not inheritable, PEP 446, so they do not leak into Chromium)
        self.proc = subprocess.Popen(args, close_fds=False, preexec_fn=child_fds,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer, self._next_id, self.events = b"", 0, []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.time() + timeout
        while time.time() < deadline:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise TimeoutError(f"no reply to {method} in {timeout:.0f}s")

    def wait_for(self, method: str, timeout: float = 30.0) -> dict:
        deadline = time.time() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while time.time() < deadline:
            event = self._read(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event
        raise TimeoutError(f"no {method} in {timeout:.0f}s")

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.time()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.poll() is not None else ""
                raise RuntimeError(f"Chromium closed the pipe {err}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - it may already be gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


CHECK_PLOTS = """
JSON.stringify(Array.from(document.querySelectorAll('.plot')).map(function (div) {
  return {id: div.id, drawn: +(div.getAttribute('data-drawn') || 0),
          shapes: div.querySelectorAll('svg path, svg circle, svg rect, svg polygon').length,
          width: div.getBoundingClientRect().width, height: div.getBoundingClientRect().height};
}))
"""


def render(html_path: str | Path, screenshot: str | Path | None = None, width: int = 1280, binary: str | None = None,
           timeout: float = 60.0) -> dict:
    """Load `html_path` in headless Chromium. Returns {"errors": [...], "plots": [{id, drawn,
    shapes, width, height}], "title": ..., "screenshot": path or None}."""
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium binary (apt-get install chromium, or set $CHROMIUM)")
    browser = _Browser(binary, width, 900)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True}, timeout=timeout)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session, timeout=timeout)
        browser.send("Page.navigate", {"url": Path(html_path).resolve().as_uri()}, session=session, timeout=timeout)
        browser.wait_for("Page.loadEventFired", timeout=timeout)
        time.sleep(0.2)  # let late console messages arrive

        def evaluate(expression: str):
            return browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                                session=session, timeout=timeout)["result"].get("value")

        plots = json.loads(evaluate(CHECK_PLOTS))
        title = evaluate("document.title")
        shot = None
        if screenshot is not None:
            height = int(evaluate("Math.ceil(document.documentElement.scrollHeight)"))
            browser.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                                "mobile": False}, session=session, timeout=timeout)
            data = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                                session=session, timeout=timeout)["data"]
            shot = Path(screenshot)
            shot.parent.mkdir(parents=True, exist_ok=True)
            shot.write_bytes(base64.b64decode(data))
        errors = []
        for event in browser.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                errors.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append("console.error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        return {"errors": errors, "plots": plots, "title": title, "screenshot": str(shot) if shot else None}
    finally:
        browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html")
    parser.add_argument("--screenshot", default=None, help="full-page PNG to write")
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args(argv)
    result = render(args.html, args.screenshot, args.width)
    empty = [p["id"] for p in result["plots"] if p["drawn"] == 0 or p["shapes"] == 0]
    print(f"{args.html}: {len(result['plots'])} plots, {len(empty)} empty, {len(result['errors'])} errors"
          + (f"; screenshot {result['screenshot']}" if result["screenshot"] else ""))
    for line in result["errors"]:
        print(f"  {line}", file=sys.stderr)
    for plot in empty:
        print(f"  empty plot: {plot}", file=sys.stderr)
    return 1 if result["errors"] or empty else 0


if __name__ == "__main__":
    sys.exit(main())
