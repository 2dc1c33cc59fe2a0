"""Bad input through the real CLI: exactly one line on stderr (the `error:` line), exit 1, nothing written to data/,
models/, reports/, gx/ or the MLflow store.

Each case writes its own params file (and data files) under tmp_path and runs `python -m tasks.<stage>` in one
workspace that a good ingest filled first. docs/own-data.md's "Bad input" table lists the same cases.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers import idx_bytes, make_workspace, sh, sh_peak

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
DELETE = object()  # a params change that removes the key
MAX_PEAK_MIB = 300  # refusing bad input takes 45–200 MiB (numpy, the config, at most scikit-learn): nothing more


@dataclass(frozen=True)
class Case:
    """A bad input: what it writes under tmp_path, the params it changes, and what the message must say."""

    name: str
    build: Callable[[Path], dict[str, Any]]  # tmp_path → dotted-key params changes
    expect: tuple[str, ...]  # substrings of the error line ("{tmp}" stands for tmp_path)
    stage: str = "ingest"
    extra_args: tuple[str, ...] = field(default=())


def tree_digest(folder: Path) -> str:
    """SHA-256 over every file's relative path and bytes; '' when the folder does not exist."""
    if not folder.exists():
        return ""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(folder)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


# what a stage may write: its data, models, reports, Great Expectations' store and Data Docs, the MLflow store
OUTPUTS = ("data", "models", "reports", "gx", "mlflow.db", "mlartifacts")


def outputs_digest(workspace: Path) -> dict[str, str]:
    """:func:`tree_digest` of every place a stage writes (a file's bytes for mlflow.db)."""
    return {
        name: hashlib.sha256((workspace / name).read_bytes()).hexdigest()
        if (workspace / name).is_file()
        else tree_digest(workspace / name)
        for name in OUTPUTS
    }


def digits_like(n: int, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 8, 8), dtype=np.uint8), np.arange(n, dtype=np.int64) % classes


def write_idx(tmp: Path, images: bytes, labels: bytes) -> dict[str, Any]:
    folder = tmp / "idx"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte").write_bytes(images)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    return {"data.source": "idx", "data.path": str(folder)}


def idx_truncated(tmp: Path) -> dict[str, Any]:
    x, y = digits_like(30)
    return write_idx(tmp, idx_bytes(x, IDX_IMAGES_MAGIC)[:-100], idx_bytes(y, IDX_LABELS_MAGIC))


def idx_wrong_magic(tmp: Path) -> dict[str, Any]:
    x, y = digits_like(30)
    return write_idx(tmp, idx_bytes(x, 0x00000804), idx_bytes(y, IDX_LABELS_MAGIC))


def idx_count_mismatch(tmp: Path) -> dict[str, Any]:
    x, y = digits_like(30)
    return write_idx(tmp, idx_bytes(x, IDX_IMAGES_MAGIC), idx_bytes(y[:29], IDX_LABELS_MAGIC))


def idx_gzip_bomb(tmp: Path) -> dict[str, Any]:
    """A 30-image IDX file whose gzip stream goes on to 256 MiB of zeros (a few hundred KB on disk)."""
    x, y = digits_like(30)
    folder = tmp / "idx"
    write_idx(tmp, b"", idx_bytes(y, IDX_LABELS_MAGIC))
    with gzip.open(folder / "train-images-idx3-ubyte", "wb", compresslevel=9) as f:
        f.write(idx_bytes(x, IDX_IMAGES_MAGIC))
        for _ in range(256):
            f.write(bytes(1 << 20))
    return {"data.source": "idx", "data.path": str(folder)}


def idx_header_claims_too_much(tmp: Path) -> dict[str, Any]:
    """60,000 images of 4,000×4,000 pixels declared (960 GB) over a few bytes."""
    header = IDX_IMAGES_MAGIC.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (60_000, 4_000, 4_000))
    return write_idx(tmp, header + bytes(64), idx_bytes(digits_like(30)[1], IDX_LABELS_MAGIC))


def write_folder(tmp: Path, sizes: tuple[tuple[int, int], ...] = ((8, 8),) * 12) -> Path:
    root = tmp / "images"
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        cls = root / ("cat" if i % 2 else "dog")
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(h, w), dtype=np.uint8)).save(cls / f"{i:03d}.png")
    return root


def folder_non_image(tmp: Path) -> dict[str, Any]:
    root = write_folder(tmp)
    (root / "cat" / "notes.txt").write_text("not a picture\n")
    return {"data.source": "folder", "data.path": str(root)}


