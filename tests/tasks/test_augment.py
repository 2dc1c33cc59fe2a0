"""tasks/augment.py: the affine warp, seeded copies of train only, and the sample grid."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tasks.augment import (
    affine,
    augment_shard,
    copy_rng,
    random_affine,
    sample_grid,
    sample_text,
    text_font,
    visible,
    word_edits,
)
from tasks.lib import artifacts, validation
from tasks.lib.artifacts import Dataset, Split, content_hash
from tasks.lib.config import AugmentParams
from tasks.lib.errors import TrainflowError
from tests.conftest import MakeDataset, load_params, run_stage_on, tiny_texts
from tests.helpers import committed_params_file

PARAMS = load_params(committed_params_file())


def augment(dataset: Dataset, params: AugmentParams, seed: int) -> tuple[Dataset, dict]:
    """tasks/augment.py's run() on ``dataset`` as data/clean."""
    return run_stage_on("augment", dataset, PARAMS, augment=params, seed=seed)


def augment_params(copies: int = 2, **overrides: float) -> AugmentParams:
    values = {"copies": copies, "rotation_degrees": 15.0, "zoom": 0.1, "shift": 0.1, "sample_count": 4}
    values |= {"word_dropout": 0.2, "word_swaps": 1}
    return AugmentParams(**{**values, **overrides})


def test_val_and_test_pass_through_byte_identical(make_dataset: MakeDataset) -> None:
    dataset = make_dataset()
    out, _ = augment(dataset, augment_params(), 0)
    for name in ("val", "test"):
        assert content_hash(out.splits[name]) == content_hash(dataset.splits[name])


def test_train_grows_by_copies_with_labels_tiled(make_dataset: MakeDataset) -> None:
    dataset = make_dataset({"train": 12, "val": 3, "test": 3})
    train = dataset.splits["train"]
    out, report = augment(dataset, augment_params(copies=3), 0)
    x, y = out.splits["train"].x, out.splits["train"].y
    assert x.shape == (48, *train.x.shape[1:]) and x.dtype == np.uint8
    np.testing.assert_array_equal(y, np.concatenate([train.y] * 4))
    np.testing.assert_array_equal(x[:12], train.x)  # originals first
    assert not np.array_equal(x[12:24], train.x)
    assert report == {"train_original": 12, "train_added": 36, "copies": 3}
    assert out.info["augment"] == report and out.classes == dataset.classes


def test_same_seed_same_output_other_seed_differs(make_dataset: MakeDataset) -> None:
    dataset = make_dataset()
    first, _ = augment(dataset, augment_params(), 5)
    again, _ = augment(dataset, augment_params(), 5)
    other, _ = augment(dataset, augment_params(), 6)
    assert content_hash(first.splits["train"]) == content_hash(again.splits["train"])
    assert content_hash(first.splits["train"]) != content_hash(other.splits["train"])


def test_each_copy_of_each_shard_has_its_own_random_stream() -> None:
    draws = {(c, i): copy_rng(7, c, i).random() for c in (1, 2) for i in (0, 1)}
    assert len(set(draws.values())) == 4
    assert copy_rng(7, 2, 1).random() == draws[2, 1]  # the same call draws the same, whichever worker runs it


def test_copies_zero_leaves_train_unchanged(make_dataset: MakeDataset) -> None:
    dataset = make_dataset()
    out, report = augment(dataset, augment_params(copies=0), 0)
    assert content_hash(out.splits["train"]) == content_hash(dataset.splits["train"])
    assert report["train_added"] == 0


@pytest.mark.parametrize("channels", [1, 3])
def test_affine_identity(channels: int) -> None:
    x = np.random.default_rng(0).integers(0, 256, (5, 7, 9, channels), dtype=np.uint8)
    out = affine(x, np.zeros(5), np.ones(5), np.zeros((5, 2)))
    np.testing.assert_array_equal(out, x)


def test_affine_whole_pixel_shift_moves_content() -> None:
    x = np.zeros((1, 5, 5, 1), dtype=np.uint8)
    x[0, 2, 2, 0] = 200
    out = affine(x, np.zeros(1), np.ones(1), np.array([[1.0, -2.0]]))  # down 1, left 2
    expected = np.zeros_like(x)
    expected[0, 3, 0, 0] = 200
    np.testing.assert_array_equal(out, expected)


