"""portraitseg's model side: compact person-segmentation students, training, export and evaluation."""

__version__ = "0.1.0"
