"""OUT/.scan-state: what a scan has committed, and the only list of files it may delete.

The state holds the run's parameters and model, the plan (output order and folders that
could not be read), and one JSON record per finished recording with the file's
fingerprint and the outputs written for it. Everything is JSON or Parquet: nothing here
is ever unpickled.

Two rules follow from it:
- a recording counts as done only when its record landed (parts and tables first, the
  record last, each written atomically), and only while the file's fingerprint still matches;
- ``--overwrite`` and the clean-up of recordings that left the plan delete exactly the
  files a record or the manifest names, never anything else in OUT.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .fsutil import atomic_write, safe_relative, write_json
from .scan_plan import Recording, ScanError
from .writers import get_writer, write_parquet

if TYPE_CHECKING:
    from .scan_stage import StagedResult

logger = logging.getLogger(__name__)

STATE_DIR = ".scan-state"
TOP_OUTPUTS = ("detections.parquet", "windows.parquet", "failures.csv", "recordings.csv", "run.json")
OUTPUT_DIRS = ("raven", "plots")
PER_RECORDING_WRITERS = ("raven",)  # tables written beside the Parquet for every recording
_PARAMS, _PLAN, _EXTRA = "params.json", "plan.json", "extra_outputs.json"
# Parameters older scans recorded that no longer decide a resume. ``model_path``: the model is
# named by its weights' digest (``params["model"]``), so the same weights found at another path
# (the bundled model after a reinstall into another environment, a moved run folder) resume.
FORMER_PARAMS = ("model_path",)


def now() -> str:
    """UTC now, ISO 8601 to the second, for run.json and the state."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, value: Any) -> None:
    write_json(path, value, sort_keys=True)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def per_recording_output(writer: str, rel: str) -> str:
    """Where a per-recording table of ``rel`` goes, relative to OUT (always under its folder)."""
    return f"{writer}/{safe_relative(rel)}{get_writer(writer).suffix}"


