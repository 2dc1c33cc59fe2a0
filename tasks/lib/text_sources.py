"""Text sources read from ``data.path``: labelled texts as a 1-D NumPy unicode array and integer labels.

Three layouts, all UTF-8 (a leading byte-order mark is skipped):

- ``tsv``: one ``label<TAB>text`` per line, no header; the line is split at its first tab, so the text may hold
  more. Blank lines are skipped.
- ``csv``: a header row naming the columns; ``data.text_column`` and ``data.label_column`` are read, others ignored.
  Every row has the header's number of fields. A field holding a quote, comma or line break is quoted as a whole
  (``"..."``, its quotes doubled, RFC 4180); a quoted field may span lines, at most ``max_text_lines`` of them.
- ``text_folder``: one sub-folder per class, each holding ``.txt`` files of one text each (trailing whitespace
  stripped).

A malformed file is refused, never merged into fewer texts: a NUL byte, a carriage return not followed by a line
feed (tsv, csv and the batch-prediction lines), a line, CSV record or ``.txt`` file over ``max_text_bytes``, a quote
that is never closed or that stands inside an unquoted field. Every problem is a TrainflowError naming the file and,
where there is one, the line.

Files are read a block at a time and the texts gathered into unicode arrays a chunk at a time, so memory follows the
array the texts make (not millions of Python strings); ``max_bytes`` bounds the bytes read (a file, or a folder's
files together) and that array, both checked before they are allocated, and a line over ``max_text_bytes`` is
refused before it is read in full.

Classes are the sorted distinct label names (sub-folder names), any characters but invisible or control ones
(refused, naming the label); a text may be empty (clean drops and counts those).
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from tasks.lib.errors import TrainflowError
from tasks.lib.source_files import Loaded, check_class_name, too_big, unsafe, visible_files

TEXT_SUFFIX = ".txt"
BLOCK_BYTES = 1 << 20  # read at a time; a block is cut at its last line feed, so a character is never split
CHUNK_TEXTS = 1 << 16  # texts gathered as Python strings before they become one unicode array

_LONE_CR = re.compile(rb"\r(?!\n)")
# an RFC 4180 record: quoted fields ("..." with "" for a quote) or unquoted ones without quotes, commas, line breaks
_FIELD = r'(?:"(?:[^"]|"")*+"|[^,"\r\n]*+)'
_RECORD = re.compile(rf"{_FIELD}(?:,{_FIELD})*+")


def _where(data: bytes, at: int, first: int) -> tuple[int, int]:
    """The line number and column of byte ``at`` of ``data``, whose first line is line ``first``."""
    return first + data.count(b"\n", 0, at), at - (data.rfind(b"\n", 0, at) + 1) + 1


def _decode(data: bytes, origin: Path, first: int = 1, lines: bool = False) -> str:
    """``data`` as UTF-8 after the checks every text file passes: no NUL byte and, where ``lines`` are records, no
    carriage return that is not part of a ``\\r\\n`` line break (it would end a record for some readers only)."""
    if b"\0" in data:
        line, column = _where(data, data.index(b"\0"), first)
        raise TrainflowError(f"{origin}:{line}: a NUL byte at column {column}; not a text file")
    if lines and b"\r" in data and (found := _LONE_CR.search(data)) is not None:
        line, column = _where(data, found.start(), first)
        raise TrainflowError(
            f"{origin}:{line}: a carriage return (\\r) not followed by a line feed at column {column}; "
            "lines must end in \\n or \\r\\n"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _where(data, exc.start, first)
        raise TrainflowError(f"{origin}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x} at column {column})") from None


def _too_long(origin: Path, line: int, what: str, max_text_bytes: int) -> TrainflowError:
    return TrainflowError(
        f"{origin}:{line}: {what} longer than data.max_text_bytes ({max_text_bytes:,} bytes); raise "
        "data.max_text_bytes if the texts are that long"
    )


def _check_lengths(data: bytes, origin: Path, first: int, max_text_bytes: int) -> None:
    """Refuse a line of ``data`` (complete lines) longer than ``max_text_bytes``, its line break left out."""
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
    lengths = np.diff(ends, prepend=-1) - 1
    for index in np.flatnonzero(lengths > max_text_bytes):  # none in a file within its limits
        if lengths[index] - (data[ends[index] - 1 : ends[index]] == b"\r") > max_text_bytes:
            raise _too_long(origin, first + int(index), "a line", max_text_bytes)


def _blocks(file: BinaryIO, origin: Path, max_text_bytes: int | None) -> Iterator[tuple[int, str]]:
    """The file's text a block of whole lines at a time, checked and decoded: (the block's first line number, text).

    A line longer than ``max_text_bytes`` is refused as soon as that many of its bytes are read."""
    first, held, parts = 1, 0, []  # parts: the start of a line the last block did not finish
    start = True
    while block := file.read(BLOCK_BYTES):
        if start:
            block, start = block.removeprefix(codecs.BOM_UTF8), False
        cut = block.rfind(b"\n") + 1
        if not cut:
            parts.append(block)
            held += len(block)
            if max_text_bytes is not None and held > max_text_bytes + 1:  # + 1: a \r of its \r\n line break
                raise _too_long(origin, first, "a line", max_text_bytes)
            continue
        data = b"".join([*parts, block[:cut]]) if parts else block[:cut]
        parts, held = [block[cut:]], len(block) - cut
        if max_text_bytes is not None and len(data) > max_text_bytes:
            _check_lengths(data, origin, first, max_text_bytes)
        yield first, _decode(data, origin, first, lines=True)
        first += data.count(b"\n")
        if max_text_bytes is not None and held > max_text_bytes + 1:
            raise _too_long(origin, first, "a line", max_text_bytes)
    if held:
        data = b"".join(parts)
        if max_text_bytes is not None and len(data.removesuffix(b"\r")) > max_text_bytes:
            raise _too_long(origin, first, "a line", max_text_bytes)
        yield first, _decode(data, origin, first, lines=True)


def _lines(file: BinaryIO, origin: Path, max_text_bytes: int | None) -> Iterator[tuple[int, str]]:
    """Each line of the file with its number, its line break left out."""
    for first, text in _blocks(file, origin, max_text_bytes):
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        lines = text.split("\n")
        if not lines[-1]:  # the block ends in a line feed
            lines.pop()
        yield from enumerate(lines, first)


@contextmanager
def _opened(path: Path, kind: str, max_bytes: int | None) -> Iterator[BinaryIO]:
    """The file ``path`` opened for reading, refused unopened if it is a folder, special or over ``max_bytes``."""
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
        with path.open("rb") as file:
            yield file
    except OSError as exc:
        raise TrainflowError(f"{path}: cannot read ({exc.strerror or exc})") from None


class _Texts:
    """Texts (and their label names) gathered a chunk at a time into unicode arrays, each as wide as its longest
    text, the labels as indices in order of first appearance: memory follows the arrays, not one Python string per
    text. The array all texts make is checked against ``max_bytes`` at every chunk, before it grows further."""

    def __init__(self, origin: Path, max_bytes: int | None) -> None:
        self.origin, self.max_bytes = origin, max_bytes
        self.chunks: list[np.ndarray] = []
        self.pending: list[str] = []
        self.codes = array("i")  # label indices: 4 bytes a text until y is made
        self.lines = array("q")  # each text's line (tsv, csv) or file number (text_folder): its source id
        self.names: dict[str, int] = {}
        self.count, self.width = 0, 1

    def add(self, text: str, name: str | None = None, where: int = 0) -> None:
        """One more text, with its label name unless the texts are unlabelled, and where it is (line, file number)."""
        self.pending.append(text)
        self.lines.append(where)
        if name is not None:
            self.codes.append(self.names.setdefault(name, len(self.names)))
        if len(self.pending) == CHUNK_TEXTS:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            chunk = np.array(self.pending, dtype=str)
            self.pending = []
            self.chunks.append(chunk)
            self.count += len(chunk)
            self.width = max(self.width, chunk.itemsize // 4)
        # a unicode array pads every text to the longest one, 4 bytes a character: one long text can cost gigabytes
        declared = self.count * self.width * 4
        if self.max_bytes is not None and declared > self.max_bytes:
            raise too_big(f"{self.origin}: {self.count:,} texts as an array", declared, self.max_bytes)

    def array(self) -> np.ndarray:
        """All texts as one unicode array (the chunks are let go as they are copied in)."""
        self._flush()
        x = np.empty(self.count, dtype=f"<U{self.width}")
        done = 0
        while self.chunks:
            chunk = self.chunks.pop(0)
            x[done : done + len(chunk)] = chunk
            done += len(chunk)
        return x

    def loaded(self, names: list[str] | None = None) -> Loaded:
        """The texts, int64 indices into the sorted class names, those names, and the source ids: ``FILE:LINE``, or
        ``names[where]`` when given (text_folder: the files' paths)."""
        self._flush()
        if not self.count:
            raise TrainflowError(f"{self.origin}: no texts")
        classes = tuple(sorted(self.names))
        if len(classes) < 2:
            raise TrainflowError(f"{self.origin}: only one class ({classes[0]!r}); a classifier needs at least two")
        rank = {name: i for i, name in enumerate(classes)}
        order = np.array([rank[name] for name in self.names], dtype=np.int64)  # first-appearance index → class
        where = np.frombuffer(self.lines, dtype=np.int64)
        ids = _line_ids(self.origin.name, where) if names is None else np.array(names)[where]
        y = order[np.frombuffer(self.codes, dtype=np.int32)]
        return Loaded(x=self.array(), y=y, classes=classes, ids=ids)


def _line_ids(name: str, lines: np.ndarray) -> np.ndarray:
    """``NAME:LINE`` for every line number, made a chunk at a time: no array of every number as a string first."""
    width = len(name) + 1 + len(str(int(lines.max(initial=0))))
    ids = np.empty(len(lines), dtype=f"<U{width}")
    for start in range(0, len(lines), CHUNK_TEXTS):
        ids[start : start + CHUNK_TEXTS] = np.char.add(f"{name}:", lines[start : start + CHUNK_TEXTS].astype(str))
    return ids


def _class_name(label: str, origin: str, checked: set[str]) -> str:
    """A label as read, its surrounding spaces stripped; refused if it holds an invisible or control character
    (each distinct label is checked once)."""
    if label not in checked:
        check_class_name(label, origin)
        checked.add(label)
    return label.strip()


def read_lines(
    path: Path, max_bytes: int | None = None, max_text_bytes: int | None = None
) -> tuple[list[str], np.ndarray]:
    """Unlabelled texts for batch prediction: a UTF-8 file, one text per line (blank lines skipped); their line
    numbers as ids."""
    ids: list[str] = []
    texts = _Texts(path, max_bytes)
    with _opened(path, "text", max_bytes) as file:
        for number, line in _lines(file, path, max_text_bytes):
            if line and not line.isspace():
                ids.append(str(number))
                texts.add(line)
    if not ids:
        raise TrainflowError(f"{path}: no texts (one per line)")
    return ids, texts.array()


def load_tsv(path: Path, max_bytes: int | None = None, max_text_bytes: int | None = None) -> Loaded:
    """``label<TAB>text`` lines (no header) → texts, labels and the sorted class names."""
    texts = _Texts(path, max_bytes)
    checked: set[str] = set()
    with _opened(path, "tsv", max_bytes) as file:
        for number, line in _lines(file, path, max_text_bytes):
            if not line or (line.isspace() and "\t" not in line):  # a blank line; a lone tab is a missing label
                continue
            name, tab, text = line.partition("\t")
            if not tab or not name.strip():
                raise TrainflowError(f"{path}:{number}: no label (expected label<TAB>text)")
            texts.add(text, _class_name(name, f"{path}:{number}", checked), number)
    return texts.loaded()


def _csv_lines(
    file: BinaryIO, origin: Path, record: list[str], max_text_bytes: int | None, max_text_lines: int | None
) -> Iterator[str]:
    """The CSV file's lines with their line breaks, for csv.reader; each is also appended to ``record`` (which the
    reader's caller empties before each record), and a record that spans more than ``max_text_lines`` lines or
    ``max_text_bytes`` bytes is refused before its next line is read."""
    size = 0
    for first, text in _blocks(file, origin, max_text_bytes):
        for number, line in enumerate(io.StringIO(text, newline=""), first):
            record.append(line)
            if len(record) == 1:
                size = 0
                yield line
                continue
            start = number - len(record) + 1
            if max_text_lines is not None and len(record) > max_text_lines:
                raise TrainflowError(
                    f"{origin}:{start}: a quoted field runs on past {max_text_lines:,} lines (data.max_text_lines); "
                    'an unbalanced "? (a field holding quotes is quoted as a whole, its quotes doubled)'
                )
            size += len(record[-2].encode())
            if max_text_bytes is not None and size + len(line.rstrip("\r\n").encode()) > max_text_bytes:
                raise _too_long(origin, start, "a CSV record", max_text_bytes)
            yield line


@contextmanager
def _field_size_limit(limit: int) -> Iterator[None]:
    """csv's field size limit (a process-wide setting) raised to ``limit`` while the block runs."""
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, limit))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _stray_quote(raw: str, origin: Path, start: int) -> TrainflowError | None:
    """The error for a record whose quotes break RFC 4180 (a quote inside an unquoted field), or None."""
    body = raw.removesuffix("\n").removesuffix("\r")
    if _RECORD.fullmatch(body):
        return None
    at = _RECORD.match(body).end()  # type: ignore[union-attr]  # it matches the empty string at least
    line, column = start + body.count("\n", 0, at), at - (body.rfind("\n", 0, at) + 1) + 1
    return TrainflowError(
        f'{origin}:{line}: a " inside an unquoted field at column {column}; a field holding quotes is quoted as a '
        "whole, its quotes doubled"
    )


