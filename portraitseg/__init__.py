"""The core both halves import: the sample and split records, image files, scoring, resizing, progress.

`datatool` (the data side) and `trainer` (the model side) share these facts and nothing else:
the trainer never imports a data-side stage module.

- `records`: the canonical sample row (its contract), split rows, reading a split, `resolve`;
- `imagefiles`: which suffixes are images, reading images and masks as the trainer sees them;
- `scoring`: when a pixel is person, IoU per photo and pooled, the mean over photos;
- `resize`: moving between a photo's size and a model's input size;
- `progress`: the one progress bar;
- `params`: the one params.yaml loader (a section into its dataclass) and options that default
  to "not given".
"""
