"""Read Raven Pro selection tables (tab-separated .txt, or comma-separated exports)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)")
BEGIN_COLUMN = "Begin Time (s)"
END_COLUMN = "End Time (s)"
# Raven writes UTF-8 (sometimes with a BOM); older Windows installs write cp1252.
_ENCODINGS = ("utf-8-sig", "cp1252")


def _read_text(path: Path) -> tuple[str, str]:
    """(header line, encoding) of the table."""
    raw = path.read_bytes()
    for i, encoding in enumerate(_ENCODINGS):
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            continue
        if i > 0:
            logger.warning("%s: not UTF-8, read as %s", path, encoding)
        return text.splitlines()[0] if text else "", encoding
    raise ValueError(f"{path}: cannot decode as any of {_ENCODINGS}")


def file_lines(table: pd.DataFrame) -> np.ndarray:
    """The line in its file (header = line 1) of each row of a table ``read_selection_table``
    read; rows after a blank line are not at position + 2. Other frames: position + 2."""
    lines = table.attrs.get("file_lines")
    return np.asarray(lines) if lines is not None and len(lines) == len(table) else np.arange(2, len(table) + 2)


def table_lines(mask: "pd.Series", table: pd.DataFrame, limit: int = 5) -> str:
    """The file lines (``file_lines``) of the rows of ``table`` where ``mask`` holds, for messages."""
    lines = file_lines(table)[mask.to_numpy()].tolist()
    return ", ".join(map(str, lines[:limit])) + (f" and {len(lines) - limit} more" if len(lines) > limit else "")


def check_times(table: pd.DataFrame, path: str | Path) -> None:
    """Raise ValueError naming ``path`` and its lines if a selection's times cannot be real:
    not finite, before 0, or ending before it begins. Why: such a row matched nothing, or was
    clamped into a window at 0 s, and the numbers that came out looked plausible."""
    begin, end = table[BEGIN_COLUMN], table[END_COLUMN]
    for mask, what in ((~np.isfinite(begin) | ~np.isfinite(end), "a time that is not a finite number"),
                       ((begin < 0) | (end < 0), "a time before 0 s"),
                       (end < begin, "an end before its begin")):
        if mask.any():
            raise ValueError(f"{path}: {what} on line(s) {table_lines(mask, table)}")


def read_selection_table(path: str | Path) -> pd.DataFrame:
    """Read a selection table; "Begin Time (s)"/"End Time (s)" as float64 s, other columns as str.

    The separator (tab or comma) is taken from the header line; column names
    are stripped of a BOM and whitespace. Empty cells are "" in str columns. Blank lines (and
    lines of separators only, as spreadsheets leave) are skipped; ``file_lines`` gives each
    row's line in the file, so that messages name the line a person sees.
    """
    path = Path(path)
    header, encoding = _read_text(path)
    sep = "\t" if header.count("\t") >= header.count(",") else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, encoding=encoding, keep_default_na=False,
                            skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"{path}: not a selection table ({e})") from e
    blank = (table.apply(lambda col: col.str.strip()) == "").all(axis=1).to_numpy() if len(table.columns) else \
        np.zeros(len(table), dtype=bool)
    lines = np.arange(2, len(table) + 2)[~blank]
    table = table[~blank].reset_index(drop=True)
    table.attrs["file_lines"] = tuple(int(n) for n in lines)  # a tuple: pandas compares attrs (merge)
    table.columns = [str(c).replace("\ufeff", "").strip() for c in table.columns]
    missing = [c for c in (BEGIN_COLUMN, END_COLUMN) if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; columns found: {list(table.columns)}")
    for col in (BEGIN_COLUMN, END_COLUMN):
        try:
            table[col] = pd.to_numeric(table[col].str.strip(), errors="raise").astype("float64")
        except ValueError as e:
            raise ValueError(f"{path}: column {col!r} has a non-numeric value ({e})") from e
        if table[col].isna().any():
            rows = file_lines(table)[table[col].isna().to_numpy()].tolist()
            raise ValueError(f"{path}: column {col!r} is empty on line(s) {rows}")
    return table
