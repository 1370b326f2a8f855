"""Parts that workers write to the output folder, for the client to commit by renaming.

Why: on a cluster, a result returned to the client travels through the scheduler, and with
``--save-window-scores`` that is every window score of every recording. When the workers see
the output folder (shared storage on a SLURM or PBS cluster; the same disk for ``local:N`` and
``processes``), each writes its finished recording's events and window scores, or a piece's
scores, into ``OUT/.scan-state/staged/`` and returns only their names. The client commits
them as before, in one place and once (``ScanState.commit_staged``): a rename into the
state, then the Raven table, then the JSON record. A worker that cannot see that folder
returns its parts in the result instead, so a cluster without shared storage still works.

Every staged file name holds a fresh random token, so a task that is retried, or that runs
twice, never overwrites another attempt's file. Files left by a worker or client killed
between writing and committing are this tool's own (their names say so) and are deleted when
the next run starts (``clear_stale``); nothing else in the folder is touched.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .fsutil import atomic_write
from .scan_plan import Recording

logger = logging.getLogger(__name__)

STAGE_DIR = "staged"  # under OUT/.scan-state
_NAME = re.compile(r"^[0-9a-f]{16}(-[0-9]+)?\.[0-9a-f]{32}\.(events\.parquet|windows\.parquet|piece\.npz)$")


def stage_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / STAGE_DIR


def staged_name(key: str, kind: str) -> str:
    """``<task key>.<random token>.<kind>``: unique per attempt, recognisably ours."""
    return f"{key}.{uuid.uuid4().hex}.{kind}"


def is_staged_name(name: str) -> bool:
    return bool(_NAME.match(name))


@dataclass
class StagedResult:
    """A finished recording whose parts a worker wrote to the stage folder: what the client
    needs to commit it (record, and the staged files' paths; None where there is no part)."""

    rec: Recording
    record: dict[str, Any]
    events: str | None
    windows: str | None

    @property
    def audio_seconds(self) -> float:
        return float(self.record.get("duration_s") or 0.0)

    def paths(self) -> list[Path]:
        return [Path(p) for p in (self.events, self.windows) if p]


def stage_result(result: Any, folder: Path) -> StagedResult:
    """Write a ``RecordingResult``'s events and window scores into ``folder`` (atomically each)."""
    from .writers import write_parquet

    events = windows = None
    if result.events is not None:
        events = folder / staged_name(result.rec.key, "events.parquet")
        write_parquet(result.events, events, {})
    if result.windows is not None:
        windows = folder / staged_name(result.rec.key, "windows.parquet")
        with atomic_write(windows) as tmp:
            result.windows.to_parquet(tmp, index=False)
    return StagedResult(result.rec, result.record, str(events) if events else None,
                        str(windows) if windows else None)


def stage_piece_scores(key: str, starts: np.ndarray, scores: np.ndarray, folder: Path) -> str:
    """A piece's window starts and scores as one ``.npz`` (plain arrays, read without pickle)."""
    path = folder / staged_name(key, "piece.npz")
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, starts=starts, scores=scores)
    return str(path)


def load_piece_scores(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return data["starts"], data["scores"]


def remove(paths: list[Path] | list[str]) -> None:
    """Delete staged files of ours (a duplicate result, or a piece after its merge)."""
    for p in paths:
        p = Path(p)
        if is_staged_name(p.name):
            p.unlink(missing_ok=True)


def clear_stale(folder: Path) -> int:
    """Delete staged files a killed run left behind (and our atomic-write temps there); returns
    how many. Files whose names are not ours stay."""
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.iterdir():
        if p.is_file() and (is_staged_name(p.name) or (p.name.startswith(".") and p.name.endswith(".tmp")
                                                      and is_staged_name(p.name[1:].rsplit(".", 2)[0]))):
            p.unlink(missing_ok=True)
            n += 1
    if n:
        logger.info("%s: removed %d staged part(s) that an interrupted run left uncommitted", folder, n)
    return n
