"""The `trainer` command line. Training, export and evaluation commands join this group as they land."""

import importlib.metadata
import platform
from pathlib import Path

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


@main.command()
@click.option(
    "--params",
    "params_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default="params.yaml",
    show_default=True,
    help="YAML file whose `train:` section configures the run.",
)
@click.option("--model", help="Registered model to train (overrides train.model); a wrong name lists them.")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for checkpoints, metrics and plots.  [default: models/<model>]",
)
@click.option("--resume", is_flag=True, help="Continue from <output>/last.pt.")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def train(params_path: Path, model: str | None, output: Path | None, resume: bool, overrides: tuple[str, ...]) -> None:
    """Train one student on the split manifests.

    KEY=VALUE pairs override the `train:` section, e.g. `epochs=5 loss_weights.dice=0.5`.
    """
    from trainer.config import ConfigError, load_train_config
    from trainer.models import is_model, list_models
    from trainer.train import CheckpointError, fit

    try:
        config = load_train_config(params_path, [*overrides, *([f"model={model}"] if model else [])])
    except ConfigError as error:
        raise click.UsageError(str(error)) from error
    if not is_model(config.model):
        raise click.UsageError(f"unknown model {config.model!r}; registered models: {', '.join(list_models())}")
    output = output or Path("models") / config.model
    try:
        summary = fit(config, output, resume=resume)
    except CheckpointError as error:
        raise click.ClickException(str(error)) from error
    click.echo(
        f"{config.model}: val IoU {summary['val_iou']:.4f} (Dice {summary['val_dice']:.4f}, boundary F "
        f"{summary['val_boundary_f']:.4f}) at epoch {summary['best_epoch']}/{summary['epochs']}, "
        f"{summary['params'] / 1e6:.3f} M parameters -> {output}"
    )


@main.command()
@click.argument("models_dir", type=click.Path(file_okay=False, path_type=Path), default="models")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Markdown file to write.  [default: <models_dir>/leaderboard.md]",
)
def leaderboard(models_dir: Path, output: Path | None) -> None:
    """Rank every trained student in MODELS_DIR (each <name>/metrics.json) by validation IoU."""
    from trainer.leaderboard import write_leaderboard

    output = output or models_dir / "leaderboard.md"
    results = write_leaderboard(models_dir, output)
    click.echo(f"{len(results)} trained students -> {output}")
