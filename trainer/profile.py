"""`trainer profile`: where one artefact's CPU time goes, per operator type and per layer.

Profile before changing a model: a faster student starts from knowing which operators and
layers cost the time, in MediaPipe's model and in ours. Each backend is measured with its own
means, and the printed header says which:

- ONNX Runtime (`.onnx`): ORT's profiler (`SessionOptions.enable_profiling`) writes a Chrome
  trace; each "Node" event is one kernel run, `args.op_name` its operator type after ORT's
  graph optimisations (a Conv with its activation fused is one `FusedConv`). Node times are
  averaged over the runs after warm-up.
- PyTorch (a `best.pt` checkpoint, run in the inference graph as `trainer.runtime` does):
  `torch.profiler` with `record_shapes`. Operator types are the aten operators the model calls
  (top-level aten events, CPU time including their sub-calls, so nothing is counted twice);
  layers are the leaf `nn.Module`s, timed as `record_function` ranges opened by forward hooks.
- LiteRT (`.tflite`, `mediapipe-selfie`): the Python package has no op profiler (the C++
  `benchmark_model --enable_op_profiling` is not shipped, and the interpreter takes no
  profiler), and XNNPACK runs the whole graph as one delegate node. So each operator is cut out
  into a model of its own and timed alone with XNNPACK at the same thread count, invoked back to
  back so its threads and data stay warm as inside the model. The cut keeps the ops that turn
  constant weights into its inputs (the DEQUANTIZE of fp16 weights, folded at load) and the
  neighbours XNNPACK fuses into it (a PAD before a convolution, a RELU after its producer), which
  alone would cost a pass the model never makes. Ops with only constant inputs run once at load
  and are not timed. The sum of the parts is printed beside the whole-model time.

Every backend's whole-model latency is the median wall-clock time of runs without a profiler,
timed by `trainer.harness.measure_latencies` as `trainer evaluate` times; inputs are random
(none of these kernels has a data-dependent speed).

    profile = profile_artefact("models/blazeseg/export/tflite-fp32.tflite", threads=2, runs=30)
    print(format_profile(profile, top=10))
"""

from __future__ import annotations

import copy
import json
import re
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from portraitseg.progress import progress
from portraitseg.resize import format_input_size

MEDIAPIPE_MODELS = ("mediapipe-selfie", "mediapipe-selfie-landscape")  # teacher files named instead of a path
PROFILED_SUFFIXES = (".pt", ".onnx", ".tflite")
WARMUP_RUNS = 5  # first runs allocate arenas, pack weights and spin up thread pools
SEED = 0  # of the random inputs
LAYER_PREFIX = "layer:"  # names our record_function ranges apart from torch's own events
NAME_WIDTH = 64  # the tables show the end of longer layer names, which is the part that tells layers apart
# litert-torch's source locations: "trainer.export.graph.InferenceGraph/torch.nn.modules.conv.Conv2d_0"
PYTHON_PACKAGE = re.compile(r"^(?:[a-z_][a-z0-9_]*\.)+(?=[A-Z])")  # "trainer.export.graph."
SOURCE_MODULE = re.compile(r"^(?:[a-z_][a-z0-9_]*\.)+[A-Z][A-Za-z0-9]*_(\w+)$")  # package.Class_attribute
# What XNNPACK's subgraph optimiser fuses (so the ops are timed together, see fusion_groups):
FUSED_INTO_CONSUMER = {"PAD": ("CONV_2D", "DEPTHWISE_CONV_2D")}
FUSED_INTO_PRODUCER = ("RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1")


class ProfileError(RuntimeError):
    """An artefact that cannot be profiled; the message says what to do."""


@dataclass(frozen=True)
class LayerTime:
    """One layer or graph node: milliseconds per run."""

    name: str
    op_type: str
    output_shape: tuple[int, ...] | None
    ms: float


@dataclass(frozen=True)
class OpTypeTime:
    """All nodes of one operator type: how many run per run, and their milliseconds per run."""

    op_type: str
    count: int
    ms: float


