"""Text sources read from ``data.path``: labelled texts as a 1-D NumPy unicode array and integer labels.

Three layouts, all UTF-8 (a leading byte-order mark is skipped):

- ``tsv``: one ``label<TAB>text`` per line, no header; the line is split at its first tab, so the text may hold
  more. Blank lines are skipped.
- ``csv``: a header row naming the columns; ``data.text_column`` and ``data.label_column`` are read, others ignored.
  Quoted fields may span lines.
- ``text_folder``: one sub-folder per class, each holding ``.txt`` files of one text each (trailing whitespace
  stripped).

Classes are the sorted distinct label names (sub-folder names), any characters but invisible or control ones (refused,
naming the label); a text may be empty (clean drops and counts those).
Every problem is a TrainflowError naming the file and, where there is one, the line; ``max_bytes`` bounds the bytes
read (a file, or a folder's files together) and the array built from them, both checked before they are allocated.
"""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path

import numpy as np

from tasks.lib.errors import TrainflowError
from tasks.lib.source_files import Loaded, check_class_name, too_big, unsafe, visible_files

TEXT_SUFFIX = ".txt"


def _decode(data: bytes, origin: Path) -> str:
    """``data`` as UTF-8 without a leading byte-order mark; a bad byte is reported with its line and column."""
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = start + exc.start
        line_start = data.rfind(b"\n", 0, at) + 1
        line = data.count(b"\n", 0, at) + 1
        raise TrainflowError(
            f"{origin}:{line}: not UTF-8 (byte 0x{data[at]:02x} at column {at - line_start + 1})"
        ) from None


def _read_file(path: Path, kind: str, max_bytes: int | None) -> str:
    """The decoded text of the file ``path``, refused unread if it is a folder, special or over ``max_bytes``."""
    if path.is_dir():
        raise TrainflowError(f"{path}: a folder; data.source={kind} reads one file (text_folder reads a folder)")
    if not path.exists():
        raise TrainflowError(f"{path}: not found (data.path, for data.source={kind})")
    if not path.is_file():
        raise TrainflowError(f"{path}: not a regular file (a FIFO, device or socket); refused without opening it")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise too_big(str(path), size, max_bytes)
    try:
        return _decode(path.read_bytes(), path)
    except OSError as exc:
        raise TrainflowError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _loaded(texts: list[str], labels: list[str], origin: Path, max_bytes: int | None) -> Loaded:
    """Texts and their label names as a unicode array, int64 indices and the sorted class names."""
    if not texts:
        raise TrainflowError(f"{origin}: no texts")
    classes = tuple(sorted(set(labels)))
    if len(classes) < 2:
        raise TrainflowError(f"{origin}: only one class ({classes[0]!r}); a classifier needs at least two")
    # a unicode array pads every text to the longest one, 4 bytes a character: one long text can cost gigabytes
    declared = len(texts) * max(1, max(len(text) for text in texts)) * 4
    if max_bytes is not None and declared > max_bytes:
        raise too_big(f"{origin}: {len(texts):,} texts as an array", declared, max_bytes)
    index = {name: i for i, name in enumerate(classes)}
    y = np.array([index[name] for name in labels], dtype=np.int64)
    return Loaded(x=np.array(texts, dtype=str), y=y, classes=classes)


def _class_name(label: str, origin: str, checked: set[str]) -> str:
    """A label as read, its surrounding spaces stripped; refused if it holds an invisible or control character
    (each distinct label is checked once)."""
    if label not in checked:
        check_class_name(label, origin)
        checked.add(label)
    return label.strip()


def read_lines(path: Path, max_bytes: int | None = None) -> tuple[list[str], np.ndarray]:
    """Unlabelled texts for batch prediction: a UTF-8 file, one text per line (blank lines skipped); their line
    numbers as ids."""
    lines = _read_file(path, "text", max_bytes).splitlines()
    kept = [(str(n), line) for n, line in enumerate(lines, 1) if line.strip()]
    if not kept:
        raise TrainflowError(f"{path}: no texts (one per line)")
    return [n for n, _ in kept], np.array([line for _, line in kept], dtype=str)