class ScanState:
    """The scan state of one output folder (see the module docstring)."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.dir = self.out / STATE_DIR

    # -- the run ---------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.dir / _PARAMS).is_file()

    def meta(self) -> dict[str, Any]:
        """params.json: {"params", "model", "started"}."""
        return json.loads((self.dir / _PARAMS).read_text())

    def params(self) -> dict[str, Any]:
        return self.meta()["params"]

    def foreign_outputs(self) -> list[str]:
        """Files in OUT under the names a scan writes, when no scan state claims them."""
        found = [name for name in TOP_OUTPUTS if (self.out / name).exists()]
        for folder in OUTPUT_DIRS:
            if (self.out / folder).is_dir():
                found += [p.relative_to(self.out).as_posix() for p in sorted((self.out / folder).rglob("*")) if not p.is_dir()]
        return found

    def begin(self, params: dict[str, Any], model: dict[str, Any], overwrite: bool) -> None:
        """Start or resume. A different-parameter scan is refused unless ``overwrite`` (which
        deletes only this tool's files); OUT files no scan state claims are never touched."""
        replaced = overwrite and self.exists()
        if replaced:
            self.clear()
        if self.exists():
            meta = self.meta()
            saved = {k: v for k, v in meta["params"].items() if k not in FORMER_PARAMS}
            if saved != params:
                if not self.keys():  # nothing committed yet: nothing to protect
                    logger.info("%s: replacing the parameters of a scan that committed nothing", self.out)
                    _write_json(self.dir / _PARAMS, {"params": params, "model": model, "started": now()})
                    return
                diff = sorted(k for k in set(saved) | set(params) if saved.get(k) != params.get(k))
                raise ScanError(f"{self.out} holds a scan made with different parameters (differs: {', '.join(diff)}); "
                                "rerun with the same options to resume, or pass --overwrite to replace that scan's "
                                "files (only files primate-monitor wrote are deleted)")
            if meta.get("model") != model:  # the same weights, found at another path (a reinstall)
                _write_json(self.dir / _PARAMS, meta | {"model": model})
            return
        foreign = self.foreign_outputs()
        if foreign and replaced:  # this scan's own files are gone; the rest is someone's and stays where it is
            logger.warning("%s: keeping %d file(s) primate-monitor did not write: %s", self.out, len(foreign),
                           ", ".join(foreign[:5]))
        elif foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise ScanError(f"{self.out} already holds {shown}, which no primate-monitor scan in this folder wrote; "
                            "primate-monitor never deletes files it did not write, so pick another -o or move them away")
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.dir / _PARAMS, {"params": params, "model": model, "started": now()})

    def update_params(self, params: dict[str, Any]) -> None:
        """New parameters for the committed results (``detect`` rewrote them in place)."""
        _write_json(self.dir / _PARAMS, self.meta() | {"params": params})

    def set_plan(self, keys: Sequence[str], folder_errors: Sequence[tuple[str, str]]) -> None:
        """Remember the output order (recording keys) and the unreadable folders, so outputs can be
        rebuilt from the state alone (``detect``) in the order the scan wrote them."""
        _write_json(self.dir / _PLAN, {"keys": list(keys), "folder_errors": [list(e) for e in folder_errors]})

    def plan(self) -> tuple[list[str], list[tuple[str, str]]]:
        """(keys in output order, unreadable folders); a scan from before plans were stored is
        ordered as its recordings.csv."""
        path = self.dir / _PLAN
        if not path.is_file():
            table = pd.read_csv(self.out / "recordings.csv", keep_default_na=False)
            return [Recording(rel, Path(p)).key for rel, p in zip(table["recording"], table["path"])], []
        saved = json.loads(path.read_text())
        return saved["keys"], [tuple(e) for e in saved["folder_errors"]]

    # -- recordings ------------------------------------------------------------------------
    def keys(self) -> set[str]:
        """Keys of every committed record."""
        return {p.name[:-5] for p in self.dir.glob("*.json") if p.name not in (_PARAMS, _PLAN, _EXTRA)}

    def record(self, key: str) -> dict[str, Any] | None:
        path = self.dir / f"{key}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def part(self, key: str, name: str) -> Path:
        return self.dir / f"{key}.{name}.parquet"

    def is_current(self, rec: Recording, record: dict[str, Any] | None, windows: bool = False) -> bool:
        """Done and still valid: committed, not failed, its parts on disk (``windows``: the window
        scores too), and the file unchanged since."""
        if record is None or record["status"] == "failed" or record.get("fingerprint") != rec.fingerprint():
            return False
        return all(self.part(rec.key, name).is_file() for name in ("events", "windows")[: 1 + windows])

    def write_tables(self, rel: str, events: pd.DataFrame) -> list[list]:
        """The per-recording tables of one recording; returns [path relative to OUT, size,
        mtime_ns] of each, so a table a person edited later is recognised and not deleted."""
        written = []
        for name in PER_RECORDING_WRITERS:
            target = per_recording_output(name, rel)
            path = get_writer(name)().write(events, self.out / target)
            st = path.stat()
            written.append([target, st.st_size, st.st_mtime_ns])
        return written

    def commit(self, rec: Recording, record: dict[str, Any], events: pd.DataFrame | None,
               windows: pd.DataFrame | None) -> None:
        """Parts and tables first, the JSON record last: a recording is done only once all landed."""
        outputs: list[str] = []
        if events is not None:
            write_parquet(events, self.part(rec.key, "events"), {})
            outputs = self.write_tables(rec.rel, events)
        if windows is not None:
            with atomic_write(self.part(rec.key, "windows")) as tmp:
                windows.to_parquet(tmp, index=False)
        _write_json(self.dir / f"{rec.key}.json", record | {"outputs": outputs})

    def commit_staged(self, staged: "StagedResult") -> None:
        """As ``commit``, for parts a worker wrote to the stage folder: each renamed into place
        (the same file system, so atomic), the tables written from the staged events, then the
        JSON record last."""
        import os

        from .writers import read_parquet

        rec, outputs = staged.rec, []
        if staged.events is not None:
            target = self.part(rec.key, "events")
            os.replace(staged.events, target)
            outputs = self.write_tables(rec.rel, read_parquet(target))
        if staged.windows is not None:
            os.replace(staged.windows, self.part(rec.key, "windows"))
        _write_json(self.dir / f"{rec.key}.json", staged.record | {"outputs": outputs})

    def stage_folder(self) -> Path:
        """Where workers write parts for the client to commit (``scan_stage``), emptied of
        what an interrupted run left and created."""
        folder = self.clear_staged()
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def clear_staged(self) -> Path:
        """Delete staged parts no one will commit (ours by name; other files stay); returns
        the stage folder."""
        from .scan_stage import clear_stale, stage_dir

        folder = stage_dir(self.dir)
        clear_stale(folder)
        return folder

    def forget(self, key: str) -> None:
        """Drop a recording's record (first, so it is no longer done), parts and tables."""
        record = self.record(key)
        _unlink(self.dir / f"{key}.json")
        for name in ("events", "windows"):
            _unlink(self.part(key, name))
        outputs = (record or {}).get("outputs")
        if outputs is None and record is not None and record["status"] != "failed":  # a record of an older version
            outputs = [per_recording_output(name, record["recording"]) for name in PER_RECORDING_WRITERS]
        for target in outputs or []:
            self._remove_output(target)
        self._prune_empty_dirs()

    def _remove_output(self, entry: str | list) -> None:
        """Delete a file this scan wrote; one changed since (a Raven table someone reviewed) is
        renamed aside instead, so no one's work is lost and the name is free for the new table."""
        target, *written = [entry] if isinstance(entry, str) else entry
        path = self.out / target
        try:
            st = path.stat()
        except FileNotFoundError:
            return
        if written and [st.st_size, st.st_mtime_ns] != written:
            kept = path.with_name(f"{path.name}.edited-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}")
            path.rename(kept)
            logger.warning("%s changed since primate-monitor wrote it; kept as %s", path, kept.name)
            return
        path.unlink()

    # -- files written outside the per-recording commits -----------------------------------
    def add_outputs(self, paths: Iterable[Path]) -> None:
        """Name more files this scan wrote (plots), so --overwrite may delete them later."""
        extra = set(self._extra()) | {Path(p).relative_to(self.out).as_posix() for p in paths}
        _write_json(self.dir / _EXTRA, sorted(extra))

    def _extra(self) -> list[str]:
        path = self.dir / _EXTRA
        return json.loads(path.read_text()) if path.is_file() else []

    def clear(self) -> None:
        """Delete this scan's files, and only those: the ones its records and manifest name,
        the run-level outputs, then folders this left empty, then the state itself."""
        for key in self.keys():
            self.forget(key)
        for target in self._extra():
            _unlink(self.out / target)
        for name in TOP_OUTPUTS:
            _unlink(self.out / name)
        for name in (_PARAMS, _PLAN, _EXTRA):
            _unlink(self.dir / name)
        for leftover in self.dir.glob(".*.tmp"):  # our atomic_write temps, left by a kill -9
            _unlink(leftover)
        staged = self.clear_staged()
        try:
            staged.rmdir()
        except OSError:  # absent, or holding files that are not ours
            pass
        self._prune_empty_dirs()
        try:
            self.dir.rmdir()
        except OSError:
            logger.warning("%s holds files primate-monitor did not write; left in place", self.dir)

    def _prune_empty_dirs(self) -> None:
        for folder in OUTPUT_DIRS:
            root = self.out / folder
            if not root.is_dir():
                continue
            for sub in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                if not any(sub.iterdir()):
                    sub.rmdir()
            if not any(root.iterdir()):
                root.rmdir()