def load_csv(
    path: Path,
    text_column: str,
    label_column: str,
    max_bytes: int | None = None,
    max_text_bytes: int | None = None,
    max_text_lines: int | None = None,
) -> Loaded:
    """A CSV file with a header row → the texts of ``text_column`` labelled by ``label_column``."""
    texts = _Texts(path, max_bytes)
    checked: set[str] = set()
    record: list[str] = []
    columns: list[str] | None = None
    limit = max_text_bytes or max_bytes or 2**62
    with _opened(path, "csv", max_bytes) as file, _field_size_limit(limit + 2):
        reader = csv.reader(_csv_lines(file, path, record, max_text_bytes, max_text_lines), strict=True)
        while True:
            record.clear()
            start = reader.line_num + 1  # line_num counts the lines read so far: a quoted field can span several
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise _malformed(path, start, reader.line_num, exc) from None
            raw = record[0] if len(record) == 1 else "".join(record)
            if '"' in raw and (stray := _stray_quote(raw, path, start)) is not None:
                raise stray
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
            if len(row) != len(columns):
                raise TrainflowError(f"{path}:{start}: {len(row)} fields, the header names {len(columns)}")
            if not row[label_at].strip():
                raise TrainflowError(f"{path}:{start}: no label (column {label_column!r} is empty)")
            texts.add(row[text_at], _class_name(row[label_at], f"{path}:{start}", checked), start)
    return texts.loaded()


