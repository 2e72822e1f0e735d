"""Generic image/mask folders: two directories of images and masks paired by file stem.

Auto-detects the common pairs (`images/`+`masks/`, `Training_Images/`+`Ground_Truth/`,
`JPEGImages/`+`SegmentationClass/`, ...) at the input root or up to two levels below it, so a
download with `train/` and `test/` halves is one input; a pair under a folder named like a
split (`train`, `val`, `test`) gets that `official_split`. `--images-dir/--masks-dir` name the
pair explicitly. Masks may carry a suffix such as `_mask` or `_gt` after the image's stem.
"""

from pathlib import Path
from typing import Any

from datatool.report import Report
from datatool.sources import register
from datatool.sources.base import Record, Source, index_by_stem, walk_files
from portraitseg.imagefiles import IMAGE_SUFFIXES, MASK_SUFFIXES

IMAGE_DIR_NAMES = ("images", "image", "imgs", "img", "training_images", "jpegimages", "photos", "input", "inputs")
MASK_DIR_NAMES = (
    "masks", "mask", "ground_truth", "groundtruth", "gt", "labels", "label", "annotations",
    "segmentationclass", "segmentation", "alpha", "alphas", "matte", "mattes", "matting", "targets",
)  # fmt: skip
MASK_STEM_SUFFIXES = ("_mask", "-mask", "_matte", "-matte", "_gt", "-gt", "_label", "_seg", "_alpha")
SPLIT_DIR_NAMES = {
    "train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}  # fmt: skip
SEARCH_DEPTH = 2


@register
class FolderSource(Source):
    name = "folder"
    layout = (
        "  DIR/images/<name>.<jpg|png|...>   (also Images/, Training_Images/, JPEGImages/, img/ ...)\n"
        "  DIR/masks/<name>.png              (also Ground_Truth/, labels/, gt/, SegmentationClass/ ...)\n"
        "  paired by file stem (a mask may end in _mask/_gt/_matte); the pair may sit up to two\n"
        "  levels down (e.g. DIR/train/images + DIR/train/masks); or name the two folders with\n"
        "  --images-dir and --masks-dir."
    )

    def __init__(self, root: Path | str, images_dir: Path | str | None = None, masks_dir: Path | str | None = None):
        super().__init__(root)
        if (images_dir is None) != (masks_dir is None):
            raise ValueError("--images-dir and --masks-dir go together: give both or neither")
        self.images_dir = self.root / images_dir if images_dir is not None else None
        self.masks_dir = self.root / masks_dir if masks_dir is not None else None

    def options(self) -> dict[str, Any]:
        return {"images_dir": str(self.images_dir or ""), "masks_dir": str(self.masks_dir or "")}

    def scan(self, report: Report) -> list[Record]:
        self.require_root()
        if self.images_dir is not None:
            for directory in (self.images_dir, self.masks_dir):
                if not directory.is_dir():
                    raise self.layout_error(f"{directory} is not a directory")
            pairs = [(self.images_dir, self.masks_dir)]
        else:
            pairs = find_pairs(self.root)
            if not pairs:
                raise self.layout_error("found no images folder beside a masks folder")
        records: list[Record] = []
        for images_dir, masks_dir in pairs:
            records.extend(self.pair_folder(images_dir, masks_dir, report))
        return sorted(records, key=lambda record: record.key)

    def pair_folder(self, images_dir: Path, masks_dir: Path, report: Report) -> list[Record]:
        """Pair every image with its mask by relative stem; report both kinds of orphans."""
        images = index_by_stem(walk_files(images_dir, report, IMAGE_SUFFIXES), report, "image", lambda path: relative_stem(path, images_dir))
        masks: dict[str, Path] = {}
        for path in walk_files(masks_dir, report, MASK_SUFFIXES):
            stem = relative_stem(path, masks_dir)
            if stem not in images:
                stem = next((stem[: -len(s)] for s in MASK_STEM_SUFFIXES if stem.endswith(s) and stem[: -len(s)] in images), stem)
            if stem in masks:
                report.skip(path, f"second mask for one image: {report.relative(masks[stem])} is used")
                continue
            masks[stem] = path
        # A pair below the root in `train/`, `val/`, ... carries that split; the root's own name
        # says nothing (it may well be /tmp/test).
        split = SPLIT_DIR_NAMES.get(images_dir.parent.name.lower()) if images_dir.parent != self.root else None
        records = []
        for stem, image in images.items():
            mask = masks.pop(stem, None)
            if mask is None:
                report.skip(image, f"image without mask: no file named {stem}.* in {report.relative(masks_dir)}")
                continue
            key = report.relative(image)
            records.append(Record(key=key, image=image, mask=mask, group=str(Path(key).with_suffix("")), official_split=split))
        for mask in masks.values():
            report.skip(mask, f"orphan mask: no image with its stem in {report.relative(images_dir)}")
        return records


def relative_stem(path: Path, directory: Path) -> str:
    """`a/b/17.jpg` under `directory` -> `a/b/17`: masks in mirrored sub-folders pair correctly."""
    return path.relative_to(directory).with_suffix("").as_posix()


def find_pairs(root: Path) -> list[tuple[Path, Path]]:
    """Every directory (root or up to `SEARCH_DEPTH` below) holding an images and a masks folder."""
    pairs = []
    candidates = [root]
    for _ in range(SEARCH_DEPTH + 1):
        next_level = []
        for directory in candidates:
            children = {child.name.lower(): child for child in sorted(directory.iterdir()) if child.is_dir() and not child.name.startswith(".")}
            images = next((children[name] for name in IMAGE_DIR_NAMES if name in children), None)
            masks = next((children[name] for name in MASK_DIR_NAMES if name in children), None)
            if images is not None and masks is not None:
                pairs.append((images, masks))
            else:
                next_level.extend(children.values())
        candidates = next_level
    return pairs
