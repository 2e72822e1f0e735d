"""`datatool fetch pfcn`: download and crop the PFCN images that the release only lists by URL.

The PFCN release (Shen et al. 2016) ships masks but no images: `alldata_urls.txt` has lines
`00001.jpg <url>` and `crop.txt` lines `00602.jpg y0 y1 x0 x1`. The authors' MATLAB script
crops `img(y0+1:y1, x0+1:x1)`, i.e. `img[y0:y1, x0:x1]` here, and resizes to 800 high x 600
wide, the size of the masks. This module does the same for every listed id and writes
`images_data_crop/NNNNN.jpg`, the layout the `pfcn` source reads.

What goes wrong with the real release, and what happens then (all in `fetch-report.json`):
- many URLs are dead (HTTP 404/410, or Flickr redirecting to its "photo unavailable"
  placeholder, or "None" instead of a URL): reported with the last error, not retried forever;
- 123 listed ids have no crop entry: without it the image cannot match its mask, so it is not
  downloaded at all;
- a crop outside the downloaded image, or a body that is not an image: reported.
Existing outputs are never downloaded again, so an interrupted run resumes where it stopped.
"""

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from datatool import __version__
from datatool.sources.pfcn import IMAGE_DIR
from portraitseg.progress import progress

URL_LIST = "alldata_urls.txt"
CROP_LIST = "crop.txt"
REPORT = "fetch-report.json"
TARGET_WIDTH, TARGET_HEIGHT = 600, 800  # the size of every PFCN mask
JPEG_QUALITY = 95
USER_AGENT = f"portraitseg-datatool/{__version__} (PFCN image fetch; Python urllib)"
MAX_DOWNLOAD_BYTES = 64 * 2**20  # the largest Flickr originals are ~30 MB; more is not a photo
# Worth another try: the server is overloaded or asks to slow down. Other 4xx are final (dead link).
RETRIED_HTTP_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})
# Flickr answers a deleted photo with a redirect to a placeholder image that decodes fine.
REMOVED_PHOTO_MARKER = "photo_unavailable"
NO_URL = "None"  # what the release writes in place of a URL for some ids


class FetchError(Exception):
    """The release folder cannot be fetched from (missing or unreadable list files)."""


class DownloadError(Exception):
    """A download that failed for good; the message is the last error."""


@dataclass(frozen=True)
class Crop:
    """`img[top:bottom, left:right]` of the downloaded photo (crop.txt: `y0 y1 x0 x1`)."""

    top: int
    bottom: int
    left: int
    right: int

    def fits(self, height: int, width: int) -> bool:
        return 0 <= self.top < self.bottom <= height and 0 <= self.left < self.right <= width


@dataclass
class Outcome:
    """What happened to one id: its status ("fetched", "existing", "dead_link", ...) and report entry."""

    sample_id: str
    status: str
    entry: dict[str, Any] = field(default_factory=dict)


@dataclass
class FetchResult:
    output: Path
    listed: int
    fetched: int
    existing: int
    failed: int
    report: dict[str, Any]
    report_path: Path


FAILURE_LISTS = {  # status -> the report list its entries go to
    "dead_link": "dead_links",
    "no_crop": "no_crop",
    "crop_out_of_bounds": "crop_out_of_bounds",
    "undecodable": "undecodable",
}


def fetch_pfcn(
    release: Path | str,
    output: Path | str | None = None,
    *,
    workers: int = 8,
    retries: int = 3,
    timeout: float = 20.0,
    backoff: float = 1.0,
) -> FetchResult:
    """Download, crop and resize every PFCN image listed in `release` into `output/images_data_crop/`.

    `output` defaults to the release folder itself, so `datatool ingest pfcn --input RELEASE`
    finds the images next to the masks. `retries` is the number of extra attempts after a
    failed one, waiting `backoff * 2**n` seconds before each.
    """
    started = time.perf_counter()
    release = Path(release).expanduser().resolve()
    output = Path(output).expanduser().resolve() if output is not None else release
    malformed: list[dict[str, Any]] = []
    urls = read_url_list(release / URL_LIST, malformed)
    crops = read_crop_list(release / CROP_LIST, malformed)
    image_dir = output / IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)

    def fetch(sample_id: str) -> Outcome:
        target = image_dir / f"{sample_id}.jpg"
        options = {"retries": retries, "timeout": timeout, "backoff": backoff}
        return fetch_one(sample_id, urls[sample_id], crops.get(sample_id), target, **options)

    outcomes: list[Outcome] = []
    pool = ThreadPoolExecutor(max_workers=max(1, workers))  # threads: downloads wait on the network
    try:
        futures = [pool.submit(fetch, sample_id) for sample_id in sorted(urls)]
        for future in progress(as_completed(futures), total=len(futures), desc="fetch pfcn"):
            outcomes.append(future.result())
    finally:
        # On an error (disk full) or Ctrl-C, drop the queued downloads instead of finishing them all.
        pool.shutdown(cancel_futures=True)

    outcomes.sort(key=lambda outcome: outcome.sample_id)
    counts = {status: 0 for status in ("fetched", "existing", *FAILURE_LISTS)}
    for outcome in outcomes:
        counts[outcome.status] += 1
    report: dict[str, Any] = {
        "stage": "fetch",
        "dataset": "pfcn",
        "version": __version__,
        "release": str(release),
        "output": str(output),
        "options": {"workers": workers, "retries": retries, "timeout": timeout},
        "counts": {
            "listed": len(urls),
            **counts,
            "malformed_lines": len(malformed),
            "crops_without_url": len(crops.keys() - urls.keys()),
        },
        "seconds": round(time.perf_counter() - started, 3),
        **{name: [o.entry for o in outcomes if o.status == status] for status, name in FAILURE_LISTS.items()},
        "malformed_lines": malformed,
    }
    report_path = output / REPORT
    write_atomically(report_path, (json.dumps(report, indent=2) + "\n").encode())
    return FetchResult(
        output=output,
        listed=len(urls),
        fetched=counts["fetched"],
        existing=counts["existing"],
        failed=sum(counts[status] for status in FAILURE_LISTS),
        report=report,
        report_path=report_path,
    )


