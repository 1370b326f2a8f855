"""Read Raven Pro selection tables (tab-separated .txt, or comma-separated exports)."""

from __future__ import annotations

import logging
from pathlib import Path

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


def read_selection_table(path: str | Path) -> pd.DataFrame:
    """Read a selection table; "Begin Time (s)"/"End Time (s)" as float64 s, other columns as str.

    The separator (tab or comma) is taken from the header line; column names
    are stripped of a BOM and whitespace. Empty cells are "" in str columns.
    """
    path = Path(path)
    header, encoding = _read_text(path)
    sep = "\t" if header.count("\t") >= header.count(",") else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, encoding=encoding, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"{path}: not a selection table ({e})") from e
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
            rows = (table.index[table[col].isna()] + 2).tolist()  # 1-based, after the header line
            raise ValueError(f"{path}: column {col!r} is empty on line(s) {rows}")
    return table
