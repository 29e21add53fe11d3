"""What a batch job scores: folders, globs, image files, `.npy` and IDX arrays, as a stream.

An item is `(input, index)`: an image file's absolute path with index -1, or an array file's
absolute path with the row it names. Items are grouped into `Chunk`s of at most one batch, and
`load_chunk` reads and decodes a chunk into uint8 images, turning each input that cannot be read
into an error message instead of an exception. Both engines (local and Ray) call `load_chunk`.

Memory stays flat however many inputs there are: folders are walked one directory at a time,
arrays are memory-mapped per chunk and closed again, and gzipped IDX files are decompressed once
into the job's work area (streamed) so that their rows can be read by offset.

A conditional bundle scores each image with its class label, so its chunks also carry a "label"
column: an image file's label is the integer name of its folder (`3/x.png`), an array row's label
the same row of the labels beside the array (`<stem>_labels.npy`, or the IDX labels file).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from detectors.datasets import IMAGE_SUFFIXES, labels_path_for, read_idx
from detectors.errors import InputError
from detectors.images import decode_image, pil_to_array

NO_INDEX = -1  # the index of an item that is a whole image file
Item = tuple[str, int]


@dataclass(frozen=True)
class InputSpec:
    """The image shape a bundle takes, and whether inputs of another size or mode are converted."""

    channels: int
    height: int
    width: int
    resize: bool = True
    convert: bool = True
    labelled: bool = False  # a conditional bundle: every image needs its class label

    @classmethod
    def from_metadata(cls, metadata: dict) -> InputSpec:
        spec, pre = metadata["input"], metadata["preprocessing"]
        return cls(
            spec["channels"],
            spec["height"],
            spec["width"],
            resize=pre["resize"] == "bilinear",
            convert=pre["color"] == "convert",
            labelled=bool(metadata.get("labels")),
        )


@dataclass(frozen=True)
class ArraySource:
    """Where the rows of an `.npy` or IDX input lie: a raw array at `offset` in `data_path`."""

    path: str  # the input as the results name it
    data_path: str  # the file holding the raw array (a decompressed copy for a gzipped IDX)
    offset: int
    dtype: str
    shape: tuple[int, ...]  # as stored: (N, H, W), (N, C, H, W) or (N, H, W, C)
    fortran_order: bool = False

    @property
    def rows(self) -> int:
        return self.shape[0]

    def channels_first(self) -> bool:
        shape = self.shape
        return len(shape) == 4 and not (shape[1] not in (1, 3) and shape[-1] in (1, 3))


@dataclass
class Chunk:
    """At most one batch of items, with the array sources (or why they are unreadable) they use."""

    items: list[Item]
    sources: dict[str, ArraySource] = field(default_factory=dict)
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
            k: ArraySource(**{**v, "shape": tuple(v["shape"])}) for k, v in data["sources"].items()
        }
        return cls([(str(i), int(j)) for i, j in data["items"]], sources, data["broken"])


# --- finding the inputs ---------------------------------------------------------------------------
def _walk(directory: str) -> Iterator[str]:
    """Image files under `directory`, depth first, sorted by name within each directory."""
    try:
        with os.scandir(directory) as scan:
            entries = sorted((entry.name, entry.is_dir()) for entry in scan)
    except OSError:
        return  # an unreadable sub-directory holds no inputs we could name
    for name, is_dir in entries:
        path = os.path.join(directory, name)
        if is_dir:
            yield from _walk(path)
        elif os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
            yield path


def _is_idx(path: str) -> bool:
    """IDX files are recognised by their magic number (0x0000 08 NDIM), gzipped or not."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if head[:2] == b"\x1f\x8b":
                f.seek(0)
                with gzip.open(f) as g:
                    head = g.read(4)
    except (OSError, EOFError):
        return False
    return len(head) == 4 and head[:3] == b"\x00\x00\x08" and 1 <= head[3] <= 4


def resolve_inputs(specs: list[str]) -> list[tuple[str, str]]:
    """Command-line inputs -> [(kind, absolute path)] with kind folder | image | npy | idx.

    Accepts folders, files, globs and the data-spec prefixes `folder:`, `npy:` and `idx:`.
    A path that does not exist and a glob that matches nothing are errors, raised before any work.
    """
    resolved = []
    for spec in specs:
        kind, _, rest = spec.partition(":")
        forced = kind if kind in ("folder", "npy", "idx") and rest else None
        text = rest if forced else spec
        if glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                msg = f"{text}: the pattern matches no files"
                raise InputError(msg)
        elif not os.path.exists(text):
            msg = f"{text}: no such file or directory"
            raise InputError(msg)
        else:
            matches = [text]
        for match in matches:
            path = os.path.abspath(match)
            if forced:
                resolved.append((forced, path))
            elif os.path.isdir(path):
                resolved.append(("folder", path))
            elif path.lower().endswith(".npy"):
                resolved.append(("npy", path))
            elif os.path.splitext(path)[1].lower() not in IMAGE_SUFFIXES and _is_idx(path):
                resolved.append(("idx", path))
            else:
                resolved.append(("image", path))
    return resolved