@dataclass
class Profile:
    artefact: str
    backend: str
    precision: str
    input_size: tuple[int, int]  # (height, width)
    threads: int
    runs: int
    measured: str  # what the per-operator figures are, in words; printed as the header
    latency_ms: float  # median whole-model run, no profiler attached
    op_types: list[OpTypeTime]  # slowest first
    layers: list[LayerTime]  # slowest first
    profiled_run_ms: float | None = None  # mean wall time of the profiled runs (None: ops were timed alone)
    notes: list[str] = field(default_factory=list)

    @property
    def attributed_ms(self) -> float:
        """The per-run time the profiler puts on operators (the shares are of this)."""
        return sum(op.ms for op in self.op_types)


def profile_artefact(
    artefact: str | Path, *, threads: int = 2, runs: int = 30, size: "tuple[int, int] | int | None" = None
) -> Profile:
    """Profile a checkpoint, an .onnx or .tflite file, or `mediapipe-selfie[-landscape]` on the CPU.

    `size` (S or (height, width)) sets a checkpoint's input size (default: its training size);
    exported files have their own. Raises `ProfileError` for a missing, unknown or unreadable artefact.
    """
    from trainer.runtime import RunnerError, open_runner

    path = resolve_artefact(artefact)
    try:
        runner = open_runner(path, threads=threads, size=size)
    except RunnerError as error:
        raise ProfileError(str(error)) from error
    profiler = {"pytorch": profile_pytorch, "onnxruntime": profile_onnx, "litert": profile_litert}[runner.backend]
    return profiler(runner, threads, runs)


def resolve_artefact(artefact: str | Path) -> Path:
    """The file to profile: `mediapipe-selfie[-landscape]` is the cached teacher file, anything else a path."""
    if str(artefact) in MEDIAPIPE_MODELS:
        from portraitseg.teacher_files import ModelMissingError, model_path

        try:
            return model_path(str(artefact))
        except ModelMissingError as error:
            raise ProfileError(str(error)) from error
    path = Path(artefact)
    if path.suffix not in PROFILED_SUFFIXES:
        raise ProfileError(
            f"{path}: cannot profile {path.suffix or 'a file without suffix'!r}; pass a checkpoint (.pt), "
            f"an .onnx or .tflite file, or one of {', '.join(MEDIAPIPE_MODELS)} (a TensorRT engine: profile its .onnx)"
        )
    if not path.is_file():
        raise ProfileError(f"no artefact at {path}; train it (`trainer train`) or export it (`trainer export`) first")
    return path


def whole_model_ms(run: Callable[[], object], runs: int) -> float:
    """The whole model's median latency, timed as `trainer evaluate` times (`trainer.harness.measure_latencies`)."""
    from trainer.harness import measure_latencies

    return measure_latencies({"model": run}, WARMUP_RUNS, runs)["model"]["latency_ms"]


