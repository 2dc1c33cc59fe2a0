"""What the image sources (tasks/lib/sources.py) and text sources (tasks/lib/text_sources.py) share: the loaded
result, the size refusal and the checks on a data folder's files. Both import it; it imports neither.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.lib.errors import TrainflowError


@dataclass(frozen=True)
class Loaded:
    """What a source yields: all images, or its own train and test sets, and class names if it has them.

    ``ids`` (``ids_test``): each item's source identity, a unicode array (a file path, ``FILE:INDEX`` in an array
    file, ``FILE:LINE`` in a text file); None numbers them ``0..N-1`` (``test:0..`` for the test set)."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    classes: tuple[str, ...] | None = None
    ids: np.ndarray | None = None
    ids_test: np.ndarray | None = None


def numbered(prefix: str, n: int) -> np.ndarray:
    """Source ids ``PREFIX0..PREFIX{n-1}``: the items' indices in an array (``prefix`` names the array)."""
    return np.char.add(prefix, np.arange(n).astype(str)) if n else np.zeros(0, dtype="<U1")


def too_big(origin: str, declared: int, max_bytes: int) -> TrainflowError:
    """The error for data declaring more bytes than ``data.max_bytes``."""
    return TrainflowError(
        f"{origin}: declares {declared:,} bytes of data, more than data.max_bytes ({max_bytes:,}); "
        "raise data.max_bytes if the machine has the memory"
    )


# Unicode categories a class name may not hold: controls (NUL, tab, newline, …), format characters (zero-width space,
# joiners, bidirectional marks, soft hyphen, byte-order mark), line and paragraph separators, and surrogates (the
# undecodable bytes of a folder name). They are invisible, or break the files and pages that show the name.
INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def check_class_name(name: str, origin: str) -> None:
    """Refuse a class name holding an invisible or control character, naming it.

    Raises:
        TrainflowError: ``origin`` (the file and line, or the folder), the name as repr and the character.
    """
    for char in name:
        if unicodedata.category(char) in INVISIBLE:
            what = " ".join(filter(None, (f"U+{ord(char):04X}", unicodedata.name(char, ""))))
            raise TrainflowError(
                f"{origin}: class name {name!r} holds {char!r} ({what}), an invisible or control character; "
                "rename the class"
            )


def unsafe(file: Path, real_root: Path, root: Path) -> str | None:
    """Why ``file`` must not be opened, or None: outside the data folder through a symlink, not a regular file."""
    if os.path.commonpath([real_root, file.resolve()]) != str(real_root):
        return f"{file}: symlink points outside the data folder {root}"
    if not file.is_file():  # a FIFO would block the read forever; a device or socket holds no data either
        return f"{file}: not a regular file (a FIFO, device or socket); refused without opening it"
    return None


def visible_files(folder: Path) -> list[Path]:
    """The files of ``folder`` (not sub-folders), hidden ones left out, sorted."""
    return sorted(f for f in folder.iterdir() if not f.name.startswith(".") and not f.is_dir())
