"""One engine for every stage that writes a canonical set, on this machine or on a Ray cluster.

A stage supplies only what is its own (`Stage`): the work it scanned, a per-sample step (work
items in; outcomes and file bytes out), how it claims files and reports notes, and what it adds to
a row. The engine does the rest, the same way for every stage and on either engine:

1. **Re-use.** A work item whose input fingerprint and run signature are unchanged and whose files
   are still there keeps its previous outcome (`datatool.reuse`); nothing is decoded for it.
2. **Steps.** The rest goes to the step, in batches: in this process, in worker processes
   (`kind: local`, `workers` > 1), or in Ray Data's `map_batches` over an actor pool (`kind: ray`).
   A step is built once per worker (one model load per actor).
3. **One writer.** The driver writes each outcome's files (and hard links to input files), then
   its state line, then its manifest rows, in the order of the work. So both engines write the
   same bytes, a worker that dies and is retried writes nothing twice, and a killed driver leaves
   files and a state that the next run reuses (`datatool.outputs`: never a manifest that names
   missing files). With `writer: workers` each worker writes its outcomes' files straight into
   the output (which must then be on storage every node shares) and returns only the outcomes;
   the driver still writes the state and manifest after them, so the same promises hold (a retried
   batch writes the same bytes again).
4. **Clean-up.** Files the stage wrote before and no longer produces are removed.

The Ray engine needs `pip install "portraitseg[ray]"`. Inputs must be readable at the same paths
on every Ray node (a shared filesystem); outputs travel back to the driver as bytes, unless the
workers write them (`writer: workers`).
"""

import logging
import multiprocessing
import os
import pickle
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from datatool.canonical import link_file, write_files, write_manifest
from datatool.outputs import OutputFolder
from datatool.report import Report
from datatool.reuse import Outcome, StateWriter, load_state
from portraitseg.progress import progress

ENGINES = ("local", "ray")
WRITERS = ("driver", "workers")
IN_FLIGHT_PER_WORKER = 4  # batches queued per worker process: memory stays flat however many samples
ATTEMPTS = 3  # a batch whose worker process dies this often is reported as skipped, not retried again
RAY_BATCHES_PER_TASK = 4  # the stage's batches per Ray task: each task costs Ray a few ms of scheduling and transfer


@dataclass(frozen=True)
class Work:
    """One sample to make: its id, its input fingerprint (None when a file is missing), what the
    step reads (a source record, a photo; picklable), and the file that reports name."""

    sample_id: str
    inputs: list | None
    item: Any
    file: str


@dataclass
class Done:
    """What a step made of one work item: the outcome (rows and skips, notes, counts), the files
    to write and the input files to link (by path relative to the output; the engine lists both
    as the outcome's files). `seconds` is the item's share of the model's time."""

    outcome: Outcome
    files: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # path in the output -> input file to hard-link there
    seconds: float = 0.0
    linked: dict[str, int] = field(default_factory=dict)  # report counts of the links once made ("linked_files", "copied_files")


class Step(Protocol):
    def __call__(self, works: list[Work]) -> list[Done]: ...


@dataclass(frozen=True)
class EngineOptions:
    """Where the steps run (params.yaml `engine:`; `--engine`, `--workers`, `--ray-address`)."""

    kind: str = "local"  # local | ray
    workers: int = 1  # local: worker processes (1 = this process); ray: actors; 0 = all cores / all cluster CPUs
    ray_address: str | None = None  # join this Ray cluster ($RAY_ADDRESS also works); None = a local Ray runtime
    cpus_per_worker: float = 1.0  # ray: CPUs each actor reserves
    gpus_per_worker: float = 0.0  # ray: GPUs each actor reserves (1 with a CUDA teacher)
    writer: str = "driver"  # who writes the files: the driver, or the workers (into an output on shared storage)

    def __post_init__(self) -> None:
        if self.kind not in ENGINES:
            raise ValueError(f"unknown engine {self.kind!r}; choose one of: {', '.join(ENGINES)}")
        if self.writer not in WRITERS:
            raise ValueError(f"unknown writer {self.writer!r}; choose one of: {', '.join(WRITERS)}")


