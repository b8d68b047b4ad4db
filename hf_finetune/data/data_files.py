"""Which of ``datasets``' own loaders reads a data file, a glob of them or a folder, and which files it reads.

:func:`data_source` turns what a user wrote for a key (``train_file``, ``validation_file``, ``test_file``,
``dataset_name``) into a :class:`DataSource`: the name of a ``datasets`` builder and the sorted list of files to
give it as ``data_files``. It reads no data: it looks at names only (and, for a folder, at which files it holds),
so the map-style loaders and the streamed ones share one answer.

====================  ============  ==================================================================
what is given          builder       ``data_files``
====================  ============  ==================================================================
``*.csv``              ``csv``       the files
``*.json``/``*.jsonl`` ``json``      the files
``*.parquet``          ``parquet``   the files
``*.arrow``            ``arrow``     the files (Arrow stream files, as ``save_to_disk`` writes)
``*.tar``              ``webdataset`` the shards
a ``save_to_disk``     ``disk``      ``[folder]`` (a ``Dataset``: ``state.json``; a ``DatasetDict``:
folder                               ``dataset_dict.json``)
a folder of images     ``imagefolder`` ``[folder]``
a folder of data files the files'    the files (one kind only)
====================  ============  ==================================================================

A glob (``*``, ``?``, ``[``; ``**`` crosses folders) is expanded and sorted. Compressed text files
(``.csv.gz``, ``.jsonl.zst``...) are read by the same builder. In a folder, hidden files and names starting
with ``_`` (Spark's ``_SUCCESS``) are ignored, as are the metadata files ``datasets`` writes itself.
Nothing matching, an unknown extension or several kinds in one spec is a :class:`~hf_finetune.errors.DataError`
naming the key and the spec.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

from hf_finetune.errors import DataError

__all__ = [
    "BUILDERS",
    "DATA_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "DataSource",
    "data_source",
    "describe_source",
    "file_builder",
    "is_data_spec",
]

BUILDERS = ("csv", "json", "parquet", "arrow", "webdataset", "imagefolder", "disk")

DATA_EXTENSIONS = {
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".tar": "webdataset",
}
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif", ".jpe", ".ppm", ".pgm"}
)
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")
# Files datasets writes beside its data (a save_to_disk folder, a cache or a Hub download): never data.
_METADATA_NAMES = frozenset({"dataset_info.json", "dataset_infos.json", "state.json", "dataset_dict.json"})
_EXPECTED = (
    "a .csv, .json, .jsonl, .parquet, .arrow or .tar (WebDataset) file, a glob of them, "
    "a folder of them, a save_to_disk folder or a folder of images"
)


@dataclass(frozen=True)
class DataSource:
    """A ``datasets`` builder and the files it reads (``disk`` and ``imagefolder``: the one folder)."""

    builder: str
    data_files: list[str] = field(default_factory=list)

    @property
    def folder(self) -> str | None:
        """The folder of a ``disk`` or ``imagefolder`` source; ``None`` for the others."""
        return self.data_files[0] if self.builder in ("disk", "imagefolder") else None


def is_data_spec(spec: str) -> bool:
    """Whether ``spec`` is a glob, or names an existing local file or folder (rather than a Hub dataset id)."""
    text = os.path.expanduser(str(spec))
    return _is_glob(text) or os.path.exists(text)


def file_builder(path: str) -> str | None:
    """The builder of one file from its extension (a compression suffix looked through); ``None`` when the
    extension is not a data file's."""
    name = Path(path).name.lower()
    for suffix in _COMPRESSION:
        if name.endswith(suffix) and not name.endswith(".tar" + suffix):
            name = name[: -len(suffix)]
            break
    return DATA_EXTENSIONS.get(Path(name).suffix)


def data_source(spec: str, key: str) -> DataSource:
    """The builder and files of ``spec`` (a file, a glob or a folder) given for recipe key ``key``."""
    text = os.path.expanduser(str(spec))
    if _is_glob(text):
        matches = sorted(p for p in glob.glob(text, recursive=True) if os.path.isfile(p) or _is_disk(p))
        if not matches:
            raise DataError(f"{key}: {spec} matches no file; expected {_EXPECTED}")
        if len(matches) == 1 and os.path.isdir(matches[0]):
            return DataSource("disk", [os.path.abspath(matches[0])])
        return _one_kind([os.path.abspath(p) for p in matches], key, spec)
    path = Path(text)
    if not path.exists():
        raise DataError(f"{key}: {path.absolute()} does not exist; expected {_EXPECTED}")
    if path.is_dir():
        return _folder_source(path.resolve(), key, spec)
    builder = file_builder(str(path))
    if builder is None:
        raise DataError(f"{key}: {path} has extension {path.suffix.lower()!r}; expected {_EXPECTED}")
    return DataSource(builder, [str(path.resolve())])


def describe_source(source: DataSource, spec: str) -> str:
    """A few words for logs and errors: ``parquet file /d/a.parquet``, ``3 WebDataset shards /d/*.tar``..."""
    kind = {"csv": "CSV", "json": "JSON", "arrow": "Arrow", "webdataset": "WebDataset"}.get(
        source.builder, source.builder
    )
    if source.folder is not None:
        return f"{'save_to_disk' if source.builder == 'disk' else 'image'} folder {source.folder}"
    noun = "shard" if source.builder == "webdataset" else "file"
    if len(source.data_files) == 1:
        return f"{kind} {noun} {source.data_files[0]}"
    return f"{len(source.data_files)} {kind} {noun}s {spec}"


def _is_glob(text: str) -> bool:
    return any(char in text for char in "*?[")


def _is_disk(path: str) -> bool:
    folder = Path(path)
    return folder.is_dir() and ((folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file())


def _one_kind(files: list[str], key: str, spec: str) -> DataSource:
    """The one builder of ``files``; an unknown extension or two kinds is an error naming a file of each."""
    kinds: dict[str, str] = {}
    for path in files:
        builder = file_builder(path)
        if builder is None:
            if Path(path).suffix.lower() in IMAGE_EXTENSIONS:
                builder = "imagefolder"
            else:
                suffix = repr(Path(path).suffix.lower()) if Path(path).suffix else "no extension"
                raise DataError(f"{key}: {spec} matches {path} (extension {suffix}); expected {_EXPECTED}")
        kinds.setdefault(builder, path)
    if len(kinds) > 1:
        found = ", ".join(f"{builder} ({example})" for builder, example in kinds.items())
        raise DataError(f"{key}: {spec} mixes kinds of file: {found}; expected files of one kind")
    builder = next(iter(kinds))
    if builder == "imagefolder":
        raise DataError(
            f"{key}: {spec} matches image files ({files[0]}); expected data files, or a folder of images"
        )
    return DataSource(builder, files)


def _folder_source(folder: Path, key: str, spec: str) -> DataSource:
    """A ``save_to_disk`` folder, a folder of images (class folders or a metadata file), or of data files."""
    if _is_disk(str(folder)):
        return DataSource("disk", [str(folder)])
    data: list[str] = []
    images = False
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        for name in names:
            if name.startswith((".", "_")) or name in _METADATA_NAMES:
                continue
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                images = True
            elif file_builder(name) is not None:
                data.append(str(Path(root) / name))
    if images:  # a metadata.csv/.jsonl beside images is imagefolder's labels file, not data of its own
        return DataSource("imagefolder", [str(folder)])
    if not data:
        raise DataError(f"{key}: {folder} holds no data file; expected {_EXPECTED}")
    return _one_kind(sorted(data), key, spec)