def _malformed(path: Path, start: int, line: int, exc: csv.Error) -> TrainflowError:
    """A csv.Error as one line naming the line where the record starts."""
    if "unexpected end of data" in str(exc):
        return TrainflowError(
            f'{path}:{start}: a quoted field opened in this record is never closed (an unbalanced "); a field '
            "holding quotes is quoted as a whole, its quotes doubled"
        )
    where = f" at line {line}" if line != start else ""
    return TrainflowError(
        f"{path}:{start}: malformed CSV ({exc}{where}); a field holding quotes is quoted as a whole, its quotes doubled"
    )


def load_text_folder(root: Path, max_bytes: int | None = None, max_text_bytes: int | None = None) -> Loaded:
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
            size = file.stat().st_size
            if max_text_bytes is not None and size > max_text_bytes:
                raise TrainflowError(
                    f"{file}: {size:,} bytes, more than data.max_text_bytes ({max_text_bytes:,}) for one text; "
                    "refused unread; raise data.max_text_bytes if the texts are that long"
                )
            total += size
            files.append((file, folder.name))
    if max_bytes is not None and total > max_bytes:
        raise too_big(f"{root}: {len(files):,} files", total, max_bytes)
    texts = _Texts(root, max_bytes)
    for number, (file, name) in enumerate(files):  # a .txt file is one text: its line breaks, \r too, are its own
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise TrainflowError(f"{file}: cannot read ({exc.strerror or exc})") from None
        texts.add(_decode(data.removeprefix(codecs.BOM_UTF8), file).rstrip(), name, number)
    return texts.loaded([file.relative_to(root).as_posix() for file, _ in files])
