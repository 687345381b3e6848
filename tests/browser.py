"""Drive headless Chromium (Debian's ``chromium`` package) through the DevTools protocol over a pipe.

``--remote-debugging-pipe`` makes Chromium read protocol messages from file descriptor 3 and write
its replies and events to descriptor 4, each a JSON object ended by a NUL byte: no port is
opened, no websocket client is needed. :class:`Chromium` opens a page, collects console errors,
uncaught exceptions and error log entries while it loads, evaluates JavaScript and takes
full-page screenshots. Used by ``tests/test_report_browser.py``; run as a script it writes the
README's screenshot of a report (the synthetic example below, or ``--report`` a real one)::

    python tests/browser.py docs/images/report.png [--report demo_out/report.html]
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
    "--remote-debugging-pipe",
)


def find_chromium() -> str | None:
    """The Chromium executable on PATH (``chromium``, as Debian names it, or ``chromium-browser``)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


class BrowserError(RuntimeError):
    pass


class Chromium:
    """A headless Chromium with one page, driven over the DevTools pipe. Use as a context manager."""

    def __init__(self, executable: str | None = None, *, width: int = 1200, height: int = 900,
                 timeout: float = 60.0):
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise BrowserError("chromium is not installed (Debian: apt-get install chromium)")
        self.width, self.height, self.timeout = width, height, timeout
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        self._buffer = b""

    # ── process and pipe ─────────────────────────────────────────────────────────────────────
    def __enter__(self) -> Chromium:
        self._profile = tempfile.mkdtemp(prefix="certa-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds() -> None:  # in the child: the pipe ends on descriptors 3 (read) and 4 (write)
            import fcntl

            high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)  # out of the way of 3 and 4 first
            high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)  # dup2 leaves the copies inheritable; Python's own fds are close-on-exec
            os.dup2(high_w, 4)

        self._proc = subprocess.Popen(
            [self.executable, *FLAGS, f"--user-data-dir={self._profile}",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            close_fds=False, preexec_fn=wire_fds)
        os.close(to_browser_r)
        os.close(from_browser_w)
        try:
            target = self.send("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.send(f"{domain}.enable", session=True)
            self.send("Emulation.setDeviceMetricsOverride", session=True, width=self.width,
                      height=self.height, deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._proc.poll() is None:
                try:
                    self.send("Browser.close", timeout=10)
                except (BrowserError, OSError):
                    pass
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=10)
        finally:
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if self._proc.stderr:
                self._proc.stderr.close()
            shutil.rmtree(self._profile, ignore_errors=True)

    def send(self, method: str, *, session: bool = False, timeout: float | None = None, **params: Any) -> Any:
        """Send one command and wait for its reply; events that arrive meanwhile go to ``events``."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def _read(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("no reply from chromium in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                err = self._proc.stderr.read().decode(errors="replace")[-2000:] if self._proc.stderr else ""
                raise BrowserError(f"chromium closed the pipe (exit {self._proc.poll()}): {err}")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    def wait_for(self, method: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait for an event (already received ones count)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(self._read(deadline))

    # ── what a test asks ─────────────────────────────────────────────────────────────────────
    def open(self, url: str) -> None:
        """Navigate and wait for the load event (every image decoded or failed by then)."""
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        result = self.send("Page.navigate", session=True, url=url)
        if result.get("errorText"):
            raise BrowserError(f"could not open {url}: {result['errorText']}")
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page (promises awaited) and return its JSON value."""
        result = self.send("Runtime.evaluate", session=True, expression=expression, awaitPromise=True,
                           returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"javascript error: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error-level log entries seen so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append("console: " + " ".join(str(a.get("value", a.get("description", "")))
                                                    for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                found.append("exception: " + str(details.get("exception", {}).get("description")
                                                 or details.get("text")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                found.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
        return found

    def screenshot(self, path: str | os.PathLike[str], *, full_page: bool = True) -> Path:
        """Write a PNG of the page (the whole scroll height when ``full_page``)."""
        height = self.height
        if full_page:
            height = int(self.evaluate("document.documentElement.scrollHeight"))
            self.send("Emulation.setDeviceMetricsOverride", session=True, width=self.width, height=height,
                      deviceScaleFactor=1, mobile=False)
        clip = {"clip": {"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1}} if full_page else {}
        data = self.send("Page.captureScreenshot", session=True, format="png", **clip)["data"]
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(data))
        return out


#: JavaScript: decode every <img> and report its natural size (0 × 0 when it failed).
IMAGES_JS = """
Promise.all([...document.images].map(img => img.decode().then(
    () => ({alt: img.alt, ok: true, width: img.naturalWidth, height: img.naturalHeight}),
    err => ({alt: img.alt, ok: false, width: img.naturalWidth, height: img.naturalHeight, error: String(err)}))))
"""


def example_report(path: str | os.PathLike[str], n: int = 400, seed: int = 0) -> Path:
    """A report on synthetic answers: four methods of known quality (none of certa's measured numbers)."""
    import numpy as np

    from certa.evaluation import evaluate

    rng = np.random.default_rng(seed)
    skill = rng.uniform(0, 1, n)
    correct = (rng.uniform(0, 1, n) < skill).astype(float)
    scores = {
        "calibrated": np.clip(skill + rng.normal(0, 0.05, n), 0, 1),
        "overconfident": np.clip(0.55 + 0.45 * skill ** 0.3 + rng.normal(0, 0.03, n), 0, 1),
        "noisy": np.clip(skill + rng.normal(0, 0.25, n), 0, 1),
        "constant": np.full(n, correct.mean()),
    }
    result = evaluate(correct, scores, n_bootstrap=200, extra={"data": "synthetic example"})
    return result.to_html(path, title="certa calibration report (synthetic example)")


def main(argv: list[str]) -> None:  # pragma: no cover - a maintenance script
    """``browser.py [PNG] [--report REPORT.html]``: screenshot a report (default: the synthetic example)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("png", nargs="?", default="docs/images/report.png")
    parser.add_argument("--report", help="an existing report.html (e.g. demo_out/report.html)")
    parser.add_argument("--height", type=int, default=1270, help="pixels of the page to show")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(args.report).resolve() if args.report else example_report(Path(tmp) / "report.html")
        with Chromium(width=1200, height=args.height) as browser:
            browser.open(report.as_uri())
            images = browser.evaluate(IMAGES_JS)
            assert all(i["ok"] and i["width"] > 0 for i in images), images
            assert not browser.errors(), browser.errors()
            browser.screenshot(args.png, full_page=False)
    print(f"wrote {args.png}: the first {args.height} px of {report.name} ({len(images)} figures, all decoded)")


if __name__ == "__main__":  # pragma: no cover
    import sys

    main(sys.argv[1:])
