"""The one place portraitseg reports progress on long work (a tqdm bar on a terminal, quiet in logs)."""

from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], *, total: int | None = None, desc: str, unit: str = "img") -> Iterator[T]:
    """Yield `items` while drawing a progress bar on stderr when it is a terminal.

    `disable=None` makes tqdm stay silent when stderr is not a TTY (DVC logs, CI), where a
    redrawn bar would only add noise; the summary each command prints afterwards is what
    those logs keep.
    """
    yield from tqdm(items, total=total, desc=desc, unit=unit, disable=None, dynamic_ncols=True, leave=False)