def folder_corrupt_png(tmp: Path) -> dict[str, Any]:
    root = write_folder(tmp)
    good = (root / "cat" / "001.png").read_bytes()
    (root / "cat" / "zzz.png").write_bytes(good[:40])  # a valid signature and header, then nothing
    return {"data.source": "folder", "data.path": str(root)}


def folder_mixed_sizes(tmp: Path) -> dict[str, Any]:
    root = write_folder(tmp, ((8, 8),) * 11 + ((10, 12),))
    return {"data.source": "folder", "data.path": str(root), "data.image_size": None}


def folder_symlink_outside(tmp: Path) -> dict[str, Any]:
    root = write_folder(tmp)
    outside = tmp / "outside.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(outside)
    os.symlink(outside, root / "dog" / "link.png")
    return {"data.source": "folder", "data.path": str(root)}


def write_npz(tmp: Path, **arrays: np.ndarray) -> dict[str, Any]:
    path = tmp / "data.npz"
    np.savez(path, **arrays)
    return {"data.source": "npz", "data.path": str(path)}


def npz_with(x_train: np.ndarray | None = None, y_train: np.ndarray | None = None, n: int = 40) -> Callable:
    def build(tmp: Path) -> dict[str, Any]:
        x, y = digits_like(n)
        xt, yt = digits_like(12, seed=1)
        return write_npz(
            tmp,
            x_train=x if x_train is None else x_train,
            y_train=y if y_train is None else y_train,
            x_test=xt,
            y_test=yt,
        )

    return build


def float_images(bad: float) -> np.ndarray:
    x = digits_like(40)[0].astype(np.float32)
    x[3, 2, 2] = bad
    return x


def npz_object_array(tmp: Path) -> dict[str, Any]:
    x, y = digits_like(40)
    xt, yt = digits_like(12, seed=1)
    objects = np.empty(len(x), dtype=object)
    objects[:] = list(x)
    return write_npz(tmp, x_train=objects, y_train=y, x_test=xt, y_test=yt)


def npz_not_an_archive(tmp: Path) -> dict[str, Any]:
    path = tmp / "data.npz"
    path.write_bytes(b"\x93NUMPY not really")
    return {"data.source": "npz", "data.path": str(path)}


def npz_header_claims_a_terabyte(tmp: Path) -> dict[str, Any]:
    """An .npz whose x_train header claims 10¹² elements over a few bytes of data."""
    import zipfile

    x, y = digits_like(40)
    xt, yt = digits_like(12, seed=1)
    write_npz(tmp, x_train=x, y_train=y, x_test=xt, y_test=yt)
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.uint8))
    header["shape"] = (10**12,)
    fake = tmp / "x_train.npy"
    with fake.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 64)
    path = tmp / "data.npz"
    kept = {}
    with zipfile.ZipFile(path) as archive:
        kept = {name: archive.read(name) for name in archive.namelist() if name != "x_train.npy"}
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(fake, "x_train.npy")
        for name, data in kept.items():
            archive.writestr(name, data)
    return {"data.source": "npz", "data.path": str(path)}


def npz_empty(tmp: Path) -> dict[str, Any]:
    empty_x, empty_y = np.zeros((0, 8, 8), dtype=np.uint8), np.zeros(0, dtype=np.int64)
    return write_npz(tmp, x_train=empty_x, y_train=empty_y, x_test=empty_x, y_test=empty_y)


def npz_single_class(tmp: Path) -> dict[str, Any]:
    x, _ = digits_like(40)
    xt, _ = digits_like(12, seed=1)
    return write_npz(tmp, x_train=x, y_train=np.zeros(40, np.int64), x_test=xt, y_test=np.zeros(12, np.int64))


def raw_missing(tmp: Path) -> dict[str, Any]:
    return {"paths.raw": str(tmp / "raw")}


def raw_corrupt(tmp: Path) -> dict[str, Any]:
    (tmp / "raw/train").mkdir(parents=True)
    shards = {"count": 5, "shards": [{"count": 5, "sha256": "0"}]}
    manifest = {"splits": {"train": shards}, "classes": ["0", "1"], "shape": [8, 8, 1], "dtype": "uint8"}
    (tmp / "raw/manifest.json").write_text(json.dumps(manifest))
    (tmp / "raw/train/x-00000.npy").write_bytes(b"\x93NUMPY cut short")
    return {"paths.raw": str(tmp / "raw")}


