"""portraitseg's data side: ingest public portrait datasets into canonical sets and prepare them for training."""

__version__ = "0.1.0"