def test_affine_quarter_turn_rotates_square_images() -> None:
    x = np.random.default_rng(1).integers(0, 256, (2, 6, 6, 1), dtype=np.uint8)
    out = affine(x, np.full(2, np.pi / 2), np.ones(2), np.zeros((2, 2)))
    turned = [np.array_equal(out, np.rot90(x, k, axes=(1, 2))) for k in (1, 3)]
    assert any(turned)


def test_affine_pixels_from_outside_are_background() -> None:
    x = np.full((1, 4, 4, 1), 255, dtype=np.uint8)
    out = affine(x, np.zeros(1), np.ones(1), np.array([[0.0, 4.0]]))
    assert out.max() == 0


def test_random_affine_without_ranges_is_identity() -> None:
    x = np.random.default_rng(2).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    params = augment_params(rotation_degrees=0.0, zoom=0.0, shift=0.0)
    np.testing.assert_array_equal(random_affine(x, params, np.random.default_rng(0)), x)


def test_sample_grid_is_a_png_of_the_expected_size(make_dataset: MakeDataset) -> None:
    dataset = make_dataset({"train": 10, "val": 3, "test": 3}, shape=(6, 6, 1))
    out, report = augment(dataset, augment_params(copies=2), 0)
    n = report["train_original"]
    png = sample_grid([out.splits["train"].x[c * n : (c + 1) * n] for c in range(3)], 4)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(png)) as image:
        image.verify()
    with Image.open(io.BytesIO(png)) as image:
        zoom = 64 // 6
        assert image.size == (4 * 8 * zoom, 3 * 8 * zoom)  # 4 images per row, original + 2 copies
        assert image.mode == "L"


def test_sample_grid_rgb_and_count_capped(make_dataset: MakeDataset) -> None:
    dataset = make_dataset({"train": 3, "val": 2, "test": 2}, shape=(32, 32, 3))
    png = sample_grid([dataset.splits["train"].x], 12)
    with Image.open(io.BytesIO(png)) as image:
        assert image.mode == "RGB"
        assert image.size == (3 * 34 * 2, 34 * 2)
        grid = np.asarray(image)
    np.testing.assert_array_equal(grid[2:66:2, 2:66:2], dataset.splits["train"].x[0])


# --- text ---


def test_text_copies_keep_labels_and_words_and_leave_val_and_test_byte_identical(tmp_path: Path) -> None:
    dataset = tiny_texts()
    out, report = augment(dataset, augment_params(copies=2), 3)
    for name in ("val", "test"):
        assert content_hash(out.splits[name]) == content_hash(dataset.splits[name])
    train, x, y = dataset.splits["train"], out.splits["train"].x, out.splits["train"].y
    assert len(x) == 3 * len(train.y) and report["train_added"] == 2 * len(train.y)
    np.testing.assert_array_equal(y, np.concatenate([train.y] * 3))
    assert x[: len(train.y)].tolist() == train.x.tolist()  # originals first
    for original, copy in zip(np.tile(train.x, 2), x[len(train.y) :], strict=True):
        assert copy.split() and set(copy.split()) <= set(original.split())  # words dropped or moved, none made up
    assert (x[len(train.y) :] != np.tile(train.x, 2)).any()
    again, _ = augment(dataset, augment_params(copies=2), 3)
    assert again.splits["train"].x.tolist() == x.tolist()  # seeded


def test_word_edits_drop_and_swap_but_never_empty_a_text() -> None:
    texts = np.array(["one two three four five six", "single", ""], dtype=str)
    dropped = word_edits(texts, augment_params(word_dropout=0.5, word_swaps=0), np.random.default_rng(0))
    assert len(dropped[0].split()) < 6 and dropped[1] == "single" and dropped[2] == ""
    everything = augment_params(word_dropout=0.5, word_swaps=0)
    for seed in range(20):  # whatever the draws, a text keeps at least one word
        assert word_edits(np.array(["a b"]), everything, np.random.default_rng(seed))[0] in ("a", "b", "a b")
    swapped = word_edits(texts[:1], augment_params(word_dropout=0.0, word_swaps=1), np.random.default_rng(0))
    assert sorted(swapped[0].split()) == sorted(texts[0].split()) and swapped[0] != texts[0]