def _npy_source(path: str) -> ArraySource:
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read_header(f)
            offset = f.tell()
    except (OSError, ValueError) as error:
        msg = f"{path}: not a readable .npy array ({error})"
        raise InputError(msg) from None
    if dtype.hasobject or not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        msg = f"{path}: .npy holds dtype {dtype}; images must be numeric"
        raise InputError(msg)
    return ArraySource(path, path, offset, dtype.str, tuple(shape), bool(fortran_order))


def _idx_source(path: str, work_dir: Path) -> ArraySource:
    data_path = path
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    if gzipped:
        # Decompress once, streaming, so rows can be read by offset (resume reuses the copy).
        stat = os.stat(path)
        tag = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        data_path = str(work_dir / f"idx-{tag}.raw")
        if not os.path.exists(data_path):
            tmp = f"{data_path}.tmp"
            try:
                with gzip.open(path) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (OSError, EOFError) as error:
                msg = f"{path}: corrupt or truncated gzip data ({error})"
                raise InputError(msg) from None
            os.replace(tmp, data_path)
    with open(data_path, "rb") as f:
        head = f.read(4)
        if len(head) < 4 or head[:3] != b"\x00\x00\x08" or head[3] == 0:
            msg = f"{path}: not an IDX file of unsigned bytes (magic {head.hex() or 'empty'})"
            raise InputError(msg)
        ndim = head[3]
        dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        msg = f"{path}: truncated IDX header"
        raise InputError(msg)
    shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    found = os.path.getsize(data_path) - offset
    if found != expected:
        msg = f"{path}: IDX shape {shape} needs {expected} bytes of data, found {found}"
        raise InputError(msg)
    return ArraySource(path, data_path, offset, "|u1", shape)


def _check_layout(source: ArraySource, spec: InputSpec) -> None:
    """Refuse arrays whose images cannot become the bundle's input (one error for the file)."""
    shape = source.shape
    if len(shape) not in (3, 4) or (len(shape) == 4 and not ({shape[1], shape[-1]} & {1, 3})):
        msg = f"{source.path}: expected images (N, H, W), (N, C, H, W) or (N, H, W, C), got {shape}"
        raise InputError(msg)
    channels = 1 if len(shape) == 3 else (shape[1] if source.channels_first() else shape[-1])
    height, width = (
        shape[1:3] if len(shape) == 3 else shape[2:4] if source.channels_first() else shape[1:3]
    )
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
            if pair[0] in ("folder", "image") or pair not in resolved[:i]
        ]
        self.spec = spec
        self.work_dir = work_dir
        self.sources: dict[str, ArraySource] = {}
        self.broken: dict[str, str] = {}
        for kind, path in self.inputs:
            if kind in ("npy", "idx") and path not in self.sources and path not in self.broken:
                try:
                    source = _npy_source(path) if kind == "npy" else _idx_source(path, work_dir)
                    _check_layout(source, spec)
                    self.sources[path] = source
                except (InputError, OSError) as error:
                    self.broken[path] = str(error)

    def items(self) -> Iterator[Item]:
        # Overlapping inputs (a folder and a glob inside it) must not score a file twice. One input
        # cannot overlap itself, so only several file inputs pay for remembering the files seen.
        file_inputs = sum(kind in ("folder", "image") for kind, _ in self.inputs)
        seen: set[str] | None = set() if file_inputs > 1 else None
        for kind, path in self.inputs:
            if kind == "folder":
                stream: Iterator[Item] = ((p, NO_INDEX) for p in _walk(path))
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
def _array_rows(source: ArraySource, rows: list[int]) -> np.ndarray:
    """The stored rows, copied out of a memory map that is closed again (RSS stays flat)."""
    order = "F" if source.fortran_order else "C"
    mapped = np.memmap(
        source.data_path,
        dtype=np.dtype(source.dtype),
        mode="r",
        offset=source.offset,
        shape=source.shape,
        order=order,
    )
    try:
        array = np.array(mapped[rows])
    finally:
        del mapped
    if array.ndim == 3:
        return array[:, None]
    return array if source.channels_first() else np.moveaxis(array, -1, 1)