def text_file(name: str, content: bytes, source: str = "tsv", **data: Any) -> Callable[[Path], dict[str, Any]]:
    def build(tmp: Path) -> dict[str, Any]:
        (tmp / name).write_bytes(content)
        return {"data.source": source, "data.path": str(tmp / name), **{f"data.{k}": v for k, v in data.items()}}

    return build


SMS_LINES = b"ham\tsee you later\nspam\tfree cash now\n" * 20
CSV_ROWS = b"text,label\n" + b"see you later,ham\nfree cash now,spam\n" * 1500
CSV_HALF = CSV_ROWS.index(b"\n", len(CSV_ROWS) // 2) + 1  # where line 1,502 starts, mid-file


def text_folder_not_utf8(tmp: Path) -> dict[str, Any]:
    for name in ("ham", "spam"):
        (tmp / "texts" / name).mkdir(parents=True)
        for i in range(10):
            (tmp / "texts" / name / f"{i}.txt").write_text(f"{name} message {i}\n")
    (tmp / "texts" / "spam" / "5.txt").write_bytes(b"first line\nwin \xff\xfe cash\n")
    return {"data.source": "text_folder", "data.path": str(tmp / "texts")}


def params_only(**changes: Any) -> Callable[[Path], dict[str, Any]]:
    return lambda tmp: changes


CASES = [
    Case("idx_truncated", idx_truncated, ("{tmp}/idx/train-images-idx3-ubyte", "truncated")),
    Case("idx_wrong_magic", idx_wrong_magic, ("{tmp}/idx/train-images-idx3-ubyte", "wrong IDX magic number")),
    Case("idx_count_mismatch", idx_count_mismatch, ("train-images-idx3-ubyte", "30 images but 29 labels")),
    Case("folder_non_image", folder_non_image, ("{tmp}/images/cat/notes.txt", "not a PNG/JPEG image")),
    Case("folder_corrupt_png", folder_corrupt_png, ("{tmp}/images/cat/zzz.png", "corrupt or unreadable image")),
    Case("folder_mixed_sizes", folder_mixed_sizes, ("differs from", "data.image_size")),
    Case("folder_symlink_outside", folder_symlink_outside, ("{tmp}/images/dog/link.png", "outside the data folder")),
    Case("npz_object_array", npz_object_array, ("{tmp}/data.npz", "pickle")),
    Case("npz_not_an_archive", npz_not_an_archive, ("{tmp}/data.npz", "not an .npz archive")),
    Case("npz_missing_array", lambda tmp: write_npz(tmp, x_train=digits_like(40)[0]), ("missing arrays", "y_test")),
    Case("npz_nan_pixels", npz_with(x_train=float_images(np.nan)), ("{tmp}/data.npz:x_train", "1 NaN, 0 infinite")),
    Case("npz_inf_pixels", npz_with(x_train=float_images(np.inf)), ("{tmp}/data.npz:x_train", "0 NaN, 1 infinite")),
    Case("npz_pixels_over_255", npz_with(x_train=float_images(300.0)), ("x_train", "0–255", "got 300.0 at image 3")),
    Case(
        "npz_fractional_pixels", npz_with(x_train=float_images(0.5)), ("x_train", "whole numbers", "got 0.5 at image 3")
    ),
    Case("npz_float_labels", npz_with(y_train=np.arange(40) * 0.5), ("{tmp}/data.npz:y_train", "integer")),
    Case("npz_empty", npz_empty, ("{tmp}/data.npz", "empty")),
    Case("npz_single_class", npz_single_class, ("{tmp}/data.npz", "only one class")),
    Case("npz_smaller_than_split", npz_with(n=4), ("{tmp}/data.npz", "cannot split 4 images", "ingest.val_fraction")),
    Case(
        "source_path_missing",
        params_only(**{"data.source": "npz", "data.path": "/no/such/file.npz"}),
        ("/no/such/file.npz",),
    ),
    Case("source_unknown_scheme", params_only(**{"data.source": "s3:bucket/x"}), ("data.source", "s3:bucket/x")),
    Case(
        "npz_label_of_a_billion",
        npz_with(y_train=np.r_[np.arange(59) % 3, 10**9], n=60),
        ("{tmp}/data.npz", "label 1000000000 would make 1000000001 classes (at most 1000"),
    ),
    Case(
        "npz_labels_not_0_to_k",
        npz_with(y_train=np.arange(40) % 3 * 3),  # 0, 3, 6: with the test split's 0..2, 4 and 5 never occur
        ("labels must be 0..6, but [4, 5] never occur",),
    ),
    Case(
        "npz_header_claims_a_terabyte",
        npz_header_claims_a_terabyte,
        ("{tmp}/data.npz", "declares 1,000,000,001,184 bytes", "more than data.max_bytes (4,294,967,296)"),
    ),
    Case("idx_gzip_bomb", idx_gzip_bomb, ("{tmp}/idx/train-images-idx3-ubyte", "oversized", "header says 1936")),
    Case(
        "idx_header_claims_too_much",
        idx_header_claims_too_much,
        ("{tmp}/idx/train-images-idx3-ubyte", "declares 960,000,000,000 bytes", "data.max_bytes"),
    ),
    Case(
        "folder_over_max_bytes",
        lambda tmp: {"data.source": "folder", "data.path": str(write_folder(tmp)), "data.max_bytes": 700},
        ("{tmp}/images: 12 images", "declares 704 bytes", "more than data.max_bytes (700)"),
    ),
    Case("tsv_not_utf8", text_file("sms.tsv", SMS_LINES + b"spam\twin \xe9 now\n"), ("{tmp}/sms.tsv:41:", "not UTF-8")),
    Case(
        "tsv_line_without_label",
        text_file("sms.tsv", SMS_LINES[:37] + b"no tab here\n"),
        ("{tmp}/sms.tsv:3:", "no label"),
    ),
    Case(
        "tsv_one_class", text_file("sms.tsv", b"ham\tsee you\nham\tok lar\n" * 10), ("{tmp}/sms.tsv", "only one class")
    ),
    Case(
        "csv_label_column_missing",
        text_file("sms.csv", b"category,text\nham,see you\nspam,free cash\n", "csv"),
        ("{tmp}/sms.csv:1:", "label", "data.label_column"),
    ),
    Case(  # once reported as a split problem about "images", naming no label
        "tsv_class_name_with_nul",
        text_file("sms.tsv", SMS_LINES + b"sp\x00am\tfree cash\n"),
        ("{tmp}/sms.tsv:41: a NUL byte at column 3; not a text file",),  # in a label too: file and line named
    ),
    Case(
        "tsv_class_name_with_zero_width_space",
        text_file("sms.tsv", SMS_LINES + "sp\u200bam\tfree cash\n".encode()),
        ("{tmp}/sms.tsv:41: class name 'sp\\u200bam' holds '\\u200b' (U+200B ZERO WIDTH SPACE)",),
    ),
    Case("text_folder_not_utf8", text_folder_not_utf8, ("{tmp}/texts/spam/5.txt:2:", "not UTF-8")),
    Case(
        "csv_stray_quote",  # 3,001 rows read as 1,501 texts before, exit 0: the quote swallowed the rows after it
        text_file("sms.csv", CSV_ROWS[:CSV_HALF] + b'"' + CSV_ROWS[CSV_HALF:] + b'bye",ham\n', "csv"),
        ("{tmp}/sms.csv:1502:", "unbalanced"),
    ),
    Case(
        "csv_unterminated_quote",
        text_file("sms.csv", CSV_ROWS + b'"ham', "csv"),
        ("{tmp}/sms.csv:3002:", "never closed"),
    ),
    Case("tsv_lone_cr", text_file("sms.tsv", SMS_LINES.replace(b"\n", b"\r")), ("{tmp}/sms.tsv:1:", "carriage return")),
    Case("tsv_nul", text_file("sms.tsv", SMS_LINES + b"spam\tfree\x00cash\n"), ("{tmp}/sms.tsv:41:", "NUL byte")),
    Case(
        "tsv_line_over_max_text_bytes",
        text_file("sms.tsv", SMS_LINES + b"spam\t" + b"x" * 2000 + b"\n", max_text_bytes=1000),
        ("{tmp}/sms.tsv:41:", "longer than data.max_text_bytes (1,000 bytes)"),
    ),
    Case("paths_raw_is_models", params_only(**{"paths.raw": "models"}), ("paths.raw=models and paths.", "overlap")),
    Case("paths_raw_is_the_repository", params_only(**{"paths.raw": "."}), ("paths.raw=.: outside the repository",)),
    Case("paths_clean_is_git", params_only(**{"paths.clean": ".git"}), ("paths.clean=.git: overlaps .git",)),
    Case("paths_outside", params_only(**{"paths.raw": "/tmp/elsewhere"}), ("paths.raw=/tmp/elsewhere: outside",)),
    Case(
        "data_path_is_an_output", params_only(**{"data.path": "data/raw"}), ("data.path=data/raw overlaps paths.raw",)
    ),
    Case("params_unknown_key", params_only(**{"ingest.shuffle": True}), ("ingest.shuffle: unknown key",)),
    Case("params_wrong_type", params_only(**{"train.epochs": "ten"}), ("train.epochs", "'ten'")),
    Case("params_negative_epochs", params_only(**{"train.epochs": -1}), ("train.epochs", "greater than 0", "-1")),
    Case(
        "params_split_sums_to_1",
        params_only(**{"ingest.val_fraction": 0.5, "ingest.test_fraction": 0.5}),
        ("ingest", "val_fraction + test_fraction"),
    ),
    Case("params_bad_cron", params_only(**{"schedule.cron": "61 * * * *"}), ("schedule", "cron", "61 * * * *")),
    Case("params_missing_key", params_only(**{"clean.max_removed_fraction": DELETE}), ("clean.max_removed_fraction",)),
    Case("params_file_missing", params_only(), ("no-such-params.yaml", "not found"), extra_args=("missing",)),
    Case("clean_raw_missing", raw_missing, ("{tmp}/raw: not found; run `dvc repro ingest` first",), stage="clean"),
    Case("clean_raw_corrupt", raw_corrupt, ("{tmp}/raw/train", "cannot read shard 0"), stage="clean"),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repo copy whose data/raw and data/clean hold a good run's output (the default digits)."""
    root = make_workspace(tmp_path_factory.mktemp("bad-input"), {"validation": {"drift_action": "ignore"}})
    sh(root, "python", "-m", "tasks.ingest")
    sh(root, "python", "-m", "tasks.clean")
    return root


def write_params(workspace: Path, tmp: Path, changes: dict[str, Any]) -> Path:
    raw = yaml.safe_load((workspace / "params.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        if value is DELETE:
            del raw[section][key]
        else:
            raw[section][key] = value
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_fails_with_one_line_and_writes_nothing(case: Case, workspace: Path, tmp_path: Path) -> None:
    tmp_path = workspace / "cases" / tmp_path.name  # inside the repository: outputs may lie nowhere else
    tmp_path.mkdir(parents=True)
    before = outputs_digest(workspace)
    manifest = json.loads((workspace / "data/raw/manifest.json").read_text())
    params = write_params(workspace, tmp_path, case.build(tmp_path))
    if case.extra_args == ("missing",):
        params = tmp_path / "no-such-params.yaml"
    done, peak_mib = sh_peak(workspace, "python", "-m", f"tasks.{case.stage}", "--params", str(params))
    assert done.returncode == 1, done.stderr[-2000:]
    assert peak_mib < MAX_PEAK_MIB, f"{peak_mib:.0f} MiB"  # what the input claims is never allocated
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {case.stage}: "), done.stderr[-3000:]  # nothing else
    for expected in case.expect:
        assert expected.format(tmp=tmp_path) in lines[0], lines[0]
    assert outputs_digest(workspace) == before
    assert json.loads((workspace / "data/raw/manifest.json").read_text()) == manifest


def test_labels_out_of_range_are_cleaned_and_counted(workspace: Path, tmp_path: Path) -> None:
    """Labels outside data.classes pass ingest (raw keeps what the source said); clean drops and counts them."""
    from sklearn.datasets import load_digits

    tmp_path = workspace / "cases" / tmp_path.name  # inside the repository: outputs may lie nowhere else
    tmp_path.mkdir(parents=True)
    bunch = load_digits()
    x, y = bunch.images.astype(np.uint8) * 15, bunch.target.astype(np.int64)
    y[[5, 50, 500]] = 12  # three labels beyond the 10 named classes
    y[[7, 70]] = -1
    source = write_npz(tmp_path, x_train=x[:1400], y_train=y[:1400], x_test=x[1400:], y_test=y[1400:])
    changes = {
        **source,
        "data.classes": [str(i) for i in range(10)],
        "paths.raw": str(tmp_path / "raw"),
        "paths.clean": str(tmp_path / "clean"),
    }
    params = write_params(workspace, tmp_path, changes)
    before = tree_digest(workspace / "data/clean")
    sh(workspace, "python", "-m", "tasks.ingest", "--params", str(params))
    sh(workspace, "python", "-m", "tasks.clean", "--params", str(params))
    removed = json.loads((tmp_path / "clean/manifest.json").read_text())["clean"]["removed"]
    assert sum(counts["bad_label"] for counts in removed.values()) == 5
    assert tree_digest(workspace / "data/clean") == before
