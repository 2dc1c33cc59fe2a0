"""tasks/lib/text_sources.py: each layout on files written here, the real SMS file, and every bad input's message."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from tasks.lib.config import Params
from tasks.lib.errors import TrainflowError
from tasks.lib.sources import load_source
from tasks.lib.text_sources import load_csv, load_text_folder, load_tsv
from tests.helpers import needs

REPO = Path(__file__).resolve().parents[3]
SMS = REPO.parent / "shared" / "data" / "sms-spam" / "sms.tsv"


def at(path: Path) -> str:
    """A regex for a message that starts with ``path``."""
    return "^" + re.escape(str(path))


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def texts_folder(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        write(root / name, text)
    return root


# --- tsv ---


def test_tsv_maps_labels_to_sorted_classes(tmp_path: Path) -> None:
    f = write(tmp_path / "d.tsv", "spam\tWin now\nham\tsee you\n\n  \nham\tok\n")
    loaded = load_tsv(f)
    assert loaded.classes == ("ham", "spam")
    assert loaded.x.dtype.kind == "U" and loaded.x.ndim == 1
    assert loaded.x.tolist() == ["Win now", "see you", "ok"]
    assert loaded.y.dtype == np.int64 and loaded.y.tolist() == [1, 0, 0]
    assert loaded.x_test is None and loaded.y_test is None


def test_tsv_splits_at_the_first_tab_and_strips_crlf(tmp_path: Path) -> None:
    f = write(tmp_path / "d.tsv", "a\tone\ttwo\r\nb\t\r\nb\tthree")
    loaded = load_tsv(f)
    assert loaded.x.tolist() == ["one\ttwo", "", "three"]
    assert loaded.y.tolist() == [0, 1, 1]


def test_tsv_skips_a_byte_order_mark(tmp_path: Path) -> None:
    f = write(tmp_path / "d.tsv", b"\xef\xbb\xbfa\tx\nb\ty\n")
    assert load_tsv(f).classes == ("a", "b")


def test_sms_file_loads_5574_texts_747_spam() -> None:
    needs(SMS.is_file(), f"the SMS Spam Collection at {SMS}")
    loaded = load_tsv(SMS)
    assert len(loaded.x) == 5574
    assert loaded.classes == ("ham", "spam")
    assert int((loaded.y == 1).sum()) == 747


def test_tsv_through_load_source(tmp_path: Path, params: Params) -> None:
    f = write(tmp_path / "d.tsv", "b\tx\na\ty\n")
    loaded = load_source(params.data.model_copy(update={"source": "tsv", "path": str(f)}))
    assert loaded.classes == ("a", "b") and loaded.y.tolist() == [1, 0]


# --- csv ---


def test_csv_reads_the_named_columns(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", "\ufeffid,body,kind\n1,hello,pos\n2,,neg\n")
    loaded = load_csv(f, text_column="body", label_column="kind")
    assert loaded.classes == ("neg", "pos")
    assert loaded.x.tolist() == ["hello", ""]
    assert loaded.y.tolist() == [1, 0]


def test_csv_quoted_multiline_field_keeps_its_lines(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", 'text,label\r\n"two\r\nlines, ""quoted""",a\r\nplain,b\r\n')
    loaded = load_csv(f, "text", "label")
    assert loaded.x.tolist() == ['two\r\nlines, "quoted"', "plain"]


