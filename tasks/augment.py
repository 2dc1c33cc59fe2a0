"""augment: data/clean → data/augmented (random copies of train: rotation, zoom and shift of images, word dropout
and swaps of texts; val/test untouched)."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from tasks.lib import artifacts, parallel, stats, validation
from tasks.lib.artifacts import Split
from tasks.lib.config import AugmentParams, Params

log = logging.getLogger(__name__)

CHUNK = 128  # images transformed at once: each float temporary (~400 KB) stays in cache (3× faster than 256)


def affine(x: np.ndarray, angles: np.ndarray, scales: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Rotate (radians), scale and shift (pixels, (N, 2) as dy, dx) each image about its centre.

    Bilinear sampling; pixels sampled from outside the image are 0 (background). The images are padded with zeros
    (one row/column before, two after) and sample positions clamped into the padding, so the four neighbours of every
    position are plain gathers from the flattened batch (int32 indices), with no bounds masks.
    """
    n, h, w, c = x.shape
    stride, size = w + 3, (h + 3) * (w + 3)
    padded = np.zeros((n, h + 3, stride, c), dtype=np.float32)
    padded[:, 1 : h + 1, 1 : w + 1] = x
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy = rows[None] - (cy + shifts[:, 0, None, None]).astype(np.float32)
    xx = cols[None] - (cx + shifts[:, 1, None, None]).astype(np.float32)
    cos = (np.cos(angles) / scales)[:, None, None].astype(np.float32)
    sin = (np.sin(angles) / scales)[:, None, None].astype(np.float32)
    src_y = np.clip(cos * yy - sin * xx + cy, -1.0, h)
    src_x = np.clip(sin * yy + cos * xx + cx, -1.0, w)
    y0, x0 = np.floor(src_y), np.floor(src_x)
    wy, wx = (src_y - y0).reshape(-1, 1), (src_x - x0).reshape(-1, 1)
    base = (y0.astype(np.int32) + 1) * stride + x0.astype(np.int32) + 1
    base += (np.arange(n, dtype=np.int32) * size)[:, None, None]  # each image's offset in the flattened batch
    base = base.reshape(-1)
    flat = padded.reshape(n * size, c)

    def pixel(offset: int) -> np.ndarray:
        return flat.take(base + offset, axis=0) if c > 1 else flat.reshape(-1).take(base + offset)[:, None]

    top = pixel(0)
    top += (pixel(1) - top) * wx
    bottom = pixel(stride)
    bottom += (pixel(stride + 1) - bottom) * wx
    top += (bottom - top) * wy
    np.rint(top, out=top)
    np.clip(top, 0, 255, out=top)
    return top.astype(np.uint8).reshape(n, h, w, c)


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


def word_edits(texts: np.ndarray, params: AugmentParams, rng: np.random.Generator) -> np.ndarray:
    """One randomly edited copy of every text: each word dropped with probability ``word_dropout`` (at least one
    word stays), then ``word_swaps`` swaps of two neighbouring words; words are re-joined with single spaces."""
    out = []
    for text in texts.tolist():
        words = text.split()
        if len(words) > 1:
            kept = rng.random(len(words)) >= params.word_dropout
            if not kept.any():
                kept[rng.integers(len(words))] = True
            words = [w for w, k in zip(words, kept, strict=True) if k]
        for _ in range(params.word_swaps if len(words) > 1 else 0):
            i = int(rng.integers(len(words) - 1))
            words[i], words[i + 1] = words[i + 1], words[i]
        out.append(" ".join(words))
    return np.array(out, dtype=str) if out else texts.copy()


def copy_rng(seed: int, copy: int, shard: int) -> np.random.Generator:
    """The random stream of one augmented copy of one train shard: independent of which worker runs it, or when."""
    return np.random.default_rng([seed, copy, shard])


def sample_grid(rows: list[np.ndarray], count: int) -> bytes:
    """PNG: the first ``count`` images of each of ``rows`` (the originals, then their augmented copies) as a grid."""
    from PIL import Image

    count = min([count, *(len(r) for r in rows)])
    rows = [r[:count] for r in rows]
    h, w, c = rows[0].shape[1:]
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