def median_run_ms(run: Callable[[], object], runs: int) -> float:
    """Median wall-clock milliseconds of `run()` over `runs` back-to-back calls after the warm-up.

    For one cut-out operator: back to back keeps its threads and data warm as inside the model
    (the harness's pauses between blocks would time a cold start of each tiny model instead).
    """
    for _ in range(WARMUP_RUNS):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def random_tensor(shape, dtype, rng: np.random.Generator) -> np.ndarray:
    """Inputs for timing: floats around zero, 8/16-bit integers over their range, wider ones zero."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(tuple(shape)).astype(dtype)
    if np.issubdtype(dtype, np.integer) and dtype.itemsize <= 2:
        limits = np.iinfo(dtype)
        return rng.integers(limits.min, limits.max, tuple(shape), dtype=dtype, endpoint=True)
    return np.zeros(tuple(shape), dtype)  # indices or shapes: zero is valid where random is not


def sum_by_op_type(layers: list[LayerTime]) -> list[OpTypeTime]:
    totals: dict[str, list[float]] = defaultdict(list)
    for layer in layers:
        totals[layer.op_type].append(layer.ms)
    return slowest_first([OpTypeTime(op_type, len(times), sum(times)) for op_type, times in totals.items()])


def slowest_first(items):
    return sorted(items, key=lambda item: -item.ms)


# --- ONNX Runtime ------------------------------------------------------------------------------


def profile_onnx(runner, threads: int, runs: int) -> Profile:
    """ORT's own profiler on a second session with the runner's options (the runner gives the latency)."""
    import onnxruntime as ort

    feed = {runner.input.name: random_tensor(runner.input.shape, np.float32, np.random.default_rng(SEED))}
    latency = whole_model_ms(lambda: runner.session.run(None, feed), runs)
    with tempfile.TemporaryDirectory(prefix="portraitseg-ort-profile-") as folder:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "ort")
        session = ort.InferenceSession(str(runner.path), options, providers=["CPUExecutionProvider"])
        for _ in range(WARMUP_RUNS):
            session.run(None, feed)
        for _ in progress(range(runs), desc="ONNX Runtime runs", unit="run"):
            session.run(None, feed)
        trace = json.loads(Path(session.end_profiling()).read_text())
    layers = onnx_node_times(trace, WARMUP_RUNS, runs)
    timed_runs = sorted((event["ts"], event["dur"]) for event in trace if event.get("name") == "model_run")[WARMUP_RUNS:]
    return Profile(
        artefact=str(runner.path), backend="onnxruntime", precision=runner.precision, input_size=runner.input_size,
        threads=threads, runs=runs, latency_ms=latency, op_types=sum_by_op_type(layers), layers=layers,
        profiled_run_ms=statistics.mean(duration for _, duration in timed_runs) / 1e3,
        measured=(
            "ONNX Runtime profiler (enable_profiling): kernel time of every graph node after ORT's own "
            f"graph optimisations (fused nodes count once), mean over {runs} runs after {WARMUP_RUNS} warm-up runs"
        ),
    )


def onnx_node_times(trace: list[dict], warmup: int, runs: int) -> list[LayerTime]:
    """Mean milliseconds per run of each node in an ORT trace, leaving out the first `warmup` runs.

    A run is a "model_run" event; the node events ("cat": "Node", name "<node>_kernel_time",
    `dur` in microseconds) of the timed runs are the ones that start after the first timed run.
    """
    starts = sorted(event["ts"] for event in trace if event.get("name") == "model_run")
    if len(starts) != warmup + runs:
        raise ProfileError(f"the ONNX Runtime trace holds {len(starts)} runs, expected {warmup + runs}")
    first_timed = starts[warmup]
    totals: dict[str, float] = defaultdict(float)
    kinds: dict[str, tuple[str, tuple[int, ...] | None]] = {}
    for event in trace:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith("_kernel_time") or event["ts"] < first_timed:
            continue
        node = name.removesuffix("_kernel_time")
        totals[node] += event["dur"]
        args = event.get("args", {})
        shapes = [shape for output in args.get("output_type_shape", []) for shape in output.values()]
        kinds[node] = (args.get("op_name", "?"), tuple(shapes[0]) if shapes else None)
    return slowest_first([LayerTime(node, *kinds[node], total / runs / 1e3) for node, total in totals.items()])


# --- PyTorch -----------------------------------------------------------------------------------


class LayerRanges:
    """Forward hooks that wrap every leaf module's call in a `record_function` range named after it.

    While attached, `shapes` maps each range name to (module class, output shape).
    """

    def __init__(self, model):
        self.model = model
        self.shapes: dict[str, tuple[str, tuple[int, ...] | None]] = {}
        self.handles = []

    def __enter__(self) -> LayerRanges:
        for name, module in self.model.named_modules():
            if name and next(module.children(), None) is None:
                self.handles += self.hook(LAYER_PREFIX + name, module)
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def hook(self, label: str, module) -> list:
        from torch.profiler import record_function

        open_ranges = []  # a stack: a module may run more than once per forward

        def enter(module, args):
            open_ranges.append(record_function(label))
            open_ranges[-1].__enter__()

        def leave(module, args, output):
            open_ranges.pop().__exit__(None, None, None)
            shape = tuple(output.shape) if hasattr(output, "shape") else None
            self.shapes[label] = (type(module).__name__, shape)

        return [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]


def profile_pytorch(runner, threads: int, runs: int) -> Profile:
    """torch.profiler over the runner's inference graph; the latency is measured without hooks or profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    graph = runner.graph
    batch = torch.from_numpy(random_tensor((1, *runner.input_size, runner.in_channels), np.float32, np.random.default_rng(SEED)))
    with torch.inference_mode():
        latency = whole_model_ms(lambda: graph(batch), runs)
        with LayerRanges(graph) as ranges:
            for _ in range(WARMUP_RUNS):
                graph(batch)
            run_times = []
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
                for _ in progress(range(runs), desc="PyTorch runs", unit="run"):
                    start = time.perf_counter()
                    graph(batch)
                    run_times.append(time.perf_counter() - start)
    op_types, layers = torch_event_times(profiler.events(), ranges.shapes, runs)
    return Profile(
        artefact=str(runner.path), backend="pytorch", precision=runner.precision, input_size=runner.input_size,
        threads=threads, runs=runs, latency_ms=latency, op_types=op_types, layers=layers,
        profiled_run_ms=statistics.mean(run_times) * 1e3,
        measured=(
            "torch.profiler (record_shapes), CPU time per run averaged over "
            f"{runs} runs after {WARMUP_RUNS} warm-up runs; operator types = the aten operators the model "
            "calls (top-level aten events, including their sub-calls); layers = leaf nn.Modules "
            "(record_function ranges), so functional calls outside modules appear in the types only"
        ),
    )