class Stage(Protocol):
    """What a dataset-writing stage tells the engine."""

    label: str  # progress bar text, e.g. "ingest demo-pfcn"
    state_file: str  # the re-use state beside the manifest
    signature: str  # what besides the input files decides the output (`reuse.signature`)
    folders: tuple[str, ...]  # sub-folders of the output the step writes into
    processed_counter: str  # report count of the samples processed now (the others are "reused")
    batch_size: int  # work items per step call
    manifest: bool  # write the rows as manifest.jsonl (a background library has no rows)

    def claims(self, work: Work) -> Iterable[str]:
        """Every file this work item may be written as (claimed before anything is written)."""
        ...

    def step_factory(self) -> Callable[[], Step]:
        """A picklable callable that builds the step in a worker."""
        ...

    def note(self, report: Report, work: Work, outcome: Outcome, note: str) -> None:
        """Report one repair note of a sample."""
        ...

    def accept(self, work: Work, row: dict[str, Any]) -> dict[str, Any]:
        """The manifest row of a produced sample (a stage adds fields and keeps totals here)."""
        ...


class StageDefaults:
    """The `Stage` hooks most stages share: a repair note is reported against the work item's file
    and sample id, and a produced row goes to the manifest as the step made it. Subclass it and
    override what differs."""

    def note(self, report: Report, work: Work, outcome: Outcome, note: str) -> None:
        report.repair(work.file, note, id=outcome.sample_id)

    def accept(self, work: Work, row: dict[str, Any]) -> dict[str, Any]:
        return row


@dataclass
class Totals:
    written: int = 0  # rows (of the manifest, where the stage writes one)
    step_seconds: float = 0.0  # the steps' model time (sum of `Done.seconds`)
    stepped: int = 0  # work items that went through a step this run
    warmup_seconds: float | None = None  # from the start to the first stepped result (workers or actors starting)


def run_stage(stage: Stage, folder: OutputFolder, works: list[Work], report: Report, engine: EngineOptions) -> Totals:
    """Make every work item into the canonical set at `folder`; report counts, skips and notes."""
    output = folder.path
    previous = load_state(output / stage.state_file, stage.signature)
    folder.begin(stage.folders, claims=(path for work in works for path in stage.claims(work)))
    totals = Totals()
    produced: set[str] = set()
    started = time.perf_counter()

    def manifest_rows(state: StateWriter) -> Iterator[dict[str, Any]]:
        for work, done, reused in progress(outcomes(stage, works, previous, output, engine), total=len(works), desc=stage.label):
            outcome = done.outcome
            if not reused:
                store(output, done)  # before the state line: a listed sample has its files (workers may have stored it)
                report.counts.update(done.linked)
                if totals.warmup_seconds is None:
                    totals.warmup_seconds = time.perf_counter() - started
                totals.stepped += 1
                totals.step_seconds += done.seconds
            report.counts["reused" if reused else stage.processed_counter] += 1
            for counter, value in outcome.counts.items():
                report.counts[counter] += value
            for note in outcome.notes:
                stage.note(report, work, outcome, note)
            if outcome.inputs is not None:
                state.write(asdict(outcome))
            for skip in outcome.skips:
                report.skip(**skip)  # file, reason, and any details the step added (e.g. id)
            produced.update(outcome.files)
            for row in outcome.rows:
                yield stage.accept(work, row)

    with StateWriter(output / stage.state_file, stage.signature) as state:
        rows = manifest_rows(state)
        if stage.manifest:
            totals.written = write_manifest(output, rows)
        else:
            totals.written = sum(1 for _ in rows)
    report.counts["removed_stale_files"] = folder.finish(produced)
    return totals


def engine_header(engine: EngineOptions, totals: Totals) -> dict[str, Any]:
    """What a stage's report says about where it ran (the rest of the report is the same on either engine)."""
    warmup = None if totals.warmup_seconds is None else round(totals.warmup_seconds, 3)
    return {"kind": engine.kind, "workers": engine.workers, "stepped": totals.stepped, "warmup_seconds": warmup}