def load_tsv(path: Path, max_bytes: int | None = None) -> Loaded:
    """``label<TAB>text`` lines (no header) → texts, labels and the sorted class names."""
    texts: list[str] = []
    labels: list[str] = []
    checked: set[str] = set()
    for number, line in enumerate(_read_file(path, "tsv", max_bytes).split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        name, tab, text = line.partition("\t")
        if not tab or not name.strip():
            raise TrainflowError(f"{path}:{number}: no label (expected label<TAB>text)")
        labels.append(_class_name(name, f"{path}:{number}", checked))
        texts.append(text)
    return _loaded(texts, labels, path, max_bytes)


def load_csv(path: Path, text_column: str, label_column: str, max_bytes: int | None = None) -> Loaded:
    """A CSV file with a header row → the texts of ``text_column`` labelled by ``label_column``."""
    reader = csv.reader(io.StringIO(_read_file(path, "csv", max_bytes), newline=""))
    texts: list[str] = []
    labels: list[str] = []
    checked: set[str] = set()
    columns: list[str] | None = None
    while True:
        start = reader.line_num + 1  # line_num counts the lines read so far: a quoted field can span several
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise TrainflowError(f"{path}:{start}: malformed CSV ({exc})") from None
        if not row:
            continue
        if columns is None:
            columns = [name.strip() for name in row]
            for name, key in ((label_column, "data.label_column"), (text_column, "data.text_column")):
                if name not in columns:
                    found = ", ".join(repr(c) for c in columns)
                    raise TrainflowError(f"{path}:{start}: no column {name!r} (columns: {found}); set {key}")
            text_at, label_at = columns.index(text_column), columns.index(label_column)
            continue
        if len(row) <= max(text_at, label_at):
            raise TrainflowError(f"{path}:{start}: {len(row)} fields, the header names {len(columns)}")
        if not row[label_at].strip():
            raise TrainflowError(f"{path}:{start}: no label (column {label_column!r} is empty)")
        labels.append(_class_name(row[label_at], f"{path}:{start}", checked))
        texts.append(row[text_at])
    return _loaded(texts, labels, path, max_bytes)


def load_text_folder(root: Path, max_bytes: int | None = None) -> Loaded:
    """One sub-folder per class of ``.txt`` files, one text each → texts, labels and the sub-folder names."""
    if not root.is_dir():
        raise TrainflowError(f"{root}: text_folder source must be a directory with one sub-folder per class")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise TrainflowError(f"{root}: no class sub-folders")
    real_root = root.resolve()
    files: list[tuple[Path, str]] = []
    total = 0
    for folder in class_dirs:  # every file is checked, and the sizes summed, before any is opened
        check_class_name(folder.name, str(folder))
        found = visible_files(folder)
        if not found:
            raise TrainflowError(f"{folder}: no {TEXT_SUFFIX} files (one per text)")
        for file in found:
            problem = unsafe(file, real_root, root)
            if problem is None and file.suffix.lower() != TEXT_SUFFIX:
                problem = f"{file}: not a {TEXT_SUFFIX} file (one text per UTF-8 {TEXT_SUFFIX} file)"
            if problem is not None:
                raise TrainflowError(problem)
            total += file.stat().st_size
            files.append((file, folder.name))
    if max_bytes is not None and total > max_bytes:
        raise too_big(f"{root}: {len(files):,} files", total, max_bytes)
    texts: list[str] = []
    for file, _ in files:
        try:
            texts.append(_decode(file.read_bytes(), file).rstrip())
        except OSError as exc:
            raise TrainflowError(f"{file}: cannot read ({exc.strerror or exc})") from None
    return _loaded(texts, [name for _, name in files], root, max_bytes)
