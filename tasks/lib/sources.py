"""Data sources named by ``data.source``: digits, keras:NAME, or idx, npz, folder (images) and tsv, csv, text_folder
(text, tasks/lib/text_sources.py) read from ``data.path``.

Each image loader returns uint8 images (N, H, W, C) and integer labels, with the source's own test split when it has
one; a text loader returns texts (a 1-D NumPy unicode array) and labels indexing its class names. Every problem is a
TrainflowError naming the file.
"""

from __future__ import annotations

import gzip
import math
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from tasks.lib.config import DataParams
from tasks.lib.errors import TrainflowError, TransientError
from tasks.lib.source_files import Loaded, check_class_name, numbered, too_big, unsafe, visible_files

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
KERAS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")


FILE_SOURCES = ("idx", "npz", "folder", "tsv", "csv", "text_folder")  # read from data.path (an ingest dependency)


def label(data: DataParams) -> str:
    """What identifies the data in reports, tags and messages: ``digits``, ``keras:mnist``, ``idx:PATH``, …"""
    return f"{data.source}:{data.path}" if data.source in FILE_SOURCES else data.source


def load_source(data: DataParams) -> Loaded:
    """Dispatch on ``data.source``; the file sources read ``data.path``."""
    if data.source == "digits":
        return load_digits()
    if data.source.startswith("keras:"):
        return load_keras(data.source.removeprefix("keras:"))
    path = Path(data.path)
    if not path.exists():
        raise TrainflowError(f"{path}: data source path not found (data.path, for data.source={data.source})")
    if data.source == "idx":
        return load_idx_dir(path, data.max_bytes)
    if data.source == "npz":
        return load_npz(path, data.max_bytes)
    if data.source in ("tsv", "csv", "text_folder"):
        from tasks.lib import text_sources

        if data.source == "tsv":
            return text_sources.load_tsv(path, data.max_bytes, data.max_text_bytes)
        if data.source == "csv":
            return text_sources.load_csv(
                path, data.text_column, data.label_column, data.max_bytes, data.max_text_bytes, data.max_text_lines
            )
        return text_sources.load_text_folder(path, data.max_bytes, data.max_text_bytes)
    return load_folder(path, data.image_size, data.color_mode, data.max_bytes)