def read_url_list(path: Path, malformed: list[dict[str, Any]]) -> dict[str, str]:
    """id -> URL from `alldata_urls.txt` (`00001.jpg <url>`); bad lines go to `malformed`."""
    urls: dict[str, str] = {}
    for number, fields in read_lines(path, malformed):
        if len(fields) != 2:
            malformed.append(line_problem(path, number, fields, "expected '<NNNNN>.jpg <url>'"))
        elif (sample_id := Path(fields[0]).stem) in urls:
            malformed.append(line_problem(path, number, fields, f"second URL for {sample_id}; the first is used"))
        else:
            urls[sample_id] = fields[1]
    return urls


def read_crop_list(path: Path, malformed: list[dict[str, Any]]) -> dict[str, Crop]:
    """id -> crop box from `crop.txt` (`00602.jpg y0 y1 x0 x1`); bad lines go to `malformed`."""
    crops: dict[str, Crop] = {}
    for number, fields in read_lines(path, malformed):
        try:
            box = [int(value) for value in fields[1:]]
        except ValueError:
            box = []
        if len(fields) != 5 or len(box) != 4:
            malformed.append(line_problem(path, number, fields, "expected '<NNNNN>.jpg y0 y1 x0 x1' (integers)"))
        elif (sample_id := Path(fields[0]).stem) in crops:
            malformed.append(line_problem(path, number, fields, f"second crop for {sample_id}; the first is used"))
        else:
            crops[sample_id] = Crop(*box)
    return crops


def read_lines(path: Path, malformed: list[dict[str, Any]]) -> list[tuple[int, list[str]]]:
    """(line number, whitespace-separated fields) of each non-blank line."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError as error:
        raise FetchError(f"{path} not found: is {path.parent} the unpacked PFCN release?") from error
    except OSError as error:
        raise FetchError(f"cannot read {path}: {error.strerror or error}") from error
    return [(number, line.split()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def line_problem(path: Path, number: int, fields: list[str], problem: str) -> dict[str, Any]:
    return {"file": path.name, "line": number, "text": " ".join(fields), "problem": problem}


def fetch_one(
    sample_id: str, url: str, crop: Crop | None, target: Path, *, retries: int, timeout: float, backoff: float
) -> Outcome:
    """Download, decode, crop, resize and write one image (runs in a worker thread)."""
    if target.is_file() and target.stat().st_size > 0:
        return Outcome(sample_id, "existing")
    entry: dict[str, Any] = {"id": sample_id, "url": url}
    if crop is None:
        return Outcome(sample_id, "no_crop", entry)
    if url == NO_URL:
        return Outcome(sample_id, "dead_link", {**entry, "error": "no URL in the release's URL list"})
    try:
        data = download(url, retries=retries, timeout=timeout, backoff=backoff)
    except DownloadError as error:
        return Outcome(sample_id, "dead_link", {**entry, "error": str(error)})

    # IMREAD_COLOR applies the EXIF orientation, as a viewer shows the photo.
    photo = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if photo is None:
        return Outcome(sample_id, "undecodable", {**entry, "error": f"not a decodable image ({len(data)} bytes)"})
    height, width = photo.shape[:2]
    if not crop.fits(height, width):
        box = [crop.top, crop.bottom, crop.left, crop.right]
        return Outcome(sample_id, "crop_out_of_bounds", {**entry, "crop": box, "image_size": [width, height]})

    cropped = photo[crop.top : crop.bottom, crop.left : crop.right]
    resized = cv2.resize(cropped, (TARGET_WIDTH, TARGET_HEIGHT), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError(f"could not encode {target}")
    write_atomically(target, encoded.tobytes())
    return Outcome(sample_id, "fetched")


def download(url: str, *, retries: int, timeout: float, backoff: float) -> bytes:
    """The body of `url`; transient failures are retried, a dead link raises `DownloadError` at once."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    last_error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                final_url = response.geturl()
                if REMOVED_PHOTO_MARKER in final_url:
                    raise DownloadError(f"photo removed: redirected to {final_url}")
                data = response.read(MAX_DOWNLOAD_BYTES + 1)
        except urllib.error.HTTPError as error:
            error.close()
            last_error = f"HTTP {error.code} {error.reason}"
            if error.code not in RETRIED_HTTP_CODES:
                raise DownloadError(last_error) from None
            continue
        except ValueError as error:  # urllib's "unknown url type" and friends: retrying cannot help
            raise DownloadError(f"invalid URL: {error}") from None
        except (OSError, http.client.HTTPException) as error:  # URLError, timeouts, resets, short reads
            reason = getattr(error, "reason", None) or error
            last_error = f"{type(error).__name__}: {reason}"
            continue
        if len(data) > MAX_DOWNLOAD_BYTES:
            raise DownloadError(f"response larger than {MAX_DOWNLOAD_BYTES} bytes: not a photo")
        return data
    raise DownloadError(f"{last_error} (after {retries + 1} attempts)")


def write_atomically(path: Path, data: bytes) -> None:
    """Write through a hidden temporary file, so an interrupted run never leaves half an image.

    The temporary name starts with '.', which source scans skip and report as junk.
    """
    temporary = path.with_name(f".{path.name}.part")
    temporary.write_bytes(data)
    os.replace(temporary, path)
