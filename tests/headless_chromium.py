"""Drive a headless Chromium over the DevTools protocol (CDP) with aiohttp's websocket client.

The FiftyOne App is a React app that fetches its samples over GraphQL after the page has
loaded, so a test must wait until the page says it has rendered (a JavaScript condition),
not for a fixed time; `--dump-dom` with a virtual-time budget cannot wait on a condition.
"""

import asyncio
import base64
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-port=0",  # Chromium picks a free port and writes it to DevToolsActivePort
]  # fmt: skip


def find_chromium() -> str | None:
    return next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None)


class ChromiumPage:
    """One headless Chromium with one page; `evaluate`, `wait_for`, `screenshot`; a context manager."""

    def __init__(self, executable: str, width: int = 1400, height: int = 900):
        self.executable, self.width, self.height = executable, width, height

    async def __aenter__(self) -> "ChromiumPage":
        # Chromium's helper processes can still write to the profile while the browser exits,
        # so a failed clean-up of this scratch folder must not fail (or mask) the test.
        self.profile = tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True)
        self.process = subprocess.Popen(
            [self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile.name}", f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        port = await self._devtools_port(Path(self.profile.name) / "DevToolsActivePort")
        self.http = aiohttp.ClientSession()
        async with self.http.get(f"http://127.0.0.1:{port}/json/list") as response:
            target = next(item for item in await response.json() if item["type"] == "page")
        self.socket = await self.http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        self.next_id = 0
        await self.send("Page.enable")
        await self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1, mobile=False)
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.socket.close()
        await self.http.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.profile.cleanup()

    async def _devtools_port(self, path: Path, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.is_file() and path.read_text().strip():
                return int(path.read_text().splitlines()[0])
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.executable} exited with status {self.process.returncode} before opening DevTools")
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.executable} did not open its DevTools port within {timeout:.0f} s")

    async def send(self, method: str, **params):
        """One CDP command; its result (events that arrive meanwhile are dropped)."""
        self.next_id += 1
        await self.socket.send_str(json.dumps({"id": self.next_id, "method": method, "params": params}))
        async for message in self.socket:
            reply = json.loads(message.data)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
        raise RuntimeError(f"{method}: DevTools connection closed")

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise RuntimeError(f"page script failed: {details.get('exception', {}).get('description') or details.get('text')}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 60.0, interval: float = 0.5):
        """Poll `expression` until it is truthy; its value, or TimeoutError with the last value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(interval)
        raise TimeoutError(f"page condition not met within {timeout:.0f} s: {expression} (last value {value!r})")

    async def screenshot(self, path: Path) -> Path:
        data = await self.send("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path