def torch_event_times(events, shapes: dict, runs: int) -> tuple[list[OpTypeTime], list[LayerTime]]:
    """(per aten operator, per leaf module) milliseconds per run from the profiler's events (µs)."""
    op_totals: dict[str, float] = defaultdict(float)
    op_counts: dict[str, int] = defaultdict(int)
    layer_totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.name.startswith(LAYER_PREFIX):
            layer_totals[event.name] += event.cpu_time_total
        elif not event.is_user_annotation and (event.cpu_parent is None or event.cpu_parent.is_user_annotation):
            op_totals[event.name] += event.cpu_time_total
            op_counts[event.name] += 1
    op_types = [OpTypeTime(name, round(op_counts[name] / runs), total / runs / 1e3) for name, total in op_totals.items()]
    layers = [
        LayerTime(label.removeprefix(LAYER_PREFIX), *shapes.get(label, ("?", None)), total / runs / 1e3)
        for label, total in layer_totals.items()
    ]
    return slowest_first(op_types), slowest_first(layers)


# --- LiteRT ------------------------------------------------------------------------------------


def profile_litert(runner, threads: int, runs: int) -> Profile:
    """Each operator (with what XNNPACK fuses into it) timed alone with XNNPACK; the runner gives the latency."""
    from ai_edge_litert.tools.flatbuffer_utils import read_model

    rng = np.random.default_rng(SEED)
    interpreter = runner.interpreter
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], random_tensor(detail["shape"], detail["dtype"], rng))
    latency = whole_model_ms(interpreter.invoke, runs)
    model = read_model(runner.path)
    at_load = load_time_ops(model)
    with tempfile.TemporaryDirectory(prefix="portraitseg-litert-profile-") as folder:
        layers = [
            time_ops(model, group, at_load, Path(folder) / f"ops{group[-1]}.tflite", threads, runs, rng)
            for group in progress(fusion_groups(model, at_load), desc="LiteRT operators", unit="op")
        ]
    load_counts = defaultdict(int)
    for index in at_load:
        load_counts[op_type_name(model, model.subgraphs[0].operators[index])] += 1
    notes = [f"not timed, computed once at load: {count} {name}" for name, count in sorted(load_counts.items())]
    return Profile(
        artefact=str(runner.path), backend="litert", precision=runner.precision, input_size=runner.input_size,
        threads=threads, runs=runs, latency_ms=latency, op_types=sum_by_op_type(layers), layers=slowest_first(layers),
        measured=(
            "LiteRT has no per-operator profiler in Python and XNNPACK runs the graph as one node, so each "
            "operator was cut out into a model of its own (with the ops that make its constant weights, and "
            "the neighbours XNNPACK fuses into it: a PAD before a convolution, a RELU after its producer, "
            f"listed as PAD+CONV_2D, CONV_2D+RELU) and timed alone with XNNPACK, {threads} thread(s), median of "
            f"{runs} back-to-back invokes after {WARMUP_RUNS} warm-up; effects between ops inside the whole "
            "model (data still in cache) are not measured"
        ),
        notes=notes,
    )


