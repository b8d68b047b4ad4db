"""Checks on the paths a user hands over, made before any work: names that are not UTF-8, symbolic-link loops,
and outputs that cannot be written.

* :func:`utf8_name` refuses a file or folder name that is not valid UTF-8 (Python keeps such bytes as lone
  surrogates, which Arrow, JSON and the reports cannot store); the message shows the name with its bad
  bytes escaped and says to rename it.
* :func:`entry_is_file` is ``os.DirEntry.is_file`` with an ``OSError`` (a link loop: ``ELOOP``) turned
  into a one-line error naming the path.
* :func:`check_writable_dir` and :func:`check_writable_file` say, without creating anything, whether an
  output folder or file could be written: an existing path of the wrong kind, a file in the way of a
  folder to create, or a parent the process may not write is a :class:`~hf_finetune.errors.ConfigError`
  naming the key and the path.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from hf_finetune.errors import ConfigError, DataError

__all__ = [
    "FINISHED_MODEL",
    "check_model_folder",
    "shown_name",
    "utf8_name",
    "entry_is_file",
    "check_writable_dir",
    "check_writable_file",
]


def shown_name(path: str | os.PathLike) -> str:
    """``path`` as printable text: bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def utf8_name(path: str, key: str) -> str:
    """``path``, or a :class:`DataError` when its name is not valid UTF-8."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(
            f"{key}: {shown_name(path)}: the name is not valid UTF-8 (bytes shown as \\xNN); rename it, "
            "e.g. with convmv -f latin1 -t utf-8"
        ) from None
    return path


def entry_is_file(entry: os.DirEntry, key: str) -> bool:
    """Whether ``entry`` is a file (following a symbolic link); a link loop or unreadable entry is an error."""
    try:
        return entry.is_file()
    except OSError as err:
        why = "a symbolic link loop" if err.errno == errno.ELOOP else err.strerror or type(err).__name__
        raise DataError(
            f"{key}: {shown_name(entry.path)}: cannot be read ({why}); remove or fix the link"
        ) from None


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def _check_parent(path: Path, key: str, what: str) -> None:
    """The folders above ``path`` can be created: the nearest existing one is a writable folder."""
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        raise ConfigError(
            f"{key}: cannot create {what} {path}: {existing} is a file, not a folder; expected a path "
            "under a folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: cannot create {what} {path}: the folder {existing} is not writable")


def check_writable_dir(path: str | os.PathLike | None, key: str) -> None:
    """``path`` is, or can be created as, a folder this process can write into."""
    if path is None or str(path).strip() == "":
        raise ConfigError(f"{key}: got {path!r}; expected a folder path")
    folder = Path(os.path.expanduser(str(path)))
    if folder.exists():
        if not folder.is_dir():
            raise ConfigError(f"{key}: {folder} is a file; expected a folder (or a path to create one)")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"{key}: the folder {folder} is not writable")
        return
    _check_parent(folder, key, "the folder")


def check_writable_file(path: str | os.PathLike | None, key: str) -> None:
    """``path`` names a file this process can create or replace (its missing parent folders can be made)."""
    if path is None or str(path).strip() == "":
        raise ConfigError(f"{key}: got {path!r}; expected a file path")
    file = Path(os.path.expanduser(str(path)))
    if file.is_dir():
        raise ConfigError(f"{key}: {file} is a folder; expected a file name to write")
    if file.exists() and not os.access(file, os.W_OK):
        raise ConfigError(f"{key}: the file {file} is not writable")
    if not file.exists():
        _check_parent(file, key, "the file")


#: What a command that loads a finished model folder expects of it.
FINISHED_MODEL = (
    "expected the output folder of a finished `hf-finetune train` run (config.json and model.safetensors)"
)
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def check_model_folder(model_dir: str | os.PathLike, key: str = "MODEL_DIR") -> Path:
    """``model_dir`` as a :class:`~pathlib.Path` when it holds a saved model (``config.json`` and safetensors
    weights); a :class:`ConfigError` naming ``key`` and what is missing otherwise (a missing path, a file, a folder
    without them, and the ``checkpoint-*`` folders of a run that did not finish)."""
    folder = Path(model_dir)
    if not folder.exists():
        raise ConfigError(f"{key}: {folder} does not exist; {FINISHED_MODEL}")
    if not folder.is_dir():
        raise ConfigError(f"{key}: {folder} is a file; {FINISHED_MODEL}")
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    if not any((folder / name).is_file() for name in _WEIGHTS):
        missing.append("model.safetensors")
    if missing:
        checkpoints = sorted(p.name for p in folder.glob("checkpoint-*") if p.is_dir())
        hint = f" (it holds {', '.join(checkpoints)}: the run did not finish)" if checkpoints else ""
        raise ConfigError(f"{key}: {folder} has no {' and no '.join(missing)}{hint}; {FINISHED_MODEL}")
    return folder