def text_font(size: int = 14) -> tuple[Any, frozenset[int]]:
    """The font of the text samples and the code points it draws: DejaVu Sans, which matplotlib ships (Pillow's
    default font draws £, é, ü, – and most non-ASCII as □)."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font
    from PIL import ImageFont

    path = font_manager.findfont("DejaVu Sans", fallback_to_default=False)
    return ImageFont.truetype(path, size), frozenset(FT2Font(path).get_charmap())


def visible(text: str, glyphs: frozenset[int]) -> str:
    """``text`` as it can be drawn: a character the font lacks, or an unprintable one, as its Python escape
    (``\\x92``, ``\\u4e2d``), never a □ that hides which character it was."""
    return "".join(
        c if c.isprintable() and ord(c) in glyphs else c.encode("unicode_escape").decode("ascii") for c in text
    )


def sample_text(rows: list[np.ndarray], count: int) -> bytes:
    """PNG: the first ``count`` texts and, under each, its augmented copies (as :func:`sample_grid` for images)."""
    from PIL import Image, ImageDraw

    font, glyphs = text_font()
    count = min([count, *(len(r) for r in rows)])
    lines = []
    for i in range(count):
        lines += [
            f"{'original' if r == 0 else f'copy {r}':>9}: {visible(row[i][:110], glyphs)}" for r, row in enumerate(rows)
        ]
        lines.append("")
    height = 18 * max(len(lines), 1) + 10
    width = max([1000, *(int(font.getlength(line)) + 16 for line in lines)])
    picture = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(picture)
    for n, line in enumerate(lines):
        draw.text((8, 5 + 18 * n), line, fill=0, font=font)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def augment_shard(
    clean: str,
    out: str,
    split: str,
    index: int,
    copy: int,
    out_index: int,
    params: AugmentParams,
    seed: int,
    held_out: np.ndarray | None = None,
) -> tuple:
    """Write copy ``copy`` (0: the originals) of one shard as shard ``out_index``; its manifest entry and summary.

    ``held_out``: the content keys (:func:`stats.keys`) of val and test texts. A text copy that came out equal to
    one of them (a short message with a word dropped can) is replaced by its original, which clean made sure is not
    in val or test.
    """
    shard = artifacts.open_dataset(Path(clean)).shard(split, index)
    transform = word_edits if shard.x.dtype.kind == "U" else random_affine
    x = transform(shard.x, params, copy_rng(seed, copy, index)) if copy else np.asarray(shard.x)
    if copy and held_out is not None and len(held_out):
        leaked = np.isin(stats.keys(stats.content_hashes(x)), held_out)
        x = np.where(leaked, shard.x, x) if leaked.any() else x
    summary = stats.summarize(split, out_index, x, shard.y, reference=None if split == "train" else shard.x)
    # a copy keeps its original's source id: what the audit flags leads back to the user's own item
    return artifacts.write_shard(Path(out), split, out_index, Split(x, shard.y, shard.ids)), summary


def run(params: Params) -> dict:
    """Read data/clean shard by shard, augment train, validate, write data/augmented and the sample grid."""
    cleaned = artifacts.open_dataset(Path(params.paths.clean).resolve())
    mapper = parallel.mapper(params.parallel)
    plan = []  # (split, input shard, copy, output shard): the originals first, then each copy
    for name in cleaned.splits:
        n = len(cleaned.shard_counts(name))
        copies = params.augment.copies + 1 if name == "train" else 1
        plan += [(name, i, c, c * n + i) for c in range(copies) for i in range(n)]
    report = {
        "train_original": cleaned.count("train"),
        "train_added": cleaned.count("train") * params.augment.copies,
        "copies": params.augment.copies,
    }
    with artifacts.atomic_dir(Path(params.paths.augmented).resolve()) as tmp:
        held_out = None
        if cleaned.kind == "text":  # texts are small: every val/test key fits in each call
            held_out = np.concatenate(
                [
                    stats.keys(stats.content_hashes(s.x))
                    for name in cleaned.splits
                    if name != "train"
                    for s in cleaned.shards(name)
                ]
            )
        calls = [(str(cleaned.path), str(tmp), *step, params.augment, params.seed, held_out) for step in plan]
        written = mapper("augment", augment_shard, calls)
        validation.validate_summaries("augmented", [summary for _, summary in written], cleaned.classes, params)
        entries = artifacts.by_split([(name, out) for name, _, _, out in plan], [entry for entry, _ in written])
        info = {**cleaned.info, "augment": report}
        dtype = cleaned.manifest["dtype"]
        content = artifacts.write_manifest(tmp, entries, cleaned.classes, cleaned.image_shape, dtype, info)
        n = len(cleaned.shard_counts("train"))
        written_train = artifacts.Stored(tmp, content)
        rows = [written_train.shard("train", c * n).x for c in range(min(params.augment.copies + 1, 4))]
        grid = (sample_text if cleaned.kind == "text" else sample_grid)(rows, params.augment.sample_count)
    artifacts.write_bytes(Path(params.paths.samples), grid)
    log.info("augment: train %d → %d items", report["train_original"], sum(e["count"] for e in entries["train"]))
    return report


if __name__ == "__main__":
    from tasks.lib.cli import main

    main("augment", run)