def tflite_layer_name(tensor_name: str) -> str:
    """An output tensor's name, as a PyTorch module path where litert-torch made it a source location.

    litert-torch names a tensor by the chain of modules it came from, each `package.Class_attribute`
    (`trainer.export.graph.InferenceGraph/trainer.models.mobile_unet.MobileUNet_model/...
    /torch.nn.modules.conv.Conv2d_0;1`, ';1' = the module's second op), and joins the locations
    of fused ops with ';;'. That becomes the last location's attribute path, `model.encoder.0.0.0;1`.
    Other names (MediaPipe's `conv2d_5`) pass unchanged.
    """
    location = tensor_name.split(";;")[-1].removesuffix(";")
    path, separator, index = location.partition(";")
    root, *parts = path.split("/")
    attributes = [SOURCE_MODULE.match(part) for part in parts]
    if not PYTHON_PACKAGE.match(root) or not all(attributes):
        return tensor_name
    name = ".".join(match.group(1) for match in attributes) if parts else PYTHON_PACKAGE.sub("", root)
    return name + separator + index


def op_type_name(model, operator) -> str:
    """CONV_2D, DEPTHWISE_CONV_2D, ...; a custom op by its own name (MediaPipe's Convolution2DTransposeBias)."""
    from ai_edge_litert.tools.flatbuffer_utils import opcode_to_name

    name = opcode_to_name(model, operator.opcodeIndex)
    if name == "CUSTOM":
        custom = model.operatorCodes[operator.opcodeIndex].customCode
        return custom.decode() if isinstance(custom, bytes) else str(custom)
    return name or f"opcode {operator.opcodeIndex}"


def constant_tensors(model) -> set[int]:
    """Tensors of subgraph 0 whose values are stored in the file (weights, biases, shapes)."""
    graph = model.subgraphs[0]
    return {
        index for index, tensor in enumerate(graph.tensors)
        if model.buffers[tensor.buffer].data is not None and len(model.buffers[tensor.buffer].data) > 0
    }


def load_time_ops(model) -> set[int]:
    """Ops whose inputs are all constant, directly or through other such ops: they run once at load."""
    graph = model.subgraphs[0]
    known = constant_tensors(model)
    ops = set()
    for index, operator in enumerate(graph.operators):  # operators are stored in execution order
        if all(tensor < 0 or tensor in known for tensor in operator.inputs):
            ops.add(index)
            known.update(operator.outputs)
    return ops


