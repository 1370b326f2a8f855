"""Labelled clips in three layouts, decoded once and cached.

- ``compare``: the ComParE 2021 layout, ``ROOT/wav/*.wav`` plus ``ROOT/lab/<split>.csv``
  with columns ``filename,label`` (``?`` means unlabelled, as in the challenge's test split).
- ``folders``: ``ROOT/<class>/*.wav`` or ``ROOT/<split>/<class>/*.wav``.
- ``raven``: long recordings with Raven selection tables beside them; each selection
  becomes a clip, and unannotated stretches can become the reject class.

Without a devel split (folders or raven without split folders), a seeded
``devel_fraction`` of the recordings is held out, by recording so nothing leaks.
"""

from __future__ import annotations

import logging
import math
import os
import unicodedata
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .audio import AudioReadError, find_audio_files, probe
from .config import TrainConfig
from .fsutil import from_printable, printable
from .raven import file_lines, read_selection_table

logger = logging.getLogger(__name__)

UNLABELLED = "?"
SPLIT_NAMES = ("train", "devel", "test")


class DataError(ValueError):
    """Labelled data that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class Clip:
    """One labelled stretch of audio: a whole file, or [start_s, end_s) of a long one."""

    path: Path
    label: str
    start_s: float = 0.0
    end_s: float | None = None  # None: to the end of the file

    @property
    def name(self) -> str:
        """The name shown in predictions: the file name, plus the stretch for Raven clips."""
        if self.end_s is None and self.start_s == 0.0:
            return self.path.name
        return f"{self.path.name}@{self.start_s:.3f}-{self.end_s:.3f}"


Splits = dict[str, list[Clip]]

# Unicode categories refused in a class label: control (tab, newline, CR, ...), format
# (zero-width and bidi marks), surrogates (undecodable bytes), line and paragraph separators
_BAD_LABEL_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}
_CHAR_NAMES = {"\t": "tab", "\n": "newline", "\r": "carriage return"}


def _char_name(ch: str) -> str:
    name = _CHAR_NAMES.get(ch) or unicodedata.name(ch, "").lower()
    return f"{name} U+{ord(ch):04X}" if name else f"U+{ord(ch):04X}"


def check_label(label: str, where: str) -> str:
    """Return ``label`` if it can name a class, else raise DataError naming ``where``.

    Why: a class name ends up in Raven tables (tab-separated), CSV rows, plot titles and
    file names. An empty label becomes a blank species, and a tab, newline or other control
    character breaks those files at scan time, long after training accepted it.
    """
    if not label:
        raise DataError(f"{where}: empty class label")
    bad = sorted({ch for ch in label if unicodedata.category(ch) in _BAD_LABEL_CATEGORIES})
    if bad:
        names = ", ".join(map(_char_name, bad))
        raise DataError(f"{where}: class label {label!r} contains a control character ({names}); rename the class")
    return label


def detect_format(root: Path) -> str:
    """Guess the layout: ``lab/`` means compare; selection tables mean raven; else folders."""
    if (root / "lab").is_dir() or (root / "wav").is_dir():
        return "compare"
    if any(_is_selection_table(p) for p in root.rglob("*") if p.suffix.lower() in (".txt", ".csv")):
        return "raven"
    return "folders"


def load_splits(root: str | Path, config: TrainConfig) -> Splits:
    """Read every split of a labelled data set; classes are checked by ``check_classes``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    fmt = config.data_format if config.data_format != "auto" else detect_format(root)
    loaders = {"compare": load_compare, "folders": load_folders, "raven": load_raven}
    splits = loaders[fmt](root, config)
    logger.info("data %s (%s layout): %s", root, fmt, {k: len(v) for k, v in splits.items()})
    return splits