def test_csv_error_names_the_line_where_the_record_starts(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", 'text,label\n"a\nb\nc",x\nonly-text\n')
    with pytest.raises(TrainflowError, match=at(f) + ":5: 1 fields"):
        load_csv(f, "text", "label")


@pytest.mark.parametrize(("header", "key"), [("text,kind", "data.label_column"), ("body,label", "data.text_column")])
def test_csv_missing_column_names_the_key(tmp_path: Path, header: str, key: str) -> None:
    f = write(tmp_path / "d.csv", f"{header}\nx,y\n")
    with pytest.raises(TrainflowError, match=at(f) + f":1: no column .*; set {key}$"):
        load_csv(f, "text", "label")


def test_csv_empty_label(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", "text,label\na,x\nb,y\nc, \n")
    with pytest.raises(TrainflowError, match=at(f) + ":4: no label"):
        load_csv(f, "text", "label")


# --- text_folder ---


def test_text_folder_classes_are_sorted_sub_folders(tmp_path: Path) -> None:
    root = texts_folder(
        tmp_path / "data",
        {"pos/1.txt": "good\n\n", "neg/1.txt": "bad", "neg/2.TXT": "", "neg/.hidden": "x", ".git/x.txt": "x"},
    )
    loaded = load_text_folder(root)
    assert loaded.classes == ("neg", "pos")
    assert loaded.x.tolist() == ["bad", "", "good"]
    assert loaded.y.tolist() == [0, 0, 1]


def test_text_folder_refuses_a_file_that_is_not_txt(tmp_path: Path) -> None:
    root = texts_folder(tmp_path, {"a/1.txt": "x", "b/1.md": "y"})
    with pytest.raises(TrainflowError, match=at(tmp_path / "b" / "1.md") + ": not a .txt file"):
        load_text_folder(root)


def test_text_folder_refuses_a_symlink_outside_root(tmp_path: Path) -> None:
    secret = write(tmp_path / "secret.txt", "x")
    root = texts_folder(tmp_path / "data", {"a/1.txt": "x", "b/1.txt": "y"})
    (root / "b" / "2.txt").symlink_to(secret)
    with pytest.raises(TrainflowError, match="symlink points outside the data folder"):
        load_text_folder(root)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
@pytest.mark.timeout(10)
def test_text_folder_refuses_a_fifo_without_opening_it(tmp_path: Path) -> None:
    root = texts_folder(tmp_path, {"a/1.txt": "x", "b/1.txt": "y"})
    os.mkfifo(root / "b" / "2.txt")
    with pytest.raises(TrainflowError, match="not a regular file"):
        load_text_folder(root)


def test_text_folder_not_utf8_names_file_and_line(tmp_path: Path) -> None:
    root = texts_folder(tmp_path, {"a/1.txt": "x", "b/1.txt": "y"})
    bad = write(root / "b" / "2.txt", b"fine\nok\nca\xe9\n")
    with pytest.raises(TrainflowError, match=at(bad) + ":3: not UTF-8 \\(byte 0xe9 at column 3\\)$"):
        load_text_folder(root)


def test_text_folder_max_bytes_counts_all_files(tmp_path: Path) -> None:
    root = texts_folder(tmp_path, {"a/1.txt": "x" * 10, "b/1.txt": "y" * 10})
    with pytest.raises(TrainflowError, match=r"declares 20 bytes .* data.max_bytes \(15\)"):
        load_text_folder(root, max_bytes=15)


def test_text_folder_one_class(tmp_path: Path) -> None:
    root = texts_folder(tmp_path, {"a/1.txt": "x", "a/2.txt": "y"})
    with pytest.raises(TrainflowError, match=at(tmp_path) + ": only one class \\('a'\\)"):
        load_text_folder(root)


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("file", ": text_folder source must be a directory"),
        ("empty", ": no class sub-folders"),
        ("class", "/b: no .txt"),
    ],
)
def test_text_folder_layout_errors(tmp_path: Path, what: str, message: str) -> None:
    root = tmp_path
    if what == "file":
        root = write(tmp_path / "d.txt", "x")
    elif what == "class":
        texts_folder(tmp_path, {"a/1.txt": "x"})
        (tmp_path / "b").mkdir()
    with pytest.raises(TrainflowError, match=at(root) + message):
        load_text_folder(root)


# --- bad input shared by tsv and csv ---


def test_tsv_line_without_a_label(tmp_path: Path) -> None:
    f = write(tmp_path / "d.tsv", "a\tx\nb\ty\nno tab here\n")
    with pytest.raises(TrainflowError, match=at(f) + ":3: no label \\(expected label<TAB>text\\)$"):
        load_tsv(f)


def test_tsv_empty_label(tmp_path: Path) -> None:
    f = write(tmp_path / "d.tsv", "a\tx\n\n \ttext\n")
    with pytest.raises(TrainflowError, match=at(f) + ":3: no label"):
        load_tsv(f)


@pytest.mark.parametrize(
    ("suffix", "body"), [("tsv", b"a\tx\nb\ty\nb\tca\xff\n"), ("csv", b"text,label\nx,a\nca\xff,b\n")]
)
def test_not_utf8_names_file_and_line(tmp_path: Path, suffix: str, body: bytes) -> None:
    f = write(tmp_path / f"d.{suffix}", body)
    with pytest.raises(TrainflowError, match=at(f) + ":3: not UTF-8 \\(byte 0xff at column \\d+\\)$"):
        load_tsv(f) if suffix == "tsv" else load_csv(f, "text", "label")


@pytest.mark.parametrize(
    ("suffix", "body", "message"),
    [
        ("tsv", "ham\tx\nham\ty\n", "only one class \\('ham'\\); a classifier needs at least two"),
        ("csv", "text,label\nx,ham\n", "only one class \\('ham'\\)"),
        ("tsv", "\n\n", "no texts"),
        ("csv", "text,label\n", "no texts"),
        ("csv", "", "no texts"),
    ],
)
def test_too_few_classes_or_texts(tmp_path: Path, suffix: str, body: str, message: str) -> None:
    f = write(tmp_path / f"d.{suffix}", body)
    with pytest.raises(TrainflowError, match=at(f) + f": {message}"):
        load_tsv(f) if suffix == "tsv" else load_csv(f, "text", "label")