def outcomes(
    stage: Stage, works: list[Work], previous: dict[str, dict[str, Any]], output: Path, engine: EngineOptions
) -> Iterator[tuple[Work, Done, bool]]:
    """`(work, done, reused)` in work order; only what changed goes to the steps, lazily."""
    reused: dict[int, Outcome] = {}
    for index, work in enumerate(works):
        cached = previous.get(work.sample_id)
        if cached is not None and work.inputs is not None and cached["inputs"] == work.inputs and files_exist(output, cached):
            reused[index] = Outcome(**cached)
    fresh = [work for index, work in enumerate(works) if index not in reused]
    run = ray_steps if engine.kind == "ray" else local_steps
    factory = partial(StoringStep, stage.step_factory(), output) if engine.writer == "workers" else stage.step_factory()
    results = run(factory, fresh, stage.batch_size, engine) if fresh else iter(())
    for index, work in enumerate(works):
        if index in reused:
            yield work, Done(reused[index]), True
        else:
            yield work, next(results), False


def store(output: Path, done: Done) -> None:
    """Write a step's files and make its links in the output; the outcome then lists them as its own."""
    if not done.files and not done.links:
        return  # nothing made, or stored already (by a worker)
    write_files(output, done.files)
    for target, source in done.links.items():
        how = link_file(Path(source), output / target)
        done.linked[how] = done.linked.get(how, 0) + 1
    done.outcome.files = [*done.files, *done.links]
    done.files, done.links = {}, {}


class StoringStep:
    """A step that stores its results itself, in a worker (`writer: workers`): the file bytes
    never travel to the driver, and the output must be the same shared folder on every node."""

    def __init__(self, factory: Callable[[], Step], output: Path):
        self.step = factory()
        self.output = output

    def __call__(self, works: list[Work]) -> list[Done]:
        results = self.step(works)
        for done in results:
            store(self.output, done)
        return results


def files_exist(output: Path, cached: dict[str, Any]) -> bool:
    return all((output / name).is_file() for name in cached["files"])


def batches(works: list[Work], size: int) -> Iterator[list[Work]]:
    for start in range(0, len(works), size):
        yield works[start : start + size]


# -- local: this process, or worker processes ----------------------------------------------------


def local_steps(factory: Callable[[], Step], works: list[Work], batch_size: int, engine: EngineOptions) -> Iterator[Done]:
    """The steps' results in work order; with several workers at most `IN_FLIGHT_PER_WORKER`
    batches per worker are queued, and a batch whose worker process died is run again."""
    workers = engine.workers or os.cpu_count() or 1
    if workers == 1:
        step = factory()
        for batch in batches(works, batch_size):
            yield from step(batch)
        return
    pool = WorkerPool(factory, workers)
    pending: deque[Queued] = deque()
    try:
        for batch in batches(works, batch_size):
            pending.append(Queued(batch, pool.submit(batch)))
            while len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                yield from pool.result(pending)
        while pending:
            yield from pool.result(pending)
    finally:
        pool.shutdown()


@dataclass
class Queued:
    batch: list[Work]
    future: Future | None  # None: to be submitted again when it is first in line
    deaths: int = 0  # times a worker process died while this batch was first in line


class WorkerPool:
    """Worker processes that each build the step once; replaced when one of them dies."""

    def __init__(self, factory: Callable[[], Step], workers: int):
        self.factory = factory
        self.workers = workers
        self.executor = self.start()

    def start(self) -> ProcessPoolExecutor:
        # forkserver, not fork: a forked child inherits OpenCV's thread pool mid-state from the
        # parent (which may already have decoded images) and can deadlock in its first call.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["datatool.engine", "datatool.ingest", "datatool.sources"])
        return ProcessPoolExecutor(self.workers, mp_context=context, initializer=build_worker_step, initargs=(self.factory,))

    def submit(self, batch: list[Work]) -> Future:
        return self.executor.submit(run_worker_step, batch)

    def result(self, pending: deque[Queued]) -> list[Done]:
        """The first queued batch's results. A dead worker breaks the whole pool: a new one starts,
        the unfinished batches run again one by one as they come first in line (so the batch that
        kills a worker is the one in line when it dies), and one that dies `ATTEMPTS` times is reported."""
        head = pending[0]
        while True:
            if head.future is None:
                head.future = self.submit(head.batch)
            try:
                results = head.future.result()
                pending.popleft()
                return results
            except BrokenProcessPool:
                head.deaths += 1
                self.executor.shutdown(cancel_futures=True)
                self.executor = self.start()
                for queued in pending:
                    finished = queued.future is not None and queued.future.done() and queued.future.exception() is None
                    if not finished:
                        queued.future = None
                if head.deaths >= ATTEMPTS:
                    pending.popleft()
                    return [died(work, head.deaths) for work in head.batch]

    def shutdown(self) -> None:
        self.executor.shutdown(cancel_futures=True)


