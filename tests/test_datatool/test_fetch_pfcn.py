"""`datatool fetch pfcn` against a real local HTTP server: dead links, retries, crops, idempotence."""

import io
import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_photo
from PIL import Image

from datatool.cli import main
from datatool.fetch_pfcn import FetchError, fetch_pfcn

FAST = {"workers": 3, "retries": 2, "timeout": 5.0, "backoff": 0.0}  # no waiting between retries in tests


class ImageHost:
    """A local stand-in for Flickr: each path answers a scripted sequence of responses."""

    def __init__(self) -> None:
        self.routes: dict[str, list[tuple[int, bytes, dict[str, str]]]] = {}
        self.requests: Counter[str] = Counter()
        self.user_agents: set[str] = set()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())

    def add(self, path: str, *responses: tuple[int, bytes, dict[str, str]]) -> str:
        """Answer the n-th request of `path` with the n-th response (the last one repeats); return its URL."""
        self.routes[path] = list(responses)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with host.lock:
                    host.requests[self.path] += 1
                    host.user_agents.add(self.headers.get("User-Agent", ""))
                    responses = host.routes.get(self.path, [(404, b"not found", {})])
                    status, body, headers = responses[min(host.requests[self.path], len(responses)) - 1]
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format, *args) -> None:  # keep pytest output clean
                pass

        return Handler


