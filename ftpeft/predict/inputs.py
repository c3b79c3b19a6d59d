"""Reading what to score: a table of texts (csv/json/jsonl/parquet) or a folder of images (recursively)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ftpeft.core.errors import FtpeftError, reading_problem


@dataclasses.dataclass
class TableInput:
    """Rows of a text file (a ``datasets.Dataset``, read as the recipes read their files) and their ids."""

    path: Path
    rows: Any
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def columns(self) -> list[str]:
        return list(self.rows.column_names)


@dataclasses.dataclass
class ImageInput:
    """Readable image files, their ids (path under the folder without the extension: the stem in a flat
    Kaggle test folder) and the unreadable ones ('path<TAB>reason')."""

    path: Path
    files: list[str]
    ids: list[str]
    skipped: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def read_table(path: Path, id_column: str) -> TableInput:
    """A csv/json/jsonl/parquet file via ``datasets`` (the recipes' reader, so values parse as in training)."""
    from datasets import load_dataset

    from ftpeft.text.data import LOCAL_FORMATS, _has_no_rows

    suffix = path.suffix.lower()
    if suffix not in LOCAL_FORMATS:
        raise FtpeftError(f"--input {path}: unknown format '{suffix}'; use one of {sorted(LOCAL_FORMATS)}.")
    if _has_no_rows(path, LOCAL_FORMATS[suffix]):  # the recipes' check: empty, or a csv header alone
        raise FtpeftError(f"--input {path} has no data rows.")
    try:
        rows = load_dataset(LOCAL_FORMATS[suffix], data_files={"predict": str(path)}, split="predict")
    except Exception as error:  # datasets raises many types for malformed or header-only files  # noqa: BLE001
        problem = reading_problem(error)
        raise FtpeftError(f"--input {path}: could not read it as {LOCAL_FORMATS[suffix]} ({problem}).") from None
    if len(rows) == 0:
        raise FtpeftError(f"--input {path} has no data rows.")
    if id_column in rows.column_names:
        ids = ["" if value is None else str(value) for value in rows[id_column]]
    else:
        ids = [str(i) for i in range(len(rows))]
    return TableInput(path, rows, ids)


def read_image_folder(path: Path, strict: bool) -> ImageInput:
    """Every image file under ``path`` (hidden folders left out), sorted; unreadable ones skipped or refused."""
    from ftpeft.vision.data import IMAGE_EXTENSIONS, verify_images

    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise FtpeftError(f"--input {path}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in it.")
    good, skipped = verify_images([str(p) for p in files])
    if skipped and strict:
        first = skipped[0].replace("\t", " (")
        raise FtpeftError(f"--strict_images: {len(skipped)} unreadable image(s) in --input {path}, first: {first}).")
    if not good:
        raise FtpeftError(f"--input {path}: none of its {len(files)} image files can be read (first: {skipped[0]}).")
    files = [files[i] for i in good]
    ids = [p.relative_to(path).with_suffix("").as_posix() for p in files]
    if len(set(ids)) < len(ids):  # photo.jpg next to photo.png: keep the extensions
        ids = [p.relative_to(path).as_posix() for p in files]
    return ImageInput(path, [str(p) for p in files], ids, skipped)


def read_inputs(path: str | Path, modality: str, id_column: str, strict_images: bool) -> TableInput | ImageInput:
    """``--input`` as the model needs it: a text model reads a file, an image model a folder."""
    path = Path(path)
    if not path.exists():
        raise FtpeftError(f"--input {path}: no such file or directory.")
    if modality == "image":
        if not path.is_dir():
            raise FtpeftError(
                f"--input {path} is a file; an image model scores a folder of images (class folders or a flat "
                "Kaggle test folder)."
            )
        return read_image_folder(path, strict_images)
    if path.is_dir():
        raise FtpeftError(f"--input {path} is a folder; a text model scores a csv/json/jsonl/parquet file.")
    return read_table(path, id_column)


def read_image(path: str):
    """An RGB PIL image, as the image recipes read their files."""
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")