def died(work: Work, attempts: int) -> Done:
    """A work item whose worker process died every time: reported, and tried again on the next run."""
    reason = f"the worker process died {attempts} times on this sample (out of memory or a crash in a decoder)"
    return Done(Outcome(sample_id=work.sample_id, inputs=None, skips=[{"file": work.file, "reason": reason}]))


_worker_step: Step | None = None


def build_worker_step(factory: Callable[[], Step]) -> None:
    global _worker_step
    limit_worker_threads()
    _worker_step = factory()


def run_worker_step(batch: list[Work]) -> list[Done]:
    return _worker_step(batch)


def limit_worker_threads() -> None:
    # A worker handles one sample at a time; OpenCV's own thread pool would only oversubscribe
    # the cores that the other workers already use.
    import cv2

    cv2.setNumThreads(1)


# -- ray: Ray Data over an actor pool --------------------------------------------------------------


def ray_steps(factory: Callable[[], Step], works: list[Work], batch_size: int, engine: EngineOptions) -> Iterator[Done]:
    """The steps' results in work order, computed by `map_batches` over a pool of actors (each
    builds the step once). The driver holds only pickled work items and the results in flight."""
    ray = connect(engine.ray_address)
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    context.execution_options.preserve_order = True  # rows come back in work order: the manifest's order
    context.enable_progress_bars = False  # the stage shows its own
    context.raise_original_map_exception = True  # a TeacherError reaches the command as itself
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # plan and progress lines; errors still show
    actors = engine.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // engine.cpus_per_worker))
    # Up to RAY_BATCHES_PER_TASK batches per task, but at least 4 tasks per actor where there is the work:
    # a few big tasks would leave actors idle.
    per_task = max(1, min(RAY_BATCHES_PER_TASK, -(-len(works) // (actors * 4 * batch_size))))
    task_size = batch_size * per_task
    tasks = max(1, -(-len(works) // task_size))
    dataset = ray.data.from_items([{"work": pickle.dumps(work)} for work in works], override_num_blocks=tasks)
    results = dataset.map_batches(
        RayStep,
        fn_constructor_args=(factory, batch_size),
        batch_size=task_size,
        batch_format="numpy",
        # Two tasks queued per actor: it never waits for input, and decoded images stay few.
        compute=ActorPoolStrategy(size=min(actors, tasks), max_tasks_in_flight_per_actor=2),
        num_cpus=engine.cpus_per_worker,
        num_gpus=engine.gpus_per_worker,
    )  # Ray Data restarts an actor whose process dies and runs its batch again (max_restarts=-1 by default)
    for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
        for done in batch["done"]:
            yield pickle.loads(done)


class RayStep:
    """A Ray Data actor: builds the step once, then turns batches of pickled work into pickled results."""

    def __init__(self, factory: Callable[[], Step], batch_size: int):
        limit_worker_threads()
        self.step = factory()
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        works = [pickle.loads(work) for work in batch["work"]]
        done = [item for part in batches(works, self.batch_size) for item in self.step(part)]  # the stage's batches, as local
        return {"done": np.array([pickle.dumps(item) for item in done], dtype=object)}


def connect(address: str | None):
    """Ray, connected: to the cluster at `address` or `$RAY_ADDRESS`, else to a local runtime
    with this machine's cores (started once per process; usage statistics off)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Under `uv run`, Ray would build a second virtual environment for its workers from the
    # project; this one already holds everything they import.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray
    except ImportError as error:
        raise RuntimeError('--engine ray needs Ray: pip install "portraitseg[ray]"') from error
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level="WARNING")
    else:
        # "local", not a bare init(): a stale cluster file left by a killed run would make a
        # bare init() try to join a cluster that is gone.
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    return ray
