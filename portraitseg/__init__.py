"""The core both halves import: records, image files, scoring, resizing, progress, params, predictors, teachers.

`datatool` (the data side) and `trainer` (the model side) share these facts and nothing else:
the trainer never imports a data-side stage module.

- `records`: the canonical sample row (its contract), split rows, reading a split, `resolve`;
- `imagefiles`: which suffixes are images, reading images and masks as the trainer sees them;
- `scoring`: when a pixel is person, IoU per photo and pooled, the mean over photos;
- `resize`: moving between a photo's size and a model's input size;
- `progress`: the one progress bar;
- `params`: the one params.yaml loader (a section into its dataclass) and options that default
  to "not given";
- `predictor`: the one interface of anything that turns photos into person probabilities;
- `teachers`: the teacher models (MediaPipe selfie, rembg, DeepLab, model files, ensembles),
  predictors that `datatool pseudolabel` labels with and `trainer evaluate` compares against;
- `teacher_files`: where the teachers' model files come from (`datatool teacher-files`), offline.
"""