def test_a_text_copy_equal_to_a_held_out_text_is_replaced_by_its_original() -> None:
    # "ok lar" with a word dropped is "ok" or "lar": both are val/test texts, which train must never hold
    train = Split(np.array(["ok lar"] * 8, dtype=str), np.array([1, 0] * 4))
    held = {
        "val": Split(np.array(["ok", "x"], dtype=str), np.array([1, 0])),
        "test": Split(np.array(["lar", "y"]), np.array([1, 0])),
    }
    dataset = Dataset(splits={"train": train, **held}, classes=("spam", "ham"))
    params = augment_params(copies=1, word_dropout=0.5, word_swaps=0)
    unguarded = word_edits(train.x, params, copy_rng(0, 1, 0))
    assert {"ok", "lar"} & set(unguarded.tolist())  # the seed does produce held-out texts
    out, _ = augment(dataset, params, 0)
    copies = out.splits["train"].x[8:].tolist()
    assert not {"ok", "lar"} & set(copies) and "ok lar" in copies


def test_text_samples_are_a_png() -> None:
    rows = [np.array(["free cash now", "see you"]), np.array(["cash free", "you see"])]
    png = sample_text(rows, 12)
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_text_samples_draw_sms_characters_and_escape_the_rest_visibly() -> None:
    """£, é, ü, – and the like are drawn, not □ (the font's missing-glyph box); what the font lacks is escaped.

    Fails on the old code: Pillow's default font (``ImageFont.load_default(size=14)``) draws £ as its missing glyph.
    """
    font, glyphs = text_font()

    def drawn(text: str) -> bytes:
        picture = Image.new("L", (40, 24), 255)
        ImageDraw.Draw(picture).text((2, 2), text, font=font, fill=0)
        return picture.tobytes()

    missing = drawn("\ue000")  # a private-use code point: no font draws it
    assert [c for c in "£€éüÜñç–—•½…’" if drawn(c) == missing] == []
    assert visible("win £100 now \x92 中", glyphs) == "win £100 now \\x92 \\u4e2d"
    rows = [np.array(["£100 café 中"]), np.array(["café £100 中"])]
    assert Image.open(io.BytesIO(sample_text(rows, 1))).format == "PNG"


@pytest.mark.parametrize("kind", ["images", "texts"])
def test_a_val_shard_augment_changed_is_reported_and_halts_the_boundary(
    tmp_path: Path, make_dataset: MakeDataset, kind: str
) -> None:
    """The guard compares each val/test shard with the clean one it came from. Catches comparing it with itself
    (``reference=x`` in augment_shard), which passed every augment and validation test before."""
    dataset = make_dataset({"train": 6, "val": 6, "test": 3}) if kind == "images" else tiny_texts()
    artifacts.write_dataset(tmp_path / "clean", dataset, PARAMS.data.shard_size)
    (tmp_path / "out/val").mkdir(parents=True)
    # what a plan that augmented val would do: copy 1 of val's first shard
    _, summary = augment_shard(str(tmp_path / "clean"), str(tmp_path / "out"), "val", 0, 1, 0, augment_params(), 0)
    assert int(np.sum(summary.groups["changed"])) > 0
    relaxed = PARAMS.validation.model_copy(update={"min_images": 1, "min_class_fraction": 0.0})
    paths = PARAMS.paths.model_copy(update={k: str(tmp_path / v) for k, v in PARAMS.paths.model_dump().items()})
    params = PARAMS.model_copy(update={"validation": relaxed, "paths": paths})
    with pytest.raises(TrainflowError, match=r"changed_by_augment"):
        validation.validate_summaries("augmented", [summary], dataset.classes, params)


def test_copies_keep_their_originals_source_ids(make_dataset: MakeDataset) -> None:
    """A copy leads back to its original's source item; val and test keep theirs. Fails without provenance in
    augment_shard (mutation: ``Split(x, shard.y)`` without ``shard.ids``: the copies have no ids)."""
    data = make_dataset({"train": 12, "val": 6, "test": 6})
    with_ids = {
        name: Split(s.x, s.y, np.array([f"{name}-{i}.png" for i in range(len(s.y))])) for name, s in data.splits.items()
    }
    out, _ = run_stage_on("augment", Dataset(with_ids, data.classes), PARAMS, augment=PARAMS.augment)
    train = out.splits["train"]
    assert train.ids is not None and len(train.ids) == 12 * (PARAMS.augment.copies + 1)
    assert train.ids.tolist() == with_ids["train"].ids.tolist() * (PARAMS.augment.copies + 1)
    assert out.splits["test"].ids.tolist() == with_ids["test"].ids.tolist()