def test_max_bytes_refuses_a_file_before_reading(tmp_path: Path) -> None:
    f = write(tmp_path / "d.tsv", "a\tx\nb\ty\n")
    with pytest.raises(TrainflowError, match=at(f) + ": declares 8 bytes .*data.max_bytes \\(7\\)"):
        load_tsv(f, max_bytes=7)
    assert len(load_tsv(f, max_bytes=8).x) == 2


def test_max_bytes_bounds_the_padded_array(tmp_path: Path) -> None:
    f = write(tmp_path / "d.tsv", "a\t" + "x" * 100 + "\n" + "b\ty\n" * 20)
    with pytest.raises(TrainflowError, match="21 texts as an array: declares 8,400 bytes"):
        load_tsv(f, max_bytes=f.stat().st_size * 2)


def test_a_folder_where_a_file_is_expected(tmp_path: Path) -> None:
    with pytest.raises(TrainflowError, match=at(tmp_path) + ": a folder; data.source=tsv"):
        load_tsv(tmp_path)
    with pytest.raises(TrainflowError, match=at(tmp_path) + ": a folder; data.source=csv"):
        load_csv(tmp_path, "text", "label")


# --- class names: any characters but invisible or control ones ---

INVISIBLE = {  # one of each kind: the message names the label (repr) and the character
    "nul": ("\x00", "U+0000"),
    "tab": ("\t", "U+0009"),
    "newline": ("\n", "U+000A"),
    "carriage_return": ("\r", "U+000D"),
    "vertical_tab": ("\x0b", "U+000B"),  # whitespace to str.strip: never stripped silently
    "escape": ("\x1b", "U+001B"),
    "delete": ("\x7f", "U+007F"),
    "c1_next_line": ("\x85", "U+0085"),
    "zero_width_space": ("\u200b", "U+200B ZERO WIDTH SPACE"),
    "zero_width_joiner": ("\u200d", "U+200D ZERO WIDTH JOINER"),
    "right_to_left_override": ("\u202e", "U+202E RIGHT-TO-LEFT OVERRIDE"),
    "soft_hyphen": ("\u00ad", "U+00AD SOFT HYPHEN"),
    "byte_order_mark": ("\ufeff", "U+FEFF ZERO WIDTH NO-BREAK SPACE"),
    "line_separator": ("\u2028", "U+2028 LINE SEPARATOR"),
    "paragraph_separator": ("\u2029", "U+2029 PARAGRAPH SEPARATOR"),
}


def refused(origin: Path | str, name: str, char: str, what: str) -> str:
    return "^" + re.escape(
        f"{origin}: class name {name!r} holds {char!r} ({what}), an invisible or control character; rename the class"
    )


@pytest.mark.parametrize("kind", list(INVISIBLE))
def test_csv_class_name_with_an_invisible_character_is_refused_by_name(tmp_path: Path, kind: str) -> None:
    char, what = INVISIBLE[kind]
    name = f"sp{char}am"
    body = 'label,text\nham,see you\n"{}",free cash\nham,later\n'.format(name.replace('"', '""'))
    path = write(tmp_path / "x.csv", body)
    line = 3
    with pytest.raises(TrainflowError, match=refused(f"{path}:{line}", name, char, what)):
        load_csv(path, "text", "label")


@pytest.mark.parametrize("kind", [k for k in INVISIBLE if INVISIBLE[k][0] not in "\t\n"])  # a tsv label holds neither
def test_tsv_class_name_with_an_invisible_character_is_refused_by_name(tmp_path: Path, kind: str) -> None:
    char, what = INVISIBLE[kind]
    for name in (f"sp{char}am", f"spam{char}"):  # inside, or at the end where stripping would have hidden it
        path = write(tmp_path / "x.tsv", f"ham\tsee you\nham\tlater\n{name}\tfree cash\n")
        with pytest.raises(TrainflowError, match=refused(f"{path}:3", name, char, what)):
            load_tsv(path)


@pytest.mark.parametrize("kind", [k for k in INVISIBLE if k != "nul"])  # a file name cannot hold a NUL
def test_text_folder_class_name_with_an_invisible_character_is_refused_by_name(tmp_path: Path, kind: str) -> None:
    char, what = INVISIBLE[kind]
    name = f"sp{char}am"
    root = texts_folder(tmp_path / "texts", {"ham/1.txt": "see you", f"{name}/1.txt": "free cash"})
    with pytest.raises(TrainflowError, match=refused(root / name, name, char, what)):
        load_text_folder(root)
