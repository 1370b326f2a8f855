"""File-system helpers shared by writers and checkpoints."""

from __future__ import annotations

import contextlib
import os
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


def write_csv(frame: "pd.DataFrame", path: str | Path, index: bool = False) -> None:
    """A DataFrame as CSV, written atomically."""
    with atomic_write(path) as tmp:
        frame.to_csv(tmp, index=index)
