"""File-system helpers shared by writers and checkpoints."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import unicodedata
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import pandas as pd


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it over ``path``.

    Readers never see a half-written file: the temp file is in the same folder
    (so os.replace is atomic on one file system) and is fsync'ed first. If the
    body raises, the temp file is removed and ``path`` is left untouched. The
    temp name starts with "." so folder scans skip it. The body creates the
    file itself (so the umask applies as for any new file).
    """
    path = Path(path)
    check_output_file(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # some writers (safetensors) create files 0600
        os.replace(tmp, path)
    except BaseException:  # clean up on any exit, including KeyboardInterrupt, then re-raise
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def check_output_file(path: str | Path) -> None:
    """Raise an OSError naming ``path`` (not a temp file) if a file cannot be written there: it
    is a folder, or its folder does not exist. Commands that write one file (``-o F``) call this
    before any work, so a wrong ``-o`` fails at once instead of after other outputs were written."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder; give a file name", str(path))
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {printable(str(path))}: its folder {printable(str(path.parent))} does not exist")


def write_csv(frame: "pd.DataFrame", path: str | Path, index: bool = False) -> None:
    """A DataFrame as CSV, written atomically."""
    with atomic_write(path) as tmp:
        frame.to_csv(tmp, index=index)


def write_json(path: str | Path, value: object, sort_keys: bool = False) -> None:
    """``value`` as indented JSON (UTF-8, one trailing newline), written atomically: every JSON
    file the tool writes (run.json, metrics, review.json, scan and embed state) goes through
    here, so they share one format. Values JSON does not know (dates, paths) are written as
    text."""
    with atomic_write(path) as tmp:
        Path(tmp).write_text(json.dumps(value, indent=2, sort_keys=sort_keys, default=str) + "\n", encoding="utf-8")


class OutputDirError(ValueError):
    """An output folder that cannot be used: a file is in the way, or it cannot be written."""


def ensure_output_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) and prove it is writable, before any work starts.

    Checking up front turns a late traceback (after minutes of scanning or training)
    into an immediate message that names the folder and the reason.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"output {path} exists and is not a folder; pass a folder path with -o")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test.{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputDirError(f"cannot write to output folder {path}: {e.strerror or e}") from e
    return path


def printable(text: str) -> str:
    """``text`` with bytes that are not UTF-8 and control characters (tab, newline, ...) shown as
    backslash escapes, so it can go into a TSV cell, a Parquet string or a JSON record.

    File names on Linux are bytes: a name may hold a tab or invalid UTF-8, and such a name
    must neither abort a run nor break a table. The escaped form is unique for ordinary names
    and readable by a person.
    """
    decoded = os.fsencode(text).decode("utf-8", "backslashreplace")
    return "".join(ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) == "Cc" else ch
                   for ch in decoded)


def from_printable(text: str) -> str:
    """The file name ``printable`` made ``text`` from (its backslash escapes turned back into
    bytes). Why: review writes a recording's path in its printable form, so a name with a tab or
    invalid UTF-8 must be mapped back to the real file when the table is read again. Callers try
    it only when ``text`` itself names no file: a real name may hold a backslash, and a C1
    control character (U+0080-U+009F) is escaped like the invalid byte of the same value."""
    import codecs

    return os.fsdecode(codecs.escape_decode(text.encode("utf-8"))[0])


def safe_relative(name: str) -> str:
    """A relative posix path that stays under its output folder: no absolute root, no ``..``
    or ``.`` parts, printable (see ``printable``). Names come from data (a Parquet column), so
    ``../../etc/x`` or ``/tmp/x`` must not choose where a file is written."""
    parts = [p for p in printable(name).split("/") if p not in ("", ".")]
    parts = ["__" if p == ".." else p for p in parts]
    if not parts:
        raise ValueError(f"recording name {name!r} gives no usable output file name")
    return "/".join(parts)