def _to_input(row: np.ndarray, spec: InputSpec, name: str) -> np.ndarray:
    """A stored image (C, H, W), any numeric dtype -> uint8 in the model's shape, or InputError."""
    if row.dtype != np.uint8:
        values = row.astype(np.float64)
        if (
            not np.all(np.isfinite(values))
            or values.min() < 0
            or values.max() > 255
            or not np.all(values == np.round(values))
        ):
            msg = f"{name}: pixel values must be whole numbers within 0..255"
            raise InputError(msg)
        row = values.astype(np.uint8)
    if row.shape == (spec.channels, spec.height, spec.width):
        return row
    from PIL import Image

    image = Image.fromarray(row[0] if row.shape[0] == 1 else np.moveaxis(row, 0, -1))
    return pil_to_array(
        image,
        channels=spec.channels,
        height=spec.height,
        width=spec.width,
        resize=spec.resize,
        convert=spec.convert,
        name=name,
    )


def _decode_file(path: str, spec: InputSpec) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        msg = f"{path}: cannot read ({error.strerror or error})"
        raise InputError(msg) from None
    image = decode_image(data, name=path)
    return pil_to_array(
        image,
        channels=spec.channels,
        height=spec.height,
        width=spec.width,
        resize=spec.resize,
        convert=spec.convert,
        name=path,
    )


def _folder_label(path: str) -> int:
    """An image file's class for a conditional bundle: the integer name of its folder."""
    folder = os.path.basename(os.path.dirname(path))
    if not folder.isdigit():
        msg = (
            f"{path}: the model is class-conditional and this image has no label; put it in a "
            f"folder named by its class (e.g. 3/{os.path.basename(path)})"
        )
        raise InputError(msg)
    return int(folder)


def _array_labels(source: ArraySource, rows: list[int]) -> np.ndarray:
    """The labels of some rows of an array input, from the labels file beside it (int64)."""
    path = Path(source.path)
    is_npy = path.suffix.lower() == ".npy"
    labels_path = path.with_name(f"{path.stem}_labels.npy") if is_npy else labels_path_for(path)
    if labels_path is None or not labels_path.exists():
        expected = f"{path.stem}_labels.npy" if is_npy else "the IDX labels file"
        msg = f"{path}: the model is class-conditional and {expected} is not beside it"
        raise InputError(msg)
    try:
        labels = (
            np.load(labels_path, mmap_mode="r", allow_pickle=False)
            if is_npy
            else read_idx(labels_path)
        )
    except (OSError, ValueError) as error:
        msg = f"{labels_path}: cannot read labels ({error})"
        raise InputError(msg) from None
    if labels.ndim != 1 or len(labels) != source.rows:
        msg = f"{labels_path}: {labels.shape} labels for {source.rows} images in {path}"
        raise InputError(msg)
    return np.asarray(labels[rows]).astype(np.int64)


def load_chunk(chunk: Chunk, spec: InputSpec) -> dict[str, np.ndarray]:
    """Read and decode a chunk: {"input", "index", "image" (B, C, H, W) uint8, "error" ('': none)}
    and, for a conditional bundle, "label" (B,) int64.

    An input that cannot be read gets zeros and its error message; nothing here raises for bad data.
    """
    n = len(chunk.items)
    images = np.zeros((n, spec.channels, spec.height, spec.width), np.uint8)
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
                images[position] = _decode_file(path, spec)
                if spec.labelled:
                    labels[position] = _folder_label(path)
            except InputError as error:
                errors[position] = str(error)
            except Exception as error:  # noqa: BLE001 -- a decoder bug on one file must not end the job
                errors[position] = f"{path}: cannot decode ({type(error).__name__}: {error})"
    for path, positions in by_array.items():
        source = chunk.sources[path]
        try:
            rows = _array_rows(source, [chunk.items[p][1] for p in positions])
        except (OSError, ValueError) as error:
            for p in positions:
                errors[p] = f"{path}: cannot read rows ({error})"
            continue
        for p, row in zip(positions, rows, strict=True):
            try:
                images[p] = _to_input(row, spec, f"{path}[{chunk.items[p][1]}]")
            except InputError as error:
                errors[p] = str(error)
        if spec.labelled:
            try:
                labels[positions] = _array_labels(source, [chunk.items[p][1] for p in positions])
            except InputError as error:
                for p in positions:
                    errors[p] = errors[p] or str(error)
    columns = {
        "input": np.array([path for path, _ in chunk.items], dtype=object),
        "index": np.array([index for _, index in chunk.items], dtype=np.int64),
        "image": images,
        "error": errors,
    }
    if spec.labelled:
        columns["label"] = labels
    return columns
