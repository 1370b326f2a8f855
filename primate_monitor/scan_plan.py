"""Plan a scan: which recordings, under which output names, in which state on disk.

A recording is known by its output name (``rel``, relative to the scanned folder) and by
its fingerprint (size and modification time). The fingerprint is what lets a resumed scan
notice a file that changed after it was scanned, e.g. one still being copied the first
time, as BirdNET-Analyzer's journal does.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from .audio import find_audio_files
from .fsutil import printable


class ScanError(ValueError):
    """A scan that must not start (collisions, parameters differing from OUT's scan)."""


@dataclass(frozen=True, slots=True)
class Recording:
    """One file to scan. ``rel`` is printable (see fsutil.printable) and names its outputs;
    ``path`` is absolute but not resolved (a symlink keeps its own name).

    A plan holds one per file, so it is kept small: slots, and the path as text (a Path
    object is made when asked for). 224 instead of 486 bytes a recording, about 0.2 GB
    for a million files (issue 10)."""

    rel: str
    location: str  # os.fspath of the path; Recording(rel, Path(...)) is accepted too

    def __post_init__(self) -> None:
        if not isinstance(self.location, str):
            object.__setattr__(self, "location", os.fspath(self.location))

    def __reduce__(self):  # slots + frozen: pickle (Dask, processes) through the constructor
        return (Recording, (self.rel, self.location))

    @property
    def path(self) -> Path:
        return Path(self.location)

    @property
    def key(self) -> str:
        """Short stable id of the output name: the file names of its parts in the scan state."""
        return hashlib.sha1(self.rel.encode()).hexdigest()[:16]

    @property
    def display_path(self) -> str:
        """The absolute path as text that any table can hold."""
        return printable(self.location)

    def fingerprint(self) -> dict[str, int] | None:
        """Size and mtime (ns) of the file now; None when it cannot be stat'ed (gone, broken link)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass
class Plan:
    """The recordings of a scan, in output order, and the folders that could not be listed."""

    recordings: list[Recording]
    folder_errors: list[tuple[str, str]] = field(default_factory=list)  # (printable folder, reason)


def plan_recordings(paths: list[str | Path]) -> Plan:
    """Every audio file under ``paths``, named relative to its folder argument (or, for several
    arguments, to their common folder) so names are unique and mirror the input.

    Names are never resolved through symlinks (a link to a file elsewhere is scanned under the
    link's name), and are made printable, so no file name can stop a run.
    """
    errors: list[tuple[Path, str]] = []
    found = find_audio_files(paths, errors)
    folder_errors = [(printable(str(f)), reason) for f, reason in errors]
    files = list(dict.fromkeys(p for _, p in found))
    if not files:
        if folder_errors:
            raise ScanError("no audio files found; folders that could not be read: "
                            + "; ".join(f"{f} ({r})" for f, r in folder_errors))
        raise ScanError(f"no audio files found under {', '.join(printable(str(p)) for p in paths)}")
    roots = {root for root, _ in found}
    base = next(iter(roots)) if len(roots) == 1 else Path(os.path.commonpath([str(p.parent) for p in files]))
    recordings = [Recording(printable(Path(os.path.relpath(p, base)).as_posix()), p) for p in files]
    seen: dict[str, str] = {}
    for r in recordings:
        if r.rel in seen:
            raise ScanError(f"two inputs would share the output name {r.rel!r}: {printable(seen[r.rel])} "
                            f"and {r.display_path}; scan them into separate output folders")
        seen[r.rel] = r.location
    return Plan(recordings, folder_errors)
