"""tasks/lib/sources.py: every loader on files written here; every problem names the file."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.lib.config import Params
from tasks.lib.errors import TrainflowError
from tasks.lib.sources import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    load_digits,
    load_folder,
    load_idx_dir,
    load_npz,
    load_source,
    read_idx,
    read_images,
)
from tests.helpers import idx_bytes


def write_idx_pair(folder: Path, prefix: str, x: np.ndarray, y: np.ndarray, gz: bool = False) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    pack = gzip.compress if gz else bytes
    images = folder / f"{prefix}-images-idx3-ubyte{suffix}"
    labels = folder / f"{prefix}-labels-idx1-ubyte{suffix}"
    images.write_bytes(pack(idx_bytes(x, IDX_IMAGES_MAGIC)))
    labels.write_bytes(pack(idx_bytes(y, IDX_LABELS_MAGIC)))
    return images, labels


def images_and_labels(n: int, seed: int, h: int = 5, w: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)


def source(params: Params, value: str, **data: object):
    """The data section for ``scheme:path`` (data.source and data.path) or a source without a path."""
    kind, _, path = value.partition(":")
    if kind in ("idx", "npz", "folder"):
        return params.data.model_copy(update={"source": kind, "path": path, **data})
    return params.data.model_copy(update={"source": value, **data})


# --- IDX ---


@pytest.mark.parametrize("gz", [False, True])
def test_idx_train_and_t10k_keep_the_test_split(tmp_path: Path, gz: bool) -> None:
    x, y = images_and_labels(12, seed=1)
    xt, yt = images_and_labels(7, seed=2)
    write_idx_pair(tmp_path, "train", x, y, gz)
    write_idx_pair(tmp_path, "t10k", xt, yt, gz)
    loaded = load_idx_dir(tmp_path)
    assert loaded.x.shape == (12, 5, 4, 1) and loaded.x.dtype == np.uint8
    np.testing.assert_array_equal(loaded.x[..., 0], x)
    np.testing.assert_array_equal(loaded.y, y)
    assert loaded.y.dtype == np.int64
    assert loaded.x_test is not None and loaded.y_test is not None
    np.testing.assert_array_equal(loaded.x_test[..., 0], xt)
    np.testing.assert_array_equal(loaded.y_test, yt)


def test_idx_t10k_only_has_no_test_split(tmp_path: Path) -> None:
    xt, yt = images_and_labels(6, seed=3)
    write_idx_pair(tmp_path, "t10k", xt, yt, gz=True)
    loaded = load_idx_dir(tmp_path)
    np.testing.assert_array_equal(loaded.x[..., 0], xt)
    np.testing.assert_array_equal(loaded.y, yt)
    assert loaded.x_test is None and loaded.y_test is None


def test_idx_dotted_file_names(tmp_path: Path) -> None:
    x, y = images_and_labels(4, seed=4)
    images, labels = write_idx_pair(tmp_path, "train", x, y)
    images.rename(tmp_path / "train-images.idx3-ubyte")
    labels.rename(tmp_path / "train-labels.idx1-ubyte")
    np.testing.assert_array_equal(load_idx_dir(tmp_path).y, y)


def test_idx_via_load_source(tmp_path: Path, params: Params) -> None:
    x, y = images_and_labels(4, seed=5)
    write_idx_pair(tmp_path, "train", x, y)
    loaded = load_source(source(params, f"idx:{tmp_path}"))
    np.testing.assert_array_equal(loaded.y, y)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_names_the_file(tmp_path: Path, gz: bool) -> None:
    x, y = images_and_labels(4, seed=6)
    images, _ = write_idx_pair(tmp_path, "train", x, y)
    data = idx_bytes(x, IDX_IMAGES_MAGIC)[:-3]
    images.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(TrainflowError, match=rf"^{re.escape(str(images))}: truncated"):
        load_idx_dir(tmp_path)


@pytest.mark.parametrize("content", [b"", b"\x00\x00", b"\x00\x00\x08\x03\x00\x00"])
def test_idx_header_too_short_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "short"
    path.write_bytes(content)
    with pytest.raises(TrainflowError, match=rf"^{re.escape(str(path))}: truncated"):
        read_idx(path, IDX_IMAGES_MAGIC)


def test_idx_corrupt_gzip_names_the_file(tmp_path: Path) -> None:
    x, y = images_and_labels(4, seed=6)
    images, _ = write_idx_pair(tmp_path, "train", x, y, gz=True)
    images.write_bytes(images.read_bytes()[:15])
    with pytest.raises(TrainflowError, match=rf"^{re.escape(str(images))}: corrupt gzip"):
        load_idx_dir(tmp_path)


def test_idx_wrong_magic_names_the_file(tmp_path: Path) -> None:
    x, y = images_and_labels(4, seed=7)
    _, labels = write_idx_pair(tmp_path, "train", x, y)
    labels.write_bytes(idx_bytes(y, 0x00000901))
    expected = rf"^{re.escape(str(labels))}: wrong IDX magic number 0x00000901 \(expected 0x00000801\)"
    with pytest.raises(TrainflowError, match=expected):
        load_idx_dir(tmp_path)


def test_idx_images_and_labels_swapped_is_wrong_magic(tmp_path: Path) -> None:
    x, y = images_and_labels(4, seed=7)
    images, _ = write_idx_pair(tmp_path, "train", x, y)
    images.write_bytes(idx_bytes(y, IDX_LABELS_MAGIC))
    with pytest.raises(TrainflowError, match=rf"^{re.escape(str(images))}: wrong IDX magic"):
        load_idx_dir(tmp_path)


def test_idx_count_mismatch_names_the_files(tmp_path: Path) -> None:
    x, y = images_and_labels(5, seed=8)
    images, labels = write_idx_pair(tmp_path, "train", x, y[:4])
    with pytest.raises(TrainflowError) as info:
        load_idx_dir(tmp_path)
    assert str(images) in str(info.value) and str(labels) in str(info.value)
    assert "5 images but 4 labels" in str(info.value)


def test_idx_missing_labels_file(tmp_path: Path) -> None:
    x, y = images_and_labels(4, seed=9)
    _, labels = write_idx_pair(tmp_path, "train", x, y)
    labels.unlink()
    with pytest.raises(TrainflowError, match="train labels IDX file missing"):
        load_idx_dir(tmp_path)


def test_idx_empty_folder_and_file_instead_of_folder(tmp_path: Path) -> None:
    with pytest.raises(TrainflowError, match=rf"^{re.escape(str(tmp_path))}: no IDX files"):
        load_idx_dir(tmp_path)
    file = tmp_path / "x.idx"
    file.write_bytes(b"")
    with pytest.raises(TrainflowError, match=rf"^{re.escape(str(file))}: idx source must be a folder"):
        load_idx_dir(file)


# --- npz ---


def test_npz_keras_layout(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    _, y = images_and_labels(6, seed=10)
    xt = np.random.default_rng(11).integers(0, 256, (3, 5, 4, 3), dtype=np.uint8)
    xt_rgb_train = np.random.default_rng(12).integers(0, 256, (6, 5, 4, 3)).astype(np.float32)
    np.savez(path, x_train=xt_rgb_train, y_train=y.reshape(-1, 1), x_test=xt, y_test=np.array([0, 1, 2]))
    loaded = load_npz(path)
    assert loaded.x.dtype == np.uint8 and loaded.x.shape == (6, 5, 4, 3)
    np.testing.assert_array_equal(loaded.x, xt_rgb_train.astype(np.uint8))
    np.testing.assert_array_equal(loaded.y, y)  # (N, 1) labels as CIFAR ships them are flattened
    assert loaded.y.dtype == np.int64
    np.testing.assert_array_equal(loaded.x_test, xt)
    np.testing.assert_array_equal(loaded.y_test, [0, 1, 2])
    assert loaded.classes is None


def test_npz_grayscale_n_h_w(tmp_path: Path, params: Params) -> None:
    path = tmp_path / "mnist.npz"
    x, y = images_and_labels(4, seed=13)
    np.savez_compressed(path, x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    loaded = load_source(source(params, f"npz:{path}"))
    assert loaded.x.shape == (4, 5, 4, 1)
    np.testing.assert_array_equal(loaded.x[..., 0], x)


def test_npz_object_arrays_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.npz"
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.zeros((2, 2)), np.zeros((3, 3))
    np.savez(path, x_train=ragged, y_train=np.array([0, 1]), x_test=ragged, y_test=np.array([0, 1]))
    with pytest.raises(TrainflowError, match=rf"^{re.escape(str(path))}: cannot load without pickle"):
        load_npz(path)


def test_npz_missing_arrays_named(tmp_path: Path) -> None:
    path = tmp_path / "half.npz"
    x, y = images_and_labels(4, seed=14)
    np.savez(path, x_train=x, y_train=y)
    expected = rf"^{re.escape(str(path))}: missing arrays \['x_test', 'y_test'\]"
    with pytest.raises(TrainflowError, match=expected):
        load_npz(path)


@pytest.mark.parametrize(
    ("x_train", "message"),
    [
        (np.full((2, 3, 3), 300, dtype=np.int32), "whole numbers in 0.255"),
        (np.full((2, 3, 3), 0.5, dtype=np.float32), "whole numbers in 0.255"),
        (np.full((2, 3, 3), np.nan, dtype=np.float32), "NaN"),
        (np.zeros((2, 3, 3, 2), dtype=np.uint8), "expected images of shape"),
    ],
)
def test_npz_bad_pixels_named(tmp_path: Path, x_train: np.ndarray, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=x_train, y_train=np.array([0, 1]), x_test=x_train, y_test=np.array([0, 1]))
    with pytest.raises(TrainflowError, match=rf"^{re.escape(str(path))}:x_train: .*{message}"):
        load_npz(path)


def test_npz_float_labels_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    x, _ = images_and_labels(2, seed=15)
    np.savez(path, x_train=x, y_train=np.array([0.0, 1.0]), x_test=x, y_test=np.array([0, 1]))
    with pytest.raises(TrainflowError, match=rf"{re.escape(str(path))}:y_train: labels must be"):
        load_npz(path)


def test_npz_plain_text_file_named(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    path.write_text("not numpy at all")
    with pytest.raises(TrainflowError, match=rf"^{re.escape(str(path))}: "):
        load_npz(path)


def test_npz_truncated_archive_named(tmp_path: Path) -> None:
    path = tmp_path / "cut.npz"
    x, y = images_and_labels(4, seed=16)
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(TrainflowError, match=rf"^{re.escape(str(path))}: "):
        load_npz(path)


# --- folder ---


def write_image(path: Path, pixels: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_folder_png_and_jpeg_classes_resized_grayscale(tmp_path: Path, params: Params) -> None:
    write_image(tmp_path / "cat" / "a.png", rgb(10, 7, 0))
    write_image(tmp_path / "cat" / "b.JPG", rgb(12, 12, 1), fmt="JPEG")
    write_image(tmp_path / "dog" / "c.jpeg", rgb(9, 20, 2), fmt="JPEG")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "dog" / ".DS_Store").write_bytes(b"\0")
    loaded = load_source(source(params, f"folder:{tmp_path}", image_size=(6, 8), color_mode="grayscale"))
    assert loaded.x.shape == (3, 6, 8, 1) and loaded.x.dtype == np.uint8
    np.testing.assert_array_equal(loaded.y, [0, 0, 1])
    assert loaded.classes == ("cat", "dog")
    assert loaded.x_test is None


def test_folder_class_name_with_an_invisible_character_is_refused_by_name(tmp_path: Path) -> None:
    write_image(tmp_path / "cat" / "a.png", rgb(5, 4, 0))
    folder = tmp_path / "do\u200bg"
    write_image(folder / "b.png", rgb(5, 4, 1))
    message = f"{folder}: class name 'do\\u200bg' holds '\\u200b' (U+200B ZERO WIDTH SPACE), an invisible or control"
    with pytest.raises(TrainflowError, match=f"^{re.escape(message)}"):
        load_folder(tmp_path, None, "rgb")


def test_folder_rgb_keeps_pixels(tmp_path: Path) -> None:
    first, second = rgb(5, 4, 3), rgb(5, 4, 4)
    write_image(tmp_path / "0" / "a.png", first)
    write_image(tmp_path / "1" / "b.png", second)
    loaded = load_folder(tmp_path, None, "rgb")
    assert loaded.x.shape == (2, 5, 4, 3)
    np.testing.assert_array_equal(loaded.x[0], first)  # PNG is lossless
    np.testing.assert_array_equal(loaded.x[1], second)


def test_folder_grayscale_converts_rgb(tmp_path: Path) -> None:
    pixels = rgb(5, 4, 5)
    write_image(tmp_path / "a" / "x.png", pixels)
    write_image(tmp_path / "b" / "y.png", np.zeros((5, 4), dtype=np.uint8))
    loaded = load_folder(tmp_path, None, "grayscale")
    expected = np.asarray(Image.fromarray(pixels).convert("L"))
    np.testing.assert_array_equal(loaded.x[0, ..., 0], expected)
    assert loaded.x.shape == (2, 5, 4, 1)


def test_folder_mixed_sizes_without_resize_names_the_file(tmp_path: Path) -> None:
    write_image(tmp_path / "a" / "x.png", rgb(5, 4, 6))
    odd = write_image(tmp_path / "b" / "y.png", rgb(6, 4, 7))
    with pytest.raises(TrainflowError, match=rf"^{re.escape(str(odd))}: image size .*data\.image_size"):
        load_folder(tmp_path, None, "rgb")


def test_folder_non_image_file_named(tmp_path: Path) -> None:
    write_image(tmp_path / "a" / "x.png", rgb(5, 4, 8))
    notes = tmp_path / "a" / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(TrainflowError, match=rf"^{re.escape(str(notes))}: not a PNG/JPEG"):
        load_folder(tmp_path, None, "rgb")


@pytest.mark.parametrize("cut", [0, 20, 60])
def test_folder_corrupt_png_named(tmp_path: Path, cut: int) -> None:
    good = write_image(tmp_path / "a" / "x.png", rgb(16, 16, 9))
    bad = tmp_path / "b" / "y.png"
    bad.parent.mkdir()
    bad.write_bytes(good.read_bytes()[:cut] if cut else b"not a png at all")
    with pytest.raises(TrainflowError, match=rf"^{re.escape(str(bad))}: corrupt or unreadable image"):
        load_folder(tmp_path, None, "rgb")


def test_folder_symlink_outside_root_named(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_image(root / "a" / "x.png", rgb(5, 4, 10))
    outside = write_image(tmp_path / "secret.png", rgb(5, 4, 11))
    link = root / "a" / "y.png"
    link.symlink_to(outside)
    with pytest.raises(TrainflowError, match=rf"^{re.escape(str(link))}: symlink points outside"):
        load_folder(root, None, "rgb")


def test_folder_symlink_inside_root_allowed(tmp_path: Path) -> None:
    target = write_image(tmp_path / "a" / "x.png", rgb(5, 4, 12))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "y.png").symlink_to(target)
    loaded = load_folder(tmp_path, None, "rgb")
    np.testing.assert_array_equal(loaded.x[0], loaded.x[1])


def test_folder_without_class_dirs_or_images(tmp_path: Path) -> None:
    with pytest.raises(TrainflowError, match="no class sub-folders"):
        load_folder(tmp_path, None, "rgb")
    (tmp_path / "a").mkdir()
    with pytest.raises(TrainflowError, match="no images found"):
        load_folder(tmp_path, None, "rgb")


# --- digits and dispatch ---


def test_digits() -> None:
    loaded = load_digits()
    assert loaded.x.dtype == np.uint8
    assert loaded.x.shape == (1797, 8, 8, 1)
    assert loaded.x.max() == 255 and loaded.x.min() == 0
    assert set(np.unique(loaded.y)) == set(range(10))
    assert loaded.x_test is None


@pytest.mark.parametrize("scheme", ["idx", "npz", "folder"])
def test_missing_path_named(tmp_path: Path, params: Params, scheme: str) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(TrainflowError, match=rf"^{re.escape(str(missing))}: data source path not found"):
        load_source(source(params, f"{scheme}:{missing}"))


def test_unknown_keras_dataset_refused_offline(params: Params) -> None:
    with pytest.raises(TrainflowError, match="keras:imagenet: unknown dataset"):
        load_source(source(params, "keras:imagenet"))


def test_sixteen_bit_images_are_scaled_to_eight_bits_not_clipped(tmp_path: Path) -> None:
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)  # 0 … 63,000
    Image.fromarray(deep).save(tmp_path / "deep.png")
    pixels = read_images([tmp_path / "deep.png"], tmp_path, None, "grayscale")[0, ..., 0]
    np.testing.assert_array_equal(pixels, deep >> 8)  # 63,000 → 246, not 255 (clipped), and not constant


def test_special_files_are_refused_without_being_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "x.png")  # opening it for reading would block until a writer comes
    with pytest.raises(TrainflowError, match=r"x.png: not a regular file \(a FIFO, device or socket\)"):
        read_images([tmp_path / "x.png"], tmp_path, None, "grayscale")


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    Image.new("L", (5000, 5000)).save(tmp_path / "huge.png")  # a few KB on disk, 25 MB decoded
    with pytest.raises(TrainflowError, match=r"huge.png: 5000×5000 pixels, more than the 16,777,216 allowed"):
        read_images([tmp_path / "huge.png"], tmp_path, None, "grayscale")


def test_every_unreadable_image_is_named_up_to_a_limit(tmp_path: Path) -> None:
    files = []
    for i in range(12):
        files.append(tmp_path / f"bad{i:02d}.png")
        files[-1].write_bytes(b"not a png")
    with pytest.raises(TrainflowError) as info:
        read_images(files, tmp_path, None, "grayscale")
    message = str(info.value)
    assert message.startswith("12 files cannot be read as images: ") and message.endswith("; and 2 more")
    assert all(f"bad{i:02d}.png" in message for i in range(10)) and "\n" not in message
