"""`datatool qa launch` serves the FiftyOne App; headless Chromium loads it and the samples render with masks.

The page is checked from inside (DevTools protocol, tests/headless_chromium.py): the dataset's
name, its sample count and its label fields are on the page, every thumbnail canvas has
loaded, and a thumbnail's pixels carry the ground truth's colour. The screenshot is kept in
tests/artifacts/qa-app.png (git-ignored).
"""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from datatool.qa import FIELD_COLOURS, VIEW_SUSPECT, app_url, build_dataset
from headless_chromium import ChromiumPage, find_chromium
from qa_fixtures import make_people_sets, unique_name, use_test_database

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # tests/artifacts, git-ignored
CHROMIUM = find_chromium()

# Share of a thumbnail's person pixels that must show the ground truth's green (drawn at 50 %
# opacity over the photo): green clearly above red and blue.
LOOKS_GREEN = """
(() => {
  const canvas = document.querySelector('[data-cy=looker] canvas[canvas-loaded=true]');
  const copy = document.createElement('canvas');
  copy.width = canvas.width; copy.height = canvas.height;
  const context = copy.getContext('2d');
  context.drawImage(canvas, 0, 0);
  const pixels = context.getImageData(0, 0, copy.width, copy.height).data;
  let green = 0;
  for (let i = 0; i < pixels.length; i += 4) {
    if (pixels[i + 1] > pixels[i] + 40 && pixels[i + 1] > pixels[i + 2] + 20) green += 1;
  }
  return green / (pixels.length / 4);
})()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"`datatool qa launch` exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise TimeoutError(f"the App did not answer on {url} within {timeout:.0f} s")


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (`apt-get install chromium`; .ci/run installs it)")
def test_app_renders_the_dataset_and_its_masks_in_headless_chromium(tmp_path):
    database = use_test_database(tmp_path)
    import fiftyone as fo

    fo.list_datasets()  # start (or join) the database before the server process needs it
    # The server starts without a dataset (the App's picker) while the dataset is built: the
    # start-up of the two overlaps, and the page then opens the dataset by its address.
    port = free_port()
    datatool = Path(sys.executable).with_name("datatool")
    log = tmp_path / "qa-launch.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            [str(datatool), "qa", "launch", "--port", str(port)],
            env={**os.environ, "FIFTYONE_DATABASE_DIR": database, "FIFTYONE_DO_NOT_TRACK": "true"},
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    name = unique_name("qa-app")
    try:
        people = make_people_sets(tmp_path / "sets")
        build_dataset(name, people["sets"], masks_dir=tmp_path / "qa-masks")
        wait_for_http(f"http://127.0.0.1:{port}/", server, log)
        url = app_url(name, port=port, address="127.0.0.1", view=VIEW_SUSPECT)  # what the command prints
        page_text, green = asyncio.run(look_at_app(url, len(people["ids"])))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
    assert name in page_text and f"{len(people['ids'])} samples" in page_text and VIEW_SUSPECT in page_text
    for field in ("ground_truth", "teacher_teacher_a", "teacher_teacher_b"):
        assert field in page_text
    assert green > 0.05, f"only {green:.1%} of the first thumbnail shows the ground truth's colour {FIELD_COLOURS['ground_truth']}"
    assert (ARTIFACTS / "qa-app.png").stat().st_size > 10_000


async def look_at_app(url: str, samples: int) -> tuple[str, float]:
    async with ChromiumPage(CHROMIUM) as page:
        await page.navigate(url)
        loaded = "document.querySelectorAll('[data-cy=looker] canvas[canvas-loaded=true]').length"
        await page.wait_for(f"{loaded} >= {samples}", timeout=60)
        # FiftyOne's "Explore Enterprise" popover covers the grid once per browser profile.
        await page.evaluate("[...document.querySelectorAll('button')].filter(b => b.textContent.trim() === 'Dismiss').forEach(b => b.click())")
        await asyncio.sleep(1)  # let the popover close before the screenshot
        await page.screenshot(ARTIFACTS / "qa-app.png")
        dataset_name = await page.evaluate("document.querySelector('input[placeholder=\"Select dataset\"]').value")
        return f"{dataset_name}\n{await page.evaluate('document.body.innerText')}", await page.evaluate(LOOKS_GREEN)
