"""augment: data/clean → data/augmented (random rotation, zoom and shift copies of train; val/test untouched)."""

from __future__ import annotations

import io
import logging

import numpy as np

from tasks import artifacts, validation
from tasks.artifacts import Dataset, Split
from tasks.config import AugmentParams, Params

log = logging.getLogger(__name__)

CHUNK = 4096  # images transformed at once: bounds the float buffers to a few MB per chunk


def affine(x: np.ndarray, angles: np.ndarray, scales: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Rotate (radians), scale and shift (pixels, (N, 2) as dy, dx) each image about its centre.

    Bilinear sampling; pixels sampled from outside the image are 0 (background). The images are padded with zeros
    (one row/column before, two after) and sample positions clamped into the padding, so the four neighbours of every
    position are plain gathers from the flattened image, with no bounds masks.
    """
    n, h, w, c = x.shape
    stride = w + 3
    padded = np.zeros((n, h + 3, stride, c), dtype=np.float32)
    padded[:, 1 : h + 1, 1 : w + 1] = x
    flat = padded.reshape(n, (h + 3) * stride, c)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy = rows[None] - (cy + shifts[:, 0, None, None]).astype(np.float32)
    xx = cols[None] - (cx + shifts[:, 1, None, None]).astype(np.float32)
    cos = (np.cos(angles) / scales)[:, None, None].astype(np.float32)
    sin = (np.sin(angles) / scales)[:, None, None].astype(np.float32)
    src_y = np.clip(cos * yy - sin * xx + cy, -1.0, h)
    src_x = np.clip(sin * yy + cos * xx + cx, -1.0, w)
    y0, x0 = np.floor(src_y), np.floor(src_x)
    wy, wx = (src_y - y0).reshape(n, h * w, 1), (src_x - x0).reshape(n, h * w, 1)
    base = ((y0.astype(np.intp) + 1) * stride + x0.astype(np.intp) + 1).reshape(n, h * w, 1)

    def pixel(offset: int) -> np.ndarray:
        return np.take_along_axis(flat, base + offset, axis=1)

    top = pixel(0) * (1 - wx) + pixel(1) * wx
    bottom = pixel(stride) * (1 - wx) + pixel(stride + 1) * wx
    out = top * (1 - wy) + bottom * wy
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(n, h, w, c)


def random_affine(x: np.ndarray, params: AugmentParams, rng: np.random.Generator) -> np.ndarray:
    """One randomly transformed copy of every image, ranges from params."""
    n, h, w, _ = x.shape
    angles = np.deg2rad(rng.uniform(-params.rotation_degrees, params.rotation_degrees, n))
    scales = rng.uniform(1.0 - params.zoom, 1.0 + params.zoom, n)
    shifts = rng.uniform(-params.shift, params.shift, (n, 2)) * np.array([h, w])
    out = np.empty_like(x)
    for start in range(0, n, CHUNK):
        part = slice(start, start + CHUNK)
        out[part] = affine(x[part], angles[part], scales[part], shifts[part])
    return out


def augment(dataset: Dataset, params: AugmentParams, rng: np.random.Generator) -> tuple[Dataset, dict]:
    """Append ``params.copies`` transformed copies of the train split; val and test are passed through.

    Args:
        dataset: the cleaned dataset.
        params: the augment section (copies, rotation, zoom, shift).
        rng: the only source of randomness.

    Returns:
        The augmented dataset (originals first, then each copy in order) and a small report.
    """
    train = dataset.splits["train"]
    copies = [random_affine(train.x, params, rng) for _ in range(params.copies)]
    x = np.concatenate([train.x, *copies]) if copies else np.asarray(train.x)
    y = np.tile(train.y, params.copies + 1)
    splits = {**dataset.splits, "train": Split(x, y)}
    report = {"train_original": len(train.y), "train_added": len(train.y) * params.copies, "copies": params.copies}
    return Dataset(splits=splits, classes=dataset.classes, info={**dataset.info, "augment": report}), report


def sample_grid(dataset: Dataset, original_count: int, count: int) -> bytes:
    """PNG: the first ``count`` train images (top row) above their augmented copies."""
    from PIL import Image

    x = dataset.splits["train"].x
    count = min(count, original_count)
    rows = [x[i * original_count : i * original_count + count] for i in range(min(len(x) // original_count, 4))]
    h, w, c = x.shape[1:]
    zoom = max(1, 64 // max(h, w))
    grid = np.zeros((len(rows) * (h + 2), count * (w + 2), c), dtype=np.uint8)
    for r, images in enumerate(rows):
        for i, image in enumerate(images):
            grid[r * (h + 2) + 1 : r * (h + 2) + 1 + h, i * (w + 2) + 1 : i * (w + 2) + 1 + w] = image
    picture = Image.fromarray(grid[..., 0] if c == 1 else grid)
    picture = picture.resize((picture.width * zoom, picture.height * zoom), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def run(params: Params) -> dict:
    """Read data/clean, augment train, write data/augmented and the sample grid."""
    rng = np.random.default_rng(params.seed)
    cleaned = artifacts.read_dataset(params.paths.clean)
    augmented, report = augment(cleaned, params.augment, rng)
    validation.validate_dataset("augmented", augmented, params, reference=cleaned)
    artifacts.write_dataset(params.paths.augmented, augmented)
    grid = sample_grid(augmented, report["train_original"], params.augment.sample_count)
    artifacts.write_bytes(params.paths.samples, grid)
    log.info("augment: train %d → %d images", report["train_original"], len(augmented.splits["train"].y))
    return report


if __name__ == "__main__":
    from tasks.cli import main

    main("augment", run)
