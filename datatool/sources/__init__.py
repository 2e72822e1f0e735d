"""Source adapters, one module per dataset layout, registered by the SOURCE name of `datatool ingest`."""

from datatool.sources.base import LayoutError, Record, Source

SOURCES: dict[str, type[Source]] = {}


def register(cls: type[Source]) -> type[Source]:
    """Class decorator: make a source available under its `name`."""
    SOURCES[cls.name] = cls
    return cls


def create_source(name: str, root, **options) -> Source:
    """Build the adapter for `name`; a typo lists the valid names."""
    _load_builtin_sources()
    if name not in SOURCES:
        raise KeyError(f"unknown source {name!r}; choose one of: {', '.join(sorted(SOURCES))}")
    return SOURCES[name](root, **options)


def list_sources() -> list[str]:
    _load_builtin_sources()
    return sorted(SOURCES)


def _load_builtin_sources() -> None:
    # Imported here, not at module top, because each adapter imports `register` from this module.
    from datatool.sources import aisegment, clips, folder, kaggle_people, pfcn, supervisely  # noqa: F401


__all__ = ["SOURCES", "LayoutError", "Record", "Source", "create_source", "list_sources", "register"]
