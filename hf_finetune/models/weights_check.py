"""A cheap look at a local checkpoint's ``*.safetensors`` files before anything loads them.

A file cut short (an interrupted copy or download) or left empty makes the loaders fail deep inside
transformers or safetensors with a traceback. :func:`check_safetensors_files` reads only each file's
header: 8 bytes giving the header's length, the JSON header, and from it the end of the last tensor's
bytes, which the file's size must reach. A file that fails is a :class:`~hf_finetune.errors.ModelLoadError`
naming it, what was found and what was expected.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from hf_finetune.errors import ModelLoadError

__all__ = ["check_safetensors_files", "safetensors_problem"]

_MAX_HEADER = 100_000_000  # safetensors' own limit on the header's size


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with the safetensors file ``path`` (``None`` when its header and size agree)."""
    size = path.stat().st_size
    if size < 8:
        return f"{size} bytes; a safetensors file starts with an 8-byte header length"
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > _MAX_HEADER or 8 + length > size:
            return f"{size} bytes, too short for the {length:,}-byte header it announces"
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "its header is not valid JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    ends = [
        entry["data_offsets"][1]
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict) and len(entry.get("data_offsets") or ()) == 2
    ]
    needed = 8 + length + max(ends, default=0)
    if size < needed:
        return f"{size:,} bytes where its header needs {needed:,}: the file is truncated"
    return None


def check_safetensors_files(
    folder: str | os.PathLike,
    key: str = "model_name_or_path",
    fix: str = "copy or download the checkpoint again",
) -> None:
    """Every ``*.safetensors`` file directly in the local checkpoint ``folder`` is whole (see the module
    doc); a Hub id (no such folder) is left to the loaders. ``fix`` ends the message: what to do."""
    folder = Path(os.path.expanduser(str(folder)))
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.safetensors")):
        try:
            problem = safetensors_problem(path)
        except OSError as err:
            problem = f"cannot be read ({err.strerror or err})"
        if problem is not None:
            raise ModelLoadError(f"{key}: {path} is not a whole safetensors file ({problem}); {fix}")
