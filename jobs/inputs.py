"""What a batch job scores: folders, globs, image files, `.npy` and IDX arrays, as a stream.

An item is `(input, index)`: an image file's absolute path with index -1, or an array file's
absolute path with the row it names. Items are grouped into `Chunk`s of at most one batch, and
`load_chunk` reads and decodes a chunk into uint8 images, turning each input that cannot be read
into an error message instead of an exception. Both engines (local and Ray) call `load_chunk`.

Memory stays flat however many inputs there are: folders are walked one directory at a time,
arrays are memory-mapped per chunk and closed again, and gzipped IDX files are decompressed once
into the job's work area (streamed) so that their rows can be read by offset. The readers, the
folder-label rule and the input contract are those of detectors.sources and detectors.images.

A conditional bundle scores each image with its class label, so its chunks also carry a "label"
column: an image file's label is the integer name of its folder (`3/x.png`), an array row's label
the same row of the labels beside the array (`<stem>_labels.npy`, or the IDX labels file).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from detectors.errors import InputError
from detectors.images import InputSpec, decode_image
from detectors.sources import idx, npy
from detectors.sources.arrays import ArrayFile, image_shape
from detectors.sources.folder import folder_label, is_image_file, read_image_file, walk

NO_INDEX = -1  # the index of an item that is a whole image file
Item = tuple[str, int]
ARRAY_KINDS = ("npy", "idx")


@dataclass
class Chunk:
    """At most one batch of items, with the array files (or why they are unreadable) they use."""

    items: list[Item]
    sources: dict[str, ArrayFile] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)  # input -> why it cannot be read

    def to_json(self) -> dict:
        return {
            "items": self.items,
            "sources": {k: asdict(v) for k, v in self.sources.items()},
            "broken": self.broken,
        }

    @classmethod
    def from_json(cls, data: dict) -> Chunk:
        sources = {
            k: ArrayFile(**{**v, "shape": tuple(v["shape"])}) for k, v in data["sources"].items()
        }
        return cls([(str(i), int(j)) for i, j in data["items"]], sources, data["broken"])


# --- finding the inputs ---------------------------------------------------------------------------
def resolve_inputs(specs: list[str]) -> list[tuple[str, str]]:
    """Command-line inputs -> [(kind, absolute path)], kind folder | image | npy | idx | missing.

    Accepts folders, files, globs and the data-spec prefixes `folder:`, `npy:` and `idx:`.
    A path that does not exist and a glob that matches nothing are `missing`: the job gives each
    one a row with its error (see `missing_reason`) and scores the rest.
    """
    resolved = []
    for spec in specs:
        kind, _, rest = spec.partition(":")
        forced = kind if kind in ("folder", *ARRAY_KINDS) and rest else None
        text = rest if forced else spec
        matches = sorted(glob.glob(text, recursive=True)) if glob.has_magic(text) else [text]
        if not matches or not os.path.exists(matches[0]):
            resolved.append(("missing", os.path.abspath(text)))
            continue
        for match in matches:
            path = os.path.abspath(match)
            if forced:
                resolved.append((forced, path))
            elif os.path.isdir(path):
                resolved.append(("folder", path))
            elif path.lower().endswith(".npy"):
                resolved.append(("npy", path))
            elif not is_image_file(path) and idx.is_idx(path):
                resolved.append(("idx", path))
            else:
                resolved.append(("image", path))
    return resolved


def missing_reason(path: str) -> str:
    """The error row of an input that names nothing: a missing path or a glob without matches."""
    if glob.has_magic(path):
        return f"{path}: the pattern matches no files"
    return f"{path}: no such file or directory"


def _check_layout(source: ArrayFile, spec: InputSpec) -> None:
    """Refuse arrays whose images cannot become the bundle's input (one error for the file)."""
    channels, height, width = image_shape(source.shape, source.path)
    if (height, width) != (spec.height, spec.width) and not spec.resize:
        msg = (
            f"{source.path}: images are {width}x{height}, "
            f"the model takes {spec.width}x{spec.height}"
        )
        raise InputError(msg)
    if channels != spec.channels and not spec.convert:
        msg = f"{source.path}: images have {channels} channel(s), the model takes {spec.channels}"
        raise InputError(msg)


