"""The `trainer` command line. Training, export and evaluation commands join this group as they land."""

import importlib.metadata
import platform

import click

from trainer import __version__

BACKENDS = ("torch", "torchvision", "onnx", "onnxruntime", "ai-edge-litert", "litert-torch", "dvc", "dvclive")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="trainer")
def main() -> None:
    """Train, export and evaluate compact person-segmentation models."""


@main.command()
def env() -> None:
    """Show the versions and accelerators the trainer would use on this machine."""
    import onnxruntime
    import torch

    click.echo(f"python {platform.python_version()} on {platform.machine()}, {torch.get_num_threads()} torch threads")
    for package in BACKENDS:
        try:
            click.echo(f"{package:>16} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            click.echo(f"{package:>16} not installed")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (training runs on the CPU)"
    click.echo(f"{'CUDA device':>16} {cuda}")
    click.echo(f"{'ORT providers':>16} {', '.join(onnxruntime.get_available_providers())}")