@pytest.fixture
def host() -> Iterator[ImageHost]:
    image_host = ImageHost()
    thread = threading.Thread(target=image_host.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield image_host
    image_host.server.shutdown()
    image_host.server.server_close()


def encode(image: np.ndarray, suffix: str) -> bytes:
    ok, data = cv2.imencode(suffix, image)
    assert ok
    return data.tobytes()


def jpeg_with_orientation(image: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose EXIF says to rotate it on display (as phone photos do)."""
    picture = Image.fromarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    exif = picture.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def image_response(data: bytes, content_type: str = "image/jpeg") -> tuple[int, bytes, dict[str, str]]:
    return 200, data, {"Content-Type": content_type}


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def upright_expected(photo: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    return cv2.resize(photo[y0:y1, x0:x1], (600, 800), interpolation=cv2.INTER_AREA)


@pytest.fixture
def release(tmp_path: Path, host: ImageHost) -> dict:
    """A PFCN release whose URLs point at the local host; returns what each id should become.

    00001 OK (PNG)          00002 404 (dead)          00003 503 once, then OK (retried)
    00004 no crop entry     00005 HTML, not an image  00006 crop larger than the photo
    00007 Flickr "photo unavailable" redirect         00008 'None' instead of a URL
    00009 JPEG with EXIF orientation 6 (stored 400 wide x 300 high, shown 300 x 400)
    """
    root = tmp_path / "release"
    root.mkdir()
    photo = make_photo(480, 640, seed=1)
    retried = make_photo(1000, 750, seed=3)
    rotated_raw = make_photo(300, 400, seed=9)
    urls = {
        "00001": host.add("/a/1.png", image_response(encode(photo, ".png"), "image/png")),
        "00002": host.add("/a/2.jpg", (404, b"<html>gone</html>", {"Content-Type": "text/html"})),
        "00003": host.add("/a/3.jpg", (503, b"busy", {}), image_response(encode(retried, ".jpg"))),
        "00004": host.add("/a/4.jpg", image_response(encode(photo, ".jpg"))),
        "00005": host.add("/a/5.jpg", (200, b"<html>a page, not a photo</html>", {"Content-Type": "text/html"})),
        "00006": host.add("/a/6.jpg", image_response(encode(make_photo(100, 100), ".jpg"))),
        "00007": host.add("/a/7.jpg", (302, b"", {"Location": host.url("/images/photo_unavailable.png")})),
        "00008": "None",
        "00009": host.add("/a/9.jpg", image_response(jpeg_with_orientation(rotated_raw, 6))),
    }
    host.add("/images/photo_unavailable.png", image_response(encode(make_photo(374, 500), ".png"), "image/png"))
    lines = [f"{sample_id}.jpg {url}" for sample_id, url in urls.items()]
    (root / "alldata_urls.txt").write_text("\n".join([*lines, "00010.jpg"]) + "\n")  # last line malformed
    crops = {
        "00001": (40, 440, 170, 470),
        "00002": (0, 800, 0, 600),
        "00003": (100, 900, 75, 675),
        "00005": (0, 800, 0, 600),
        "00006": (0, 800, 0, 600),
        "00007": (0, 800, 0, 600),
        "00008": (0, 800, 0, 600),
        "00009": (0, 400, 0, 300),
    }
    (root / "crop.txt").write_text("".join(f"{i}.jpg {' '.join(map(str, box))}\n" for i, box in crops.items()))
    expected = {
        "00001": upright_expected(photo, *crops["00001"]),
        "00003": upright_expected(retried, *crops["00003"]),
        "00009": upright_expected(cv2.rotate(rotated_raw, cv2.ROTATE_90_CLOCKWISE), *crops["00009"]),
    }
    return {"root": root, "urls": urls, "expected": expected, "wrong_crop": upright_expected(photo, 0, 400, 0, 300)}


def test_fetch_writes_cropped_600x800_images(release, host):
    root = release["root"]
    result = fetch_pfcn(root, **FAST)

    image_dir = root / "images_data_crop"
    assert sorted(path.name for path in image_dir.iterdir()) == ["00001.jpg", "00003.jpg", "00009.jpg"]
    for sample_id, expected in release["expected"].items():
        written = cv2.imread(str(image_dir / f"{sample_id}.jpg"))
        assert written.shape == (800, 600, 3)
        assert mean_difference(written, expected) < 4, sample_id
    # The comparison can tell crops apart: another box of the same photo is far off.
    assert mean_difference(cv2.imread(str(image_dir / "00001.jpg")), release["wrong_crop"]) > 20
    assert (result.listed, result.fetched, result.existing, result.failed) == (9, 3, 0, 6)
    assert result.output == root.resolve()


def test_fetch_reports_every_failure(release, host):
    root, urls = release["root"], release["urls"]
    result = fetch_pfcn(root, **FAST)

    report = json.loads((root / "fetch-report.json").read_text())
    assert report == result.report and result.report_path == root.resolve() / "fetch-report.json"
    assert report["counts"] == {
        "listed": 9,
        "fetched": 3,
        "existing": 0,
        "dead_link": 3,
        "no_crop": 1,
        "crop_out_of_bounds": 1,
        "undecodable": 1,
        "malformed_lines": 1,
        "crops_without_url": 0,
    }
    dead = {entry["id"]: entry for entry in report["dead_links"]}
    assert list(dead) == ["00002", "00007", "00008"]
    assert dead["00002"] == {"id": "00002", "url": urls["00002"], "error": "HTTP 404 Not Found"}
    assert dead["00007"]["error"].startswith("photo removed: redirected to ")
    assert dead["00008"]["error"] == "no URL in the release's URL list"
    assert report["no_crop"] == [{"id": "00004", "url": urls["00004"]}]
    assert report["crop_out_of_bounds"] == [
        {"id": "00006", "url": urls["00006"], "crop": [0, 800, 0, 600], "image_size": [100, 100]}
    ]
    assert [entry["id"] for entry in report["undecodable"]] == ["00005"]
    assert "not a decodable image" in report["undecodable"][0]["error"]
    assert report["malformed_lines"] == [
        {"file": "alldata_urls.txt", "line": 10, "text": "00010.jpg", "problem": "expected '<NNNNN>.jpg <url>'"}
    ]


def test_retries_transient_errors_only_and_sends_a_user_agent(release, host):
    fetch_pfcn(release["root"], **FAST)
    assert host.requests["/a/3.jpg"] == 2  # 503, then the image
    assert host.requests["/a/2.jpg"] == 1  # a 404 is final
    assert host.requests["/a/4.jpg"] == 0  # no crop entry: not downloaded at all
    assert all(agent.startswith("portraitseg-datatool/") for agent in host.user_agents)


def test_second_run_fetches_nothing(release, host):
    root = release["root"]
    fetch_pfcn(root, **FAST)
    first = (root / "images_data_crop" / "00001.jpg").stat().st_mtime_ns
    before = host.requests.copy()

    again = fetch_pfcn(root, **FAST)

    assert (again.fetched, again.existing) == (0, 3)
    assert (root / "images_data_crop" / "00001.jpg").stat().st_mtime_ns == first
    for path in ("/a/1.png", "/a/3.jpg", "/a/9.jpg"):
        assert host.requests[path] == before[path]


def test_gives_up_after_the_last_retry(tmp_path, host):
    url = host.add("/busy.jpg", (503, b"busy", {}))
    (tmp_path / "alldata_urls.txt").write_text(f"00001.jpg {url}\n")
    (tmp_path / "crop.txt").write_text("00001.jpg 0 8 0 6\n")
    result = fetch_pfcn(tmp_path, **{**FAST, "retries": 2})
    assert host.requests["/busy.jpg"] == 3
    assert result.report["dead_links"][0]["error"] == "HTTP 503 Service Unavailable (after 3 attempts)"


def test_output_elsewhere_and_missing_lists(tmp_path, release, host):
    output = tmp_path / "fetched"
    result = fetch_pfcn(release["root"], output, **FAST)
    assert (output / "images_data_crop" / "00001.jpg").is_file() and (output / "fetch-report.json").is_file()
    assert not (release["root"] / "images_data_crop").exists()
    assert result.fetched == 3

    (tmp_path / "empty").mkdir()
    with pytest.raises(FetchError, match="alldata_urls.txt not found"):
        fetch_pfcn(tmp_path / "empty")


def test_cli_prints_a_summary_and_fails_when_nothing_was_fetched(release, host, tmp_path):
    root = release["root"]
    runner = CliRunner()
    outcome = runner.invoke(main, ["fetch", "pfcn", "--release", str(root), "--workers", "2", "--retries", "0"])
    assert outcome.exit_code == 0, outcome.output
    # With --retries 0 the 503 of 00003 is final.
    assert "2 images fetched, 0 already there, 7 failed of 9 listed" in outcome.output
    assert "fetch-report.json" in outcome.output

    dead = tmp_path / "dead"
    dead.mkdir()
    (dead / "alldata_urls.txt").write_text(f"00001.jpg {host.url('/missing.jpg')}\n")
    (dead / "crop.txt").write_text("00001.jpg 0 8 0 6\n")
    outcome = runner.invoke(main, ["fetch", "pfcn", "--release", str(dead), "--retries", "0"])
    assert outcome.exit_code == 1
    assert "no image could be fetched" in outcome.output
