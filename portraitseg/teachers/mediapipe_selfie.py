"""MediaPipe selfie segmenter run with LiteRT: the general model (`selfie_segmentation.tflite`,
256x256, teacher `mediapipe-selfie`) and the landscape one (`selfie_segmentation_landscape.tflite`,
144x256 (height x width), teacher `mediapipe-selfie-landscape`), the same network at the input
MediaPipe uses for video calls; MediaPipe's graph picks it with `model_selection: 1`.

Pre- and post-processing follow MediaPipe's own graph for this model,
mediapipe/modules/selfie_segmentation/selfie_segmentation_cpu.pbtxt (google-ai-edge/mediapipe):
- ImageToTensorCalculator: `output_tensor_width: 256`, `output_tensor_height: 256`,
  `keep_aspect_ratio: false` (the photo is stretched, not letterboxed) and
  `output_tensor_float_range { min: 0.0 max: 1.0 }` (RGB / 255);
- TensorsToSegmentationCalculator: `activation: NONE`, because the model already ends in a
  sigmoid: its last op is LOGISTIC (output tensor `activation_10`), and on people-dev photos
  the output spans exactly [0, 1]. So the output is the person probability, used as is; the
  calculator then resizes it to the input size, as `resize_probability` does.
The model file itself declares input `input_1` float32 [1, 256, 256, 3] (NHWC) and output
float32 [1, 256, 256, 1] ([1, 144, 256, ...] for the landscape model); the input is checked when
the teacher is built.
"""

from pathlib import Path

import numpy as np

from portraitseg.teachers import TeacherOptions, register
from portraitseg.teachers.base import Teacher, TeacherError
from portraitseg.litert import TfliteFileError, open_tflite
from portraitseg.resize import resize_probability, stretch


def input_probability(
    interpreter, image: np.ndarray, input_detail: dict | None = None, output_detail: dict | None = None
) -> np.ndarray:
    """The file's person probability for one RGB photo, (H, W) at the file's input size: the photo
    stretched to that input and scaled to [0, 1], as MediaPipe's graph feeds it (module doc).
    A caller that runs many photos passes the interpreter's input and output details, read once."""
    input_detail = input_detail or interpreter.get_input_details()[0]
    output_detail = output_detail or interpreter.get_output_details()[0]
    height, width = (int(side) for side in input_detail["shape"][1:3])
    resized, _ = stretch(image, width, height)
    interpreter.set_tensor(input_detail["index"], resized[np.newaxis].astype(np.float32) / 255.0)  # (1, H, W, 3)
    interpreter.invoke()
    return interpreter.get_tensor(output_detail["index"])[0, :, :, 0]


@register
class MediaPipeSelfieTeacher(Teacher):
    name = "mediapipe-selfie"
    model_name = "mediapipe-selfie"  # its portraitseg.teacher_files registry entry
    backend = "litert-fp32"
    input_shape = (1, 256, 256, 3)

    def __init__(self, model_file: Path, threads: int | None = None):
        self.model_file = Path(model_file)
        try:
            self.interpreter = open_tflite(self.model_file, threads)
        except TfliteFileError as error:
            raise TeacherError(str(error)) from error
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        shape = tuple(int(side) for side in self.input["shape"])
        if shape != self.input_shape or self.input["dtype"] != np.float32:
            raise TeacherError(
                f"{self.model_file} is not the {self.name} model: input {shape} "
                f"{np.dtype(self.input['dtype']).name}, expected {self.input_shape} float32"
            )

    @classmethod
    def build(cls, argument: str | None, options: TeacherOptions) -> "MediaPipeSelfieTeacher":
        if argument is not None:
            raise TeacherError(f"{cls.name} takes no argument (got {cls.name}:{argument})")
        from portraitseg.teacher_files import model_path

        return cls(model_path(cls.model_name, options.models_dir), options.threads)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.input_shape[1], self.input_shape[2]

    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return [self.predict_one(image) for image in images]

    def predict_one(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        return resize_probability(input_probability(self.interpreter, image, self.input, self.output), height, width)


@register
class MediaPipeSelfieLandscapeTeacher(MediaPipeSelfieTeacher):
    """The landscape model: 144x256 (height x width) input, for 16:9 camera frames."""

    name = "mediapipe-selfie-landscape"
    model_name = "mediapipe-selfie-landscape"
    input_shape = (1, 144, 256, 3)