def load_digits() -> Loaded:
    """scikit-learn's bundled 8×8 digits (values 0–16) as uint8 0–255."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return Loaded(x=x, y=bunch.target.astype(np.int64), ids=numbered("digits:", len(x)))


def as_images(x: np.ndarray, origin: str) -> np.ndarray:
    """uint8 (N, H, W, C) from (N, H, W) or (N, H, W, C) integer-valued pixels in 0–255."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise TrainflowError(f"{origin}: expected images of shape (N, H, W) or (N, H, W, 1|3), got {x.shape}")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind not in "iuf":
        raise TrainflowError(f"{origin}: pixels must be numeric, got dtype {x.dtype}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
        raise TrainflowError(f"{origin}: pixels contain NaN or infinity ({nan} NaN, {inf} infinite)")
    bad = (x < 0) | (x > 255)
    if x.dtype.kind == "f":
        bad |= x != np.rint(x)
    if bad.any():
        first = np.argwhere(bad)[0]
        raise TrainflowError(
            f"{origin}: pixels must be whole numbers in 0–255 (got {x[tuple(first)]} at image {first[0]}; "
            f"{int(bad.sum())} bad values in all)"
        )
    return x.astype(np.uint8)


def _as_labels(y: np.ndarray, origin: str) -> np.ndarray:
    y = np.asarray(y).reshape(-1) if np.asarray(y).ndim == 2 and np.asarray(y).shape[1] == 1 else np.asarray(y)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise TrainflowError(f"{origin}: labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    return y.astype(np.int64)


def _pair(x: np.ndarray, y: np.ndarray, origin: str) -> tuple[np.ndarray, np.ndarray]:
    if len(x) != len(y):
        raise TrainflowError(f"{origin}: {len(x)} images but {len(y)} labels")
    return x, y


def read_idx(
    path: Path, magic: int, max_bytes: int | None = None, images: tuple[Path, int] | None = None
) -> np.ndarray:
    """Parse one IDX file (gzipped or not) of unsigned bytes, checking magic number, header and length.

    The header's declared size is checked against ``max_bytes``, and a labels file's count against ``images`` (the
    images file and its count), before the body is read. A gzip stream is read only as far as the header says, so a
    decompression bomb costs nothing.
    """
    try:
        with path.open("rb") as raw:
            stream = gzip.GzipFile(fileobj=raw) if raw.read(2) == b"\x1f\x8b" else raw
            raw.seek(0)
            head = stream.read(4)
            if len(head) < 4:
                raise TrainflowError(f"{path}: truncated IDX file ({len(head)} bytes)")
            found = int.from_bytes(head, "big")
            if found != magic:
                raise TrainflowError(f"{path}: wrong IDX magic number 0x{found:08x} (expected 0x{magic:08x})")
            ndim = head[3]
            dims_raw = stream.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise TrainflowError(f"{path}: truncated IDX header")
            dims = [int.from_bytes(dims_raw[4 * i : 4 * i + 4], "big") for i in range(ndim)]
            size = math.prod(dims)
            if max_bytes is not None and size > max_bytes:
                raise too_big(str(path), size, max_bytes)
            if images is not None and (not dims or dims[0] != images[1]):
                raise TrainflowError(f"{images[0]} / {path}: {images[1]} images but {dims[0] if dims else 0} labels")
            body = stream.read(size)
            extra = stream.read(1)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise TrainflowError(f"{path}: corrupt gzip data ({exc})") from None
    except OSError as exc:
        raise TrainflowError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(body) != size or extra:
        length = 4 + 4 * ndim + len(body) + len(extra)
        raise TrainflowError(
            f"{path}: truncated or oversized IDX file ({'more than ' if extra else ''}{length} bytes, "
            f"header says {4 + 4 * ndim + size})"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _idx_file(directory: Path, prefix: str, kind: str) -> Path | None:
    for suffix in ("", ".gz"):
        for sep in ("-", "."):
            candidate = directory / f"{prefix}-{kind}{sep}idx{'3' if kind == 'images' else '1'}-ubyte{suffix}"
            if candidate.is_file():
                return candidate
    return None


def load_idx_dir(directory: Path, max_bytes: int | None = None) -> Loaded:
    """MNIST-style IDX files: ``train-*`` and/or ``t10k-*`` images and labels in one folder."""
    if not directory.is_dir():
        raise TrainflowError(f"{directory}: idx source must be a folder of *-images-idx3-ubyte[.gz] files")
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    ids: dict[str, np.ndarray] = {}
    for prefix in ("train", "t10k"):
        images, labels = _idx_file(directory, prefix, "images"), _idx_file(directory, prefix, "labels")
        if images is None and labels is None:
            continue
        if images is None or labels is None:
            missing = "images" if images is None else "labels"
            raise TrainflowError(f"{directory}: {prefix} {missing} IDX file missing")
        x = read_idx(images, IDX_IMAGES_MAGIC, max_bytes)
        y = read_idx(labels, IDX_LABELS_MAGIC, None if max_bytes is None else max_bytes - x.nbytes, (images, len(x)))
        if max_bytes is not None:
            max_bytes -= x.nbytes + y.nbytes
        y = y.astype(np.int64)
        parts[prefix] = _pair(as_images(x, str(images)), y, f"{images} / {labels}")
        ids[prefix] = numbered(f"{images.name}:", len(y))  # the index in the IDX file
    if not parts:
        raise TrainflowError(f"{directory}: no IDX files (train-images-idx3-ubyte, t10k-images-idx3-ubyte, ...)")
    if len(parts) == 2:
        return Loaded(*parts["train"], *parts["t10k"], ids=ids["train"], ids_test=ids["t10k"])
    return Loaded(*next(iter(parts.values())), ids=next(iter(ids.values())))


NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def _npz_declared_bytes(path: Path) -> int:
    """The bytes NumPy would allocate for the four arrays, from their .npy headers alone (nothing is loaded)."""
    total = 0
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        missing = [key for key in NPZ_ARRAYS if f"{key}.npy" not in names]
        if missing:
            raise TrainflowError(f"{path}: missing arrays {missing}")
        for key in NPZ_ARRAYS:
            with archive.open(f"{key}.npy") as member:
                version = np.lib.format.read_magic(member)
                if version not in ((1, 0), (2, 0)):
                    raise TrainflowError(f"{path}:{key}: unsupported .npy format version {version}")
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                try:
                    shape, _fortran, dtype = read_header(member)
                except ValueError as exc:
                    raise TrainflowError(f"{path}:{key}: malformed .npy header ({exc})") from None
                if dtype.hasobject:
                    raise TrainflowError(f"{path}: cannot load without pickle ({key} is an object array)")
                total += math.prod(shape) * dtype.itemsize
    return total


def load_npz(path: Path, max_bytes: int | None = None) -> Loaded:
    """The keras.datasets layout: x_train, y_train, x_test, y_test; never unpickled.

    The arrays' declared sizes are read from their headers and checked against ``max_bytes`` before any is loaded.
    """
    if not zipfile.is_zipfile(path):
        raise TrainflowError(f"{path}: not an .npz archive")
    try:
        declared = _npz_declared_bytes(path)
        if max_bytes is not None and declared > max_bytes:
            raise too_big(str(path), declared, max_bytes)
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in NPZ_ARRAYS}
    except MemoryError as exc:  # no limit given and more than memory holds: refused at allocation
        raise TrainflowError(f"{path}: an array is larger than this machine can load ({exc})") from None
    except ValueError as exc:  # a malformed header, or object arrays (they need pickle, which is refused)
        raise TrainflowError(f"{path}: cannot load without pickle ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise TrainflowError(f"{path}: not a readable .npz file ({exc})") from None
    train = _pair(
        as_images(arrays["x_train"], f"{path}:x_train"),
        _as_labels(arrays["y_train"], f"{path}:y_train"),
        f"{path}:train",
    )
    test = _pair(
        as_images(arrays["x_test"], f"{path}:x_test"), _as_labels(arrays["y_test"], f"{path}:y_test"), f"{path}:test"
    )
    ids = {key: numbered(f"{path.name}:{key}:", len(part[1])) for key, part in (("x_train", train), ("x_test", test))}
    return Loaded(*train, *test, ids=ids["x_train"], ids_test=ids["x_test"])


MAX_IMAGE_PIXELS = 4096 * 4096  # per image: larger files are refused before they are decoded (decompression bombs)
MAX_REPORTED = 10  # unreadable images listed in one error


def read_images(
    files: list[Path],
    root: Path,
    image_size: tuple[int, int] | None,
    color_mode: str,
    max_bytes: int | None = None,
) -> np.ndarray:
    """PNG/JPEG files under ``root`` → uint8 (N, H, W, C), converted to ``color_mode`` and resized when asked.

    16-bit images are scaled to 8 bits (the high byte), never clipped. Special files (FIFOs, devices, sockets) are
    refused without being opened, and images over :data:`MAX_IMAGE_PIXELS` before they are decoded; the images'
    decoded bytes together may not exceed ``max_bytes`` (checked from each header before it is decoded).

    Raises:
        TrainflowError: naming every file (up to :data:`MAX_REPORTED`) that is not an image, is corrupt or too large,
            is not a regular file or lies outside ``root`` through a symlink; or the first that differs in size from
            the first image while ``image_size`` is None.
    """
    from PIL import Image, UnidentifiedImageError

    real_root = root.resolve()
    mode = "L" if color_mode == "grayscale" else "RGB"
    images: list[np.ndarray] = []
    problems: list[str] = []
    channels, total = (1 if mode == "L" else 3), 0
    for file in files:
        problem = _unreadable(file, real_root, root)
        if problem is None:
            try:
                with Image.open(file) as img:
                    width, height = img.size
                    if width * height > MAX_IMAGE_PIXELS:
                        problem = f"{file}: {width}×{height} pixels, more than the {MAX_IMAGE_PIXELS:,} allowed"
                    else:
                        total += math.prod(image_size or (height, width)) * channels
                        if max_bytes is not None and total > max_bytes:  # the stack below doubles it: stop here
                            raise too_big(f"{root}: {len(files)} images", total, max_bytes)
                        img = _eight_bit(img).convert(mode)
                        if image_size is not None and img.size != (image_size[1], image_size[0]):
                            img = img.resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR)
                        pixels = np.asarray(img, dtype=np.uint8)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                problem = f"{file}: corrupt or unreadable image ({exc})"
        if problem is not None:
            problems.append(problem)
            continue
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        if images and pixels.shape != images[0].shape:
            raise TrainflowError(
                f"{file}: image size {pixels.shape[:2]} differs from {images[0].shape[:2]}; "
                "set data.image_size to resize"
            )
        images.append(pixels)
    if len(problems) == 1:
        raise TrainflowError(problems[0])
    if problems:
        shown = "; ".join(problems[:MAX_REPORTED])
        more = f"; and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise TrainflowError(f"{len(problems)} files cannot be read as images: {shown}{more}")
    if not images:
        raise TrainflowError(f"{root}: no images found")
    return np.stack(images)


def _unreadable(file: Path, real_root: Path, root: Path) -> str | None:
    """Why ``file`` is not even opened, or None: outside the data folder, not a regular file, not PNG/JPEG."""
    if (problem := unsafe(file, real_root, root)) is not None:
        return problem
    if file.suffix.lower() not in IMAGE_SUFFIXES:
        return f"{file}: not a PNG/JPEG image (allowed: {', '.join(sorted(IMAGE_SUFFIXES))})"
    return None


def _eight_bit(img: Any) -> Any:
    """An image of more than 8 bits per channel scaled to 8 bits by its high byte (PIL's convert would clip)."""
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode == "I":
        values = np.asarray(img, dtype=np.uint32)
        high = values.max(initial=0) > 255 or img.mode.startswith("I;16")
        return Image.fromarray((values >> 8 if high else values).astype(np.uint8), mode="L")
    return img


def load_folder(
    root: Path, image_size: tuple[int, int] | None, color_mode: str, max_bytes: int | None = None
) -> Loaded:
    """One sub-folder per class of PNG/JPEG images, resized to ``image_size`` (H, W) when set."""
    if not root.is_dir():
        raise TrainflowError(f"{root}: folder source must be a directory with one sub-folder per class")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise TrainflowError(f"{root}: no class sub-folders")
    for folder in class_dirs:
        check_class_name(folder.name, str(folder))
    files = [visible_files(d) for d in class_dirs]
    x = read_images([f for group in files for f in group], root, image_size, color_mode, max_bytes)
    y = np.concatenate([np.full(len(group), label, dtype=np.int64) for label, group in enumerate(files)])
    ids = np.array([f.relative_to(root).as_posix() for group in files for f in group], dtype=str)
    return Loaded(x=x, y=y, classes=tuple(d.name for d in class_dirs), ids=ids)


def load_keras(name: str) -> Loaded:
    """Download through keras.datasets (cached under ~/.keras); needs internet the first time."""
    if name not in KERAS_DATASETS:
        raise TrainflowError(f"data.source=keras:{name}: unknown dataset (one of {', '.join(KERAS_DATASETS)})")
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    except Exception as exc:  # network errors come in many types
        raise TransientError(f"data.source=keras:{name}: download failed ({exc})") from None
    origin = f"keras:{name}"
    return Loaded(
        as_images(x_train, origin),
        _as_labels(y_train, origin),
        as_images(x_test, origin),
        _as_labels(y_test, origin),
        ids=numbered(f"{origin}:train:", len(x_train)),
        ids_test=numbered(f"{origin}:test:", len(x_test)),
    )