def load_compare(root: Path, config: TrainConfig) -> Splits:
    lab = root / "lab"
    if not lab.is_dir():
        raise DataError(f"{root}: missing lab/ folder with train.csv and devel.csv (ComParE layout)")
    splits: Splits = {}
    for csv in sorted(lab.glob("*.csv")):
        try:
            table = pd.read_csv(csv, dtype=str, keep_default_na=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{csv}: cannot read label file: {e}") from e
        missing = {"filename", "label"} - set(table.columns)
        if missing:
            raise DataError(f"{csv}: missing column(s) {sorted(missing)}; expected filename,label")
        if table.empty and csv.stem in (config.train_split, config.devel_split):
            raise DataError(f"{csv}: label file lists no clips (split {csv.stem!r} is empty)")
        clips = []
        for row, (f, lab_) in enumerate(zip(table["filename"], table["label"]), start=1):
            where = f"{csv}, row {row} (filename {f!r})"
            clips.append(Clip(_clip_path(root, f.strip(), where), check_label(lab_.strip(), where)))
        splits[csv.stem] = clips
    if not splits:
        raise DataError(f"{lab}: no label files (expected {config.train_split}.csv, {config.devel_split}.csv)")
    for name in (config.train_split, config.devel_split):
        if name not in splits:
            logger.info("%s: no %s.csv", lab, name)
    return splits


def _clip_path(root: Path, filename: str, where: str) -> Path:
    """``ROOT/wav/<filename>``; label files that already say ``wav/x.wav`` resolve from ROOT.

    A row that leads outside DATA (``../../x.wav``, an absolute path) is refused with a
    DataError naming the row. Why: a label file is data that may come from elsewhere; such
    a row would train on, and report, files that are not part of the data set. The check is
    on the text, so a data set whose ``wav/`` is a symlink to another disk still works.
    """
    if not filename:
        raise DataError(f"{where}: empty filename")
    if os.path.isabs(filename) or filename.startswith(("\\", "/")) or filename[1:3] in (":/", ":\\"):
        raise DataError(f"{where}: absolute path; filenames must be relative to the data folder {root}")
    in_wav = root / "wav" / filename
    use_wav = in_wav.exists() or not (root / filename).is_file()
    inside = os.path.normpath(("wav/" if use_wav else "") + filename.replace("\\", "/"))
    if inside == ".." or inside.startswith("../"):
        raise DataError(f"{where}: path leads outside the data folder {root}; filenames must stay inside it")
    return in_wav if use_wav else root / filename


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files_by_class(folder: Path) -> list[Clip]:
    clips = []
    for class_dir in _class_folders(folder):
        files = [p for _, p in find_audio_files([class_dir])]
        if not files:
            raise DataError(f"{class_dir}: class folder {class_dir.name!r} holds no audio file")
        label = check_label(class_dir.name, f"{printable(str(class_dir))}: class folder")
        clips += [Clip(p, label) for p in files]
    return clips


def load_folders(root: Path, config: TrainConfig) -> Splits:
    subdirs = {p.name for p in _class_folders(root)}
    if config.train_split in subdirs:
        return {s: _files_by_class(root / s) for s in sorted(subdirs) if s in SPLIT_NAMES or s in (config.train_split, config.devel_split)}
    clips = _files_by_class(root)
    if not clips:
        raise DataError(f"{root}: no class folders with audio found")
    return hold_out({config.train_split: clips}, config)


def hold_out(splits: Splits, config: TrainConfig) -> Splits:
    """Move a seeded ``devel_fraction`` of recordings (not clips) from train to devel,
    stratified by class.

    Why recordings: clips of one recording in both splits would leak. Why stratified: a
    plain random share of recordings can leave a class out of devel, and UAR is then
    averaged over the other classes without anyone noticing. Each class with at least two
    recordings gets ``round(devel_fraction * n)`` of them (at least one) in devel, as long
    as every class keeps a training recording; a class that gets no devel clip is named in
    a warning.
    """
    clips = splits[config.train_split]
    order = sorted({c.path for c in clips}, key=lambda p: (zlib.crc32(f"{config.seed}:{p.name}".encode()), str(p)))
    classes_of: dict[Path, set[str]] = {p: set() for p in order}
    for c in clips:
        classes_of[c.path].add(c.label)
    by_class: dict[str, list[Path]] = {}
    for p in order:  # each class's recordings in the seeded order
        for label in classes_of[p]:
            by_class.setdefault(label, []).append(p)
    devel: set[Path] = set()
    # rarest classes first, so their few recordings are not used up by larger classes
    for label in sorted(by_class, key=lambda k: (len(by_class[k]), k)):
        recordings = by_class[label]
        if len(recordings) < 2:
            continue
        want = max(1, round(len(recordings) * config.devel_fraction))
        for p in recordings:
            if sum(q in devel for q in recordings) >= want:
                break
            # keep at least one training recording for every class this recording holds
            if p not in devel and all(any(q not in devel and q != p for q in by_class[k]) for k in classes_of[p]):
                devel.add(p)
    logger.info("no %s split: holding out %d of %d recordings as %s (stratified by class)",
                config.devel_split, len(devel), len(order), config.devel_split)
    missing = sorted(k for k, recs in by_class.items() if not any(p in devel for p in recs))
    for label in missing:
        n = len(by_class[label])
        why = "it has only one recording" if n == 1 else "its recordings are needed in train for other classes"
        logger.warning("class %r gets no %s clip (%s): its recall is not measured and UAR is averaged over the other classes",
                       label, config.devel_split, why)
    return {
        config.train_split: [c for c in clips if c.path not in devel],
        config.devel_split: [c for c in clips if c.path in devel],
    }


def _is_selection_table(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            return "Begin Time (s)" in f.readline()
    except OSError:
        return False


def _table_audio(table_path: Path, table: pd.DataFrame, audio_by_name: dict[str, Path]) -> Path:
    """The recording a table annotates: its Begin Path's file name, else the table name's prefix."""
    if "Begin Path" in table.columns and len(table):
        name = str(table["Begin Path"].iloc[0]).replace("\\", "/").rsplit("/", 1)[-1].lower()
        if name in audio_by_name:
            return audio_by_name[name]
    for name, path in audio_by_name.items():
        if table_path.name.lower().startswith(Path(name).stem + "."):
            return path
    raise DataError(f"{table_path}: cannot find the recording this selection table annotates under its folder")


def _selection_clips(audio: Path, table: pd.DataFrame, config: TrainConfig, table_path: Path) -> list[Clip]:
    if config.raven_label_column not in table.columns:
        raise DataError(f"{table_path}: no label column {config.raven_label_column!r}; columns are {list(table.columns)} (set raven_label_column)")
    clips = []
    for row, begin, end, label in zip(file_lines(table), table["Begin Time (s)"], table["End Time (s)"],
                                      table[config.raven_label_column]):
        label = str(label).strip()
        if not label or label.lower() == "nan" or end <= begin:
            raise DataError(f"{table_path}: selection {begin:.3f}-{end:.3f} s has no label or no duration")
        check_label(label, f"{table_path}, line {row} (selection {begin:.3f}-{end:.3f} s, column {config.raven_label_column!r})")
        # a selection shorter than a clip gets a clip centred on it
        pad = max(0.0, (config.clip_seconds - (end - begin)) / 2)
        clips.append(Clip(audio, label, max(0.0, begin - pad), end + pad))
    return clips


def _background_clips(audio: Path, selections: list[Clip], config: TrainConfig) -> list[Clip]:
    """Evenly spaced clip-length stretches that touch no selection (the reject class)."""
    duration = probe(audio).duration_s
    busy = sorted((c.start_s, c.end_s or duration) for c in selections)
    starts = np.arange(0.0, max(0.0, duration - config.clip_seconds) + 1e-9, config.clip_seconds)
    free = [s for s in starts if all(s + config.clip_seconds <= b or s >= e for b, e in busy)]
    step = max(1, len(free) // max(1, config.raven_background_per_file))
    return [Clip(audio, config.reject_class, float(s), float(s) + config.clip_seconds) for s in free[::step][: config.raven_background_per_file]]


def load_raven(root: Path, config: TrainConfig) -> Splits:
    subdirs = {p.name for p in _class_folders(root)}
    if config.train_split in subdirs:
        return {s: _raven_clips(root / s, config) for s in sorted(subdirs) if s in SPLIT_NAMES}
    return hold_out({config.train_split: _raven_clips(root, config)}, config)


def _raven_clips(folder: Path, config: TrainConfig) -> list[Clip]:
    audio_by_name = {p.name.lower(): p for _, p in find_audio_files([folder])}
    clips: list[Clip] = []
    for table_path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".txt", ".csv") and _is_selection_table(p)):
        table = read_selection_table(table_path)
        audio = _table_audio(table_path, table, audio_by_name)
        selections = _selection_clips(audio, table, config, table_path)
        clips += selections
        if config.raven_background:
            clips += _background_clips(audio, selections, config)
    if not clips:
        raise DataError(f"{folder}: no Raven selection tables with selections found")
    return clips


def reviewed_clips(paths: list[str | Path], known: set[str] | list[str], config: TrainConfig) -> list[Clip]:
    """Training clips from filled-in review tables (``primate-monitor review``): the model's
    mistakes and confirmations, to learn from.

    A ``no`` becomes a reject-class (``background``) clip, a species name a clip of that
    species, ``yes`` a clip of the detected species; rows with no verdict are skipped. Each clip
    is ``config.clip_seconds`` long, centred on the selection, cut from the recording its
    ``Begin Path`` names. Why centred and clip-long: a hard negative is the stretch the model
    got wrong, and a clip of the model's own length holds no unjudged audio to crop from. A
    verdict that is not yes/no/a class in ``known`` (the training classes) is a DataError
    naming the table and row."""
    from .review import read_review_tables, verdict_label

    try:
        rows = read_review_tables(list(paths))
    except (ValueError, FileNotFoundError) as e:
        raise DataError(str(e)) from e
    clips: list[Clip] = []
    skipped = 0
    path_seconds: dict[Path, float] = {}
    for r in rows.itertuples(index=False):
        where = f"{printable(r.table)}, {r.row_name}"
        try:
            label = verdict_label(r.verdict, r.species, set(known), config.reject_class, where)
        except ValueError as e:
            raise DataError(f"{e}; fill in yes, no or one of the training classes") from e
        if label is None:
            skipped += 1
            continue
        check_label(label, where)
        if label not in known:  # a "yes" on a Species cell edited to "Gibbon" would add a class
            raise DataError(f"{where}: verdict {r.verdict!r} makes it a {label!r} clip, which is not one of the "
                            f"training classes ({', '.join(sorted(known))}); correct the Species or the Verdict")
        if not r.begin_path:
            raise DataError(f"{where}: no Begin Path, so the recording to cut the clip from is unknown")
        audio = Path(r.begin_path)
        if not audio.is_file() and "\\" in r.begin_path:  # review wrote a tab or non-UTF-8 name escaped
            audio = Path(from_printable(r.begin_path))
        if not audio.is_file():
            raise DataError(f"{where}: recording {printable(r.begin_path)} not found")
        begin, end = float(r.begin_s), float(r.end_s)
        if not (math.isfinite(begin) and math.isfinite(end) and 0 <= begin <= end):
            raise DataError(f"{where}: the selection's times ({begin:g} s to {end:g} s) are not a stretch of a "
                            "recording (they must be finite, from 0 s on, and end after they begin)")
        if audio not in path_seconds:  # one header read per recording, not per row
            path_seconds[audio] = _seconds(audio, where)
        if path_seconds[audio] < begin:
            raise DataError(f"{where}: the selection begins at {begin:g} s, after the end of {printable(str(audio))} "
                            f"({path_seconds[audio]:.3f} s)")
        centre = (begin + end) / 2
        start = max(0.0, centre - config.clip_seconds / 2)
        clips.append(Clip(audio, label, start, start + config.clip_seconds))
    logger.info("reviewed tables: %d clip(s) (%s), %d row(s) without a verdict skipped", len(clips),
                dict(sorted(Counter(c.label for c in clips).items())), skipped)
    if not clips:
        raise DataError(f"no verdicts in the review tables under {', '.join(map(str, paths))}; fill in the Verdict column")
    return clips


def _seconds(path: Path, where: str) -> float:
    """A reviewed recording's length from its header, to check a selection against it."""
    try:
        return probe(path).duration_s
    except AudioReadError as e:
        raise DataError(f"{where}: {e}") from e


def add_reviewed(splits: Splits, paths: list[str | Path], config: TrainConfig) -> Splits:
    """``splits`` with the clips of the review tables in ``paths`` appended to the train split,
    never to devel: devel must stay what it was, or checkpoint choice would be scored on the
    very detections it is trained to fix. Known classes are those of the train split plus the
    reject class. A reviewed recording that devel also uses is named in a warning (a leak)."""
    train = splits.get(config.train_split, [])
    known = {c.label for c in train if c.label != UNLABELLED} | {config.reject_class}
    extra = reviewed_clips(paths, known, config)
    devel_files = {c.path.resolve() for c in splits.get(config.devel_split, [])}
    shared = sorted({str(c.path) for c in extra if c.path.resolve() in devel_files})
    if shared:
        logger.warning("reviewed clips come from recording(s) the %s split also holds, which leaks into validation: %s",
                       config.devel_split, ", ".join(shared[:5]))
    return splits | {config.train_split: train + extra}


def check_classes(splits: Splits, config: TrainConfig) -> list[str]:
    """Sorted training classes; every labelled clip of another split must use one of them."""
    train = splits.get(config.train_split, [])
    if not train:
        raise DataError(f"split {config.train_split!r} is empty")
    bad = [c for c in train if c.label == UNLABELLED]
    if bad:
        raise DataError(f"{bad[0].path}: training clip labelled {UNLABELLED!r} (unlabelled clips belong in test)")
    classes = sorted({c.label for c in train})
    if len(classes) < 2:
        raise DataError(f"training data has only the class(es) {classes}; at least two are needed")
    for split, clips in splits.items():
        for clip in clips:
            if clip.label != UNLABELLED and clip.label not in classes:
                raise DataError(
                    f"{clip.path}: label {clip.label!r} in split {split!r} has no training clip; training classes are {classes}"
                )
    if config.reject_class not in classes:
        logger.warning("reject class %r is not among the training classes %s: every window will be called a species", config.reject_class, classes)
    return classes


def summarize(splits: Splits) -> dict[str, dict[str, int]]:
    """Clip counts per split and class, stored in the checkpoint."""
    return {split: dict(sorted(Counter(c.label for c in clips).items())) for split, clips in splits.items()}