def fusion_groups(model, at_load: set[int]) -> list[list[int]]:
    """The ops to time, in execution order, each with the neighbours XNNPACK fuses into it.

    XNNPACK's subgraph optimiser folds a PAD into the convolution that reads it, and a RELU-type
    clamp into the op that produces its input, when that op's output goes nowhere else; timed
    apart, those would cost a whole pass over the tensor that the model never makes (a 192 px
    input PAD alone takes longer than PAD+CONV_2D together).
    """
    graph = model.subgraphs[0]
    types = [op_type_name(model, operator) for operator in graph.operators]
    producer = {tensor: index for index, operator in enumerate(graph.operators) for tensor in operator.outputs}
    readers = defaultdict(list)
    for index, operator in enumerate(graph.operators):
        for tensor in operator.inputs:
            readers[tensor].append(index)

    def sole_reader(index: int) -> int | None:
        outputs = graph.operators[index].outputs
        if len(outputs) != 1 or outputs[0] in graph.outputs or len(readers[outputs[0]]) != 1:
            return None
        return readers[outputs[0]][0]

    group_of = {index: index for index in range(len(graph.operators)) if index not in at_load}
    for index in sorted(group_of):  # execution order: CONV_2D -> RELU joins before PAD -> CONV_2D
        source = producer.get(graph.operators[index].inputs[0])
        if types[index] in FUSED_INTO_PRODUCER and source in group_of and sole_reader(source) == index:
            group_of[index] = group_of[source]
    for index in sorted(group_of):
        target = sole_reader(index)
        fused = target in group_of and types[target] in FUSED_INTO_CONSUMER.get(types[index], ())
        if fused and graph.operators[target].inputs[0] == graph.operators[index].outputs[0]:
            group_of[index] = group_of[target]
    groups = defaultdict(list)
    for index in sorted(group_of):
        groups[group_of[index]].append(index)
    return sorted(groups.values())