class InputSet:
    """The items of a job's inputs, in a fixed order; the same inputs always give the same order."""

    def __init__(self, specs: list[str], spec: InputSpec, work_dir: Path):
        # An array listed twice is read once; files are de-duplicated as they stream (see items).
        resolved = resolve_inputs(specs)
        self.inputs = [
            pair
            for i, pair in enumerate(resolved)
            if pair[0] in ("folder", "image", "missing") or pair not in resolved[:i]
        ]
        self.spec = spec
        self.work_dir = work_dir
        self.sources: dict[str, ArrayFile] = {}
        self.broken: dict[str, str] = {}
        for kind, path in self.inputs:
            if kind == "missing":
                self.broken[path] = missing_reason(path)
            elif kind in ARRAY_KINDS and path not in self.sources and path not in self.broken:
                try:
                    source = npy.open_npy(path) if kind == "npy" else idx.open_idx(path, work_dir)
                    _check_layout(source, spec)
                    self.sources[path] = source
                except (InputError, OSError) as error:
                    self.broken[path] = str(error)

    def items(self) -> Iterator[Item]:
        # Overlapping inputs (a folder and a glob inside it) must not score a file twice. One input
        # cannot overlap itself, so only several file inputs pay for remembering the files seen.
        file_inputs = sum(kind in ("folder", "image", "missing") for kind, _ in self.inputs)
        seen: set[str] | None = set() if file_inputs > 1 else None
        for kind, path in self.inputs:
            if kind == "folder":
                stream: Iterator[Item] = ((p, NO_INDEX) for p in walk(path))
            elif kind == "image" or path in self.broken:
                stream = iter([(path, NO_INDEX)])
            else:
                stream = ((path, i) for i in range(self.sources[path].rows))
            for item in stream:
                if seen is not None and item[1] == NO_INDEX:
                    if item[0] in seen:
                        continue
                    seen.add(item[0])
                yield item

    def count(self) -> int:
        return sum(1 for _ in self.items())

    def chunks(self, items: Iterator[Item], size: int) -> Iterator[Chunk]:
        """Group `items` into chunks of at most `size`, each carrying the sources it needs."""
        batch: list[Item] = []
        for item in items:
            batch.append(item)
            if len(batch) == size:
                yield self._chunk(batch)
                batch = []
        if batch:
            yield self._chunk(batch)

    def _chunk(self, items: list[Item]) -> Chunk:
        names = {path for path, index in items if index != NO_INDEX or path in self.broken}
        return Chunk(
            items,
            {n: self.sources[n] for n in names if n in self.sources},
            {n: self.broken[n] for n in names if n in self.broken},
        )


# --- reading and decoding -------------------------------------------------------------------------
def _file_label(path: str) -> int:
    """An image file's class for a conditional bundle: the folder-label rule, or InputError."""
    label = folder_label(path)
    if label is None:
        msg = (
            f"{path}: the model is class-conditional and this image has no label; put it in a "
            f"folder named by its class (e.g. 3/{os.path.basename(path)})"
        )
        raise InputError(msg)
    return label


def _array_labels(source: ArrayFile, rows: list[int]) -> np.ndarray:
    """The labels of some rows of an array input, from the labels file beside it (int64)."""
    is_npy = Path(source.path).suffix.lower() == ".npy"
    labels = (npy if is_npy else idx).read_labels(source.path, source.rows)
    if labels is None:
        expected = npy.labels_path(source.path).name if is_npy else "the IDX labels file"
        msg = f"{source.path}: the model is class-conditional and {expected} is not beside it"
        raise InputError(msg)
    return np.asarray(labels[rows]).astype(np.int64)


def load_chunk(chunk: Chunk, spec: InputSpec, *, labelled: bool = False) -> dict[str, np.ndarray]:
    """Read and decode a chunk: {"input", "index", "image" (B, C, H, W) uint8, "error" ('': none)}
    and, for a conditional bundle (`labelled`), "label" (B,) int64.

    An input that cannot be read gets zeros and its error message; nothing here raises for bad data.
    """
    n = len(chunk.items)
    images = np.zeros((n, *spec.shape), np.uint8)
    errors = np.full(n, "", dtype=object)
    labels = np.zeros(n, np.int64)
    by_array: dict[str, list[int]] = {}
    for position, (path, index) in enumerate(chunk.items):
        if path in chunk.broken:
            errors[position] = chunk.broken[path]
        elif index != NO_INDEX:
            by_array.setdefault(path, []).append(position)
        else:
            try:
                images[position] = spec.from_image(
                    decode_image(read_image_file(path), name=path), path
                )
                if labelled:
                    labels[position] = _file_label(path)
            except InputError as error:
                errors[position] = str(error)
            except Exception as error:  # noqa: BLE001 -- a decoder bug on one file must not end the job
                errors[position] = f"{path}: cannot decode ({type(error).__name__}: {error})"
    for path, positions in by_array.items():
        source = chunk.sources[path]
        rows = [chunk.items[p][1] for p in positions]
        try:
            stored = source.read_rows(rows)
        except (OSError, ValueError) as error:
            for p in positions:
                errors[p] = f"{path}: cannot read rows ({error})"
            continue
        for p, row, index in zip(positions, stored, rows, strict=True):
            try:
                images[p] = spec.from_array(row, f"{path}[{index}]")
            except InputError as error:
                errors[p] = str(error)
        if labelled:
            try:
                labels[positions] = _array_labels(source, rows)
            except InputError as error:
                for p in positions:
                    errors[p] = errors[p] or str(error)
    columns = {
        "input": np.array([path for path, _ in chunk.items], dtype=object),
        "index": np.array([index for _, index in chunk.items], dtype=np.int64),
        "image": images,
        "error": errors,
    }
    if labelled:
        columns["label"] = labels
    return columns
