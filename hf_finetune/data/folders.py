"""Image folders: the (path, class name) rows of a ``CLASS/**/*`` folder, every file checked up front.

Hidden files and folders are left out and symbolic links to folders are not followed; a file the up-front check
refuses (:func:`hf_finetune.data.image_check.check_image_files`) is skipped and listed, or, with ``strict``, is an
error; a class folder left without images is an error naming it.
"""

from __future__ import annotations

import os
from pathlib import Path

from hf_finetune.config.path_checks import entry_is_file, utf8_name
from hf_finetune.data.class_names import check_case_collisions
from hf_finetune.data.image_check import check_image_files, strict_refusal, summarize_reasons
from hf_finetune.data.images import IMAGE_EXTENSIONS, is_image_file
from hf_finetune.errors import DataError

__all__ = ["METADATA_NAMES", "metadata_file", "scan_folder"]

#: The labels file of an image folder (``datasets``' imagefolder convention): a ``file_name`` column relative to
#: the folder, and the label column.
METADATA_NAMES = ("metadata.csv", "metadata.jsonl")

# One split of a local source before it becomes a Dataset: image paths and their label names.
_Rows = tuple[list[str], list[str]]
# Files the up-front check skipped: (path, reason), in the order they were found.
_Bad = list[tuple[str, str]]


def _files_under(folder: Path, key: str = "train_dir") -> list[str]:
    """Every file under ``folder``, recursively, sorted as paths (by their parts); hidden files and
    folders (a name starting with ``.``) are left out, and symbolic links to folders are not followed.
    ``os.scandir`` reads the file type with the name: no ``stat`` per file. A name that is not UTF-8 or a
    symbolic-link loop is a :class:`DataError` naming it (:mod:`hf_finetune.config.path_checks`)."""
    found: list[str] = []
    pending = [str(folder)]
    while pending:
        current = pending.pop()
        try:
            entries = os.scandir(current)
        except OSError as err:  # a folder the process may not read
            raise DataError(f"{key}: cannot read the folder {current}: {err.strerror or err}") from None
        with entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    pending.append(utf8_name(entry.path, key))
                elif entry_is_file(entry, key):
                    found.append(utf8_name(entry.path, key))
    found.sort(key=lambda path: path.split(os.sep))
    return found


def metadata_file(folder: Path, key: str) -> Path | None:
    """The labels file of ``folder`` (``metadata.csv`` or ``metadata.jsonl``), ``None`` when it has none; both
    is an error."""
    found = [folder / name for name in METADATA_NAMES if (folder / name).is_file()]
    if len(found) > 1:
        raise DataError(
            f"{key}: {folder} holds both {found[0].name} and {found[1].name}; keep one labels file"
        )
    return found[0] if found else None


def _class_folders(root: Path, key: str) -> list[Path]:
    """The class folders of ``root``, sorted, their names checked; none is an error saying what was found."""
    if not root.is_dir():
        raise DataError(f"{key}: {root} is not a folder; expected a folder of CLASS/*.jpg")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = [p for p in root.iterdir() if p.is_file() and is_image_file(p) and not p.name.startswith(".")]
        if loose:
            raise DataError(
                f"{key}: {root} holds {len(loose)} images but no class folders; expected CLASS/*.jpg, one "
                "subfolder per class"
            )
        raise DataError(f"{key}: {root} contains no images; expected a folder of CLASS/*.jpg")
    for folder in classes:
        utf8_name(str(folder), key)  # a class name must be text
    check_case_collisions([folder.name for folder in classes], f"{key}: {root}")
    return classes


def scan_folder(root: Path, key: str, bad: _Bad | None = None, strict: bool = False) -> _Rows:
    """(paths, class names) of ``root/CLASS/**/*``, sorted; hidden files and folders skipped. Every other
    file is checked (:func:`hf_finetune.data.image_check.check_image_file`): bad ones are skipped and appended
    to ``bad``, or, with ``strict``, the first is an error. A class folder left without images is an error
    naming it."""
    per_class = [(folder, _files_under(folder, key)) for folder in _class_folders(root, key)]
    for folder, files in per_class:
        if not files:
            raise DataError(
                f"{key}: class folder {folder} has no images (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                "add images or remove the folder"
            )
    reasons = iter(check_image_files([path for _, files in per_class for path in files]))
    paths: list[str] = []
    names: list[str] = []
    for folder, files in per_class:
        kept = []
        skipped: _Bad = []
        for path in files:
            reason = next(reasons)
            if reason is None:
                kept.append(path)
            elif strict:
                raise strict_refusal(key, "", path, reason)
            else:
                skipped.append((path, reason))
        if bad is not None:
            bad.extend(skipped)
        if not kept:
            path, reason = skipped[0]
            raise DataError(
                f"{key}: class folder {folder} has no images it can use: all {len(files)} files are bad "
                f"({summarize_reasons(r for _, r in skipped)}; e.g. {Path(path).name}: {reason}); "
                "add images or remove the folder"
            )
        paths.extend(kept)
        names.extend([folder.name] * len(kept))
    return paths, names
