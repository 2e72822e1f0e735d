"""Export a trained checkpoint to deployable artefacts and check each one against PyTorch.

One module per format (`onnx`, `tflite`, `tensorrt`), plus the pieces they share:

- `graph`: the inference graph every artefact holds (uint8-range NHWC RGB in, probabilities out);
- `calibration`: the calibration set int8 quantization needs (N train images, seeded);
- `parity`: score an artefact and fp32 PyTorch on validation photos (`trainer.harness`, as `trainer evaluate` does);
- `pipeline`: `export_checkpoint`, what `trainer export` calls.

Artefacts are run on the CPU (or a GPU for TensorRT) through `trainer.runtime.open_runner`.
"""

# The ONNX metadata_props key `onnx.set_precision` writes and `trainer.runtime` reads back
# (ONNX Runtime shows it as custom metadata): fp32 or int8.
PRECISION_KEY = "portraitseg.precision"