def cut_out(model, indices: list[int], at_load: set[int]) -> bytes:
    """A .tflite holding ops `indices` of subgraph 0 and the load-time ops that make their inputs.

    Its inputs are the computed tensors the ops read from outside, its outputs those of the last
    op; only the tensors and buffers used are kept (buffer 0 stays the empty one, by convention).
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools.flatbuffer_utils import convert_object_to_bytearray

    graph = model.subgraphs[0]
    operators = [graph.operators[index] for index in weight_producers(graph, indices, at_load) + indices]
    used = list(dict.fromkeys(t for op in operators for t in [*op.inputs, *op.outputs, *(op.intermediates or [])] if t >= 0))
    new_index = {tensor: position for position, tensor in enumerate(used)}
    stored = constant_tensors(model)
    buffers = [schema.BufferT()]
    tensors = []
    for tensor in used:
        copied = copy.copy(graph.tensors[tensor])
        copied.buffer = 0
        if tensor in stored:
            buffers.append(model.buffers[graph.tensors[tensor].buffer])
            copied.buffer = len(buffers) - 1
        tensors.append(copied)
    made_inside = {tensor for operator in operators for tensor in operator.outputs}
    outside = [t for op in operators for t in op.inputs if t >= 0 and t not in stored and t not in made_inside]
    subgraph = schema.SubGraphT()
    subgraph.tensors = tensors
    subgraph.operators = [remapped(operator, new_index) for operator in operators]
    subgraph.inputs = [new_index[tensor] for tensor in dict.fromkeys(outside)]
    subgraph.outputs = [new_index[tensor] for tensor in graph.operators[indices[-1]].outputs if tensor >= 0]
    part = schema.ModelT()
    part.version = model.version
    part.operatorCodes = model.operatorCodes
    part.subgraphs = [subgraph]
    part.buffers = buffers
    part.description = f"ops {indices} of a model, cut out by trainer profile".encode()
    return bytes(convert_object_to_bytearray(part))


def weight_producers(graph, indices: list[int], at_load: set[int]) -> list[int]:
    """The load-time ops that `indices` depend on (e.g. DEQUANTIZE of fp16 weights), in execution order."""
    producer = {tensor: index for index, operator in enumerate(graph.operators) for tensor in operator.outputs}
    found = set()
    pending = list(indices)
    while pending:
        for tensor in graph.operators[pending.pop()].inputs:
            op = producer.get(tensor)
            if op is not None and op in at_load and op not in found:
                found.add(op)
                pending.append(op)
    return sorted(found)


def remapped(operator, new_index: dict[int, int]):
    copied = copy.copy(operator)
    copied.inputs = [new_index[tensor] if tensor >= 0 else -1 for tensor in operator.inputs]
    copied.outputs = [new_index[tensor] for tensor in operator.outputs]
    if operator.intermediates is not None:
        copied.intermediates = [new_index[tensor] for tensor in operator.intermediates]
    return copied


def time_ops(model, indices: list[int], at_load: set[int], file: Path, threads: int, runs: int, rng) -> LayerTime:
    """Median milliseconds of ops `indices` cut out of `model` and run with XNNPACK on random inputs."""
    from portraitseg.litert import TfliteFileError, open_tflite

    graph = model.subgraphs[0]
    op_type = "+".join(op_type_name(model, graph.operators[index]) for index in indices)
    output = graph.tensors[graph.operators[indices[-1]].outputs[0]]
    name = tflite_layer_name(output.name.decode() if isinstance(output.name, bytes) else str(output.name))
    file.write_bytes(cut_out(model, indices, at_load))
    try:
        interpreter = open_tflite(file, threads)
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], random_tensor(detail["shape"], detail["dtype"], rng))
        ms = median_run_ms(interpreter.invoke, runs)
    except (TfliteFileError, ValueError, RuntimeError) as error:
        raise ProfileError(
            f"operator {indices[-1]} ({op_type}, output {name}) cannot run on its own in LiteRT ({error}); "
            "per-operator LiteRT timing does not cover this model: profile its .onnx or checkpoint instead"
        ) from error
    finally:
        file.unlink(missing_ok=True)
    shape = tuple(int(side) for side in output.shape) if output.shape is not None else None
    return LayerTime(name, op_type, shape, ms)


# --- output ------------------------------------------------------------------------------------


def format_profile(profile: Profile, top: int = 10) -> str:
    """The profile as Markdown: a header that says what was measured, then the two tables."""
    total = profile.attributed_ms or 1.0  # shares of the time put on operators; 0 only for an empty graph
    lines = [
        f"## Profile of {profile.artefact}",
        "",
        f"{profile.backend}, {profile.precision}, {format_input_size(profile.input_size)} input, "
        f"{profile.threads} thread{'s' * (profile.threads != 1)}, {profile.runs} runs.",
        "",
        f"- Whole model: median {profile.latency_ms:.3f} ms per run (wall clock, no profiler).",
        f"- Per operator: {profile.measured}.",
        f"- The per-operator times add up to {profile.attributed_ms:.3f} ms per run "
        f"({profile.attributed_ms / profile.latency_ms:.2f}x the whole-model median); shares are of that sum.",
        *(
            [f"- The profiled runs took {profile.profiled_run_ms:.3f} ms each (mean wall clock, profiler on)."]
            if profile.profiled_run_ms is not None
            else []
        ),
        *[f"- Note: {note}." for note in profile.notes],
        "",
        "| op type | count | ms per run | share |",
        "|---|---:|---:|---:|",
        *[f"| {op.op_type} | {op.count} | {op.ms:.3f} | {op.ms / total:.1%} |" for op in profile.op_types],
        "",
        f"Slowest {min(top, len(profile.layers))} of {len(profile.layers)} layers:",
        "",
        "| layer | op type | output shape | ms per run | share |",
        "|---|---|---|---:|---:|",
        *[
            f"| {short_name(layer.name)} | {layer.op_type} | {format_shape(layer.output_shape)} | {layer.ms:.3f} | {layer.ms / total:.1%} |"
            for layer in profile.layers[:top]
        ],
    ]
    return "\n".join(lines)


def short_name(name: str) -> str:
    """`name`, or '…' and its last NAME_WIDTH characters."""
    return name if len(name) <= NAME_WIDTH else "…" + name[-NAME_WIDTH:]


def format_shape(shape: tuple[int, ...] | None) -> str:
    return "?" if shape is None else "x".join(str(side) for side in shape)


def profile_json(profile: Profile) -> dict:
    """Everything measured, every layer included, plus the sum the shares are of."""
    return {**asdict(profile), "attributed_ms": profile.attributed_ms}


def write_profile_json(profile: Profile, output: Path) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(profile_json(profile), indent=2) + "\n")
    return output
