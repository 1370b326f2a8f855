"""Choose detections for a person to verify, and give them what they verify with.

Scores are not probabilities, and what a score means changes with species and site: the
only way to know how far to trust a scan is to listen to a sample of its detections. This
module draws that sample and writes, for each chosen detection,

- a row of a Raven Pro selection table (one table per recording, ``raven/<recording>.review.
  selections.txt``, opening over the original recording through its ``Begin Path``) with an
  empty ``Verdict`` column for ``yes``, ``no`` or the right species name;
- a short WAV clip with context, ``clips/<species>/<score>_<recording>_t<begin>.wav``, so a
  file browser sorted by name lists each species' clips by score;
- a page of spectrograms per species (``sheets/<species>_NN.png``) for a fast visual pass;

and ``review.csv`` with every chosen row and its sampling weight.

The sample is stratified: per species, the scores from the species' threshold up to 1 are
cut into ``bins`` equal-width bins and ``per_bin`` detections are drawn from each (seeded).
Why: most detections of a busy species sit at high scores, so a plain random sample would
say little about the borderline scores where a threshold must be placed, and a fit of
P(correct | score) needs verdicts across the whole range. Each row's ``Sample Weight`` (the
bin's detections / the bin's verdicts) lets ``calibrate`` turn verdicts on this sample back
into precision over all of the scan's detections.

Verdict tables are read back by ``read_review_tables`` (calibrate, ``train --add-reviewed``).
"""

from __future__ import annotations

import logging
import re
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .fsutil import atomic_write, ensure_output_dir, printable, safe_relative, write_csv, write_json
from .raven import file_lines, read_selection_table
from .writers import RAVEN_CHANNEL, RAVEN_HEADER, RAVEN_VIEW, model_species

logger = logging.getLogger(__name__)

VERDICT_COLUMN = "Verdict"
WEIGHT_COLUMN = "Sample Weight"
CLIP_COLUMN = "Clip"
REVIEW_HEADER = (*RAVEN_HEADER, "Mean Score", WEIGHT_COLUMN, CLIP_COLUMN, VERDICT_COLUMN)
TABLE_SUFFIX = ".review.selections.txt"
YES, NO = ("yes", "y"), ("no", "n")
MAX_CLIP_S = 30.0  # a longer event is clipped to its first 30 s (plus context): enough to judge it
SHEET_COLUMNS = 6
SHEET_ROWS = 8
SHEET_MAX_HZ = 8000.0  # the band drawn; the calls of interest sit below it


@dataclass(frozen=True)
class ReviewOptions:
    """What to draw from a scan for review. Validated on construction."""

    per_bin: int = 5  # detections drawn per score bin and species
    bins: int = 5  # equal-width score bins from the species' threshold up to 1
    seed: int = 0
    take_all: bool = False  # every detection instead of a sample
    context_s: float = 1.0  # audio kept before and after each detection in its clip
    species: tuple[str, ...] | None = None  # only these species (None: all that were detected)
    sheets: bool = True  # draw the spectrogram pages

    def __post_init__(self) -> None:
        for name in ("per_bin", "bins"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not (isinstance(self.context_s, (int, float)) and 0 <= self.context_s <= 60):
            raise ValueError(f"context must be 0 to 60 s, got {self.context_s!r}")


def species_floors(events: pd.DataFrame) -> dict[str, float]:
    """Each detected species' score threshold in the scan that made ``events`` (from the run
    parameters in the Parquet metadata); the lowest detected score where they are missing."""
    params = events.attrs.get("primate_monitor", {}) or {}
    default = params.get("threshold")
    per_class = params.get("class_thresholds") or {}
    floors = {}
    for species, scores in events.groupby("species")["peak_score"]:
        t = per_class.get(species, default)
        floors[str(species)] = float(t) if t is not None else float(scores.min())
    return floors


def choose_detections(events: pd.DataFrame, floors: dict[str, float], options: ReviewOptions) -> pd.DataFrame:
    """The detections to review: per species, ``options.per_bin`` drawn at random from each of
    ``options.bins`` equal-width peak-score bins over [floor, 1] (or all with ``take_all``).

    The draw of one species depends only on the seed, the species and its own detections, so
    adding a species to a scan does not change another's sample. Adds ``bin``, ``bin_low``,
    ``bin_high``, ``stratum_size`` (detections in the bin), ``stratum_sampled`` and ``weight``
    (their ratio: how many of the scan's detections each chosen one stands for).
    """
    chosen = []
    wanted = options.species
    for species in sorted(events["species"].unique()):
        if wanted is not None and species not in wanted:
            continue
        mine = events[events["species"] == species]
        floor = min(float(floors.get(species, mine["peak_score"].min())), 1.0)
        below = mine["peak_score"] < floor
        if below.any():
            logger.warning("%s: %d detection(s) score below the threshold %.3f and are not sampled",
                           species, int(below.sum()), floor)
            mine = mine[~below]
        edges = np.linspace(floor, 1.0, options.bins + 1)
        bins = np.clip(np.searchsorted(edges, mine["peak_score"].to_numpy(), side="right") - 1, 0, options.bins - 1)
        for b in range(options.bins):
            stratum = mine[bins == b]
            if stratum.empty:
                continue
            k = len(stratum) if options.take_all else min(options.per_bin, len(stratum))
            rng = np.random.default_rng([options.seed, zlib.crc32(str(species).encode()), b])
            pick = stratum.iloc[np.sort(rng.choice(len(stratum), size=k, replace=False))].copy()
            pick["bin"], pick["bin_low"], pick["bin_high"] = b, edges[b], edges[b + 1]
            pick["stratum_size"], pick["stratum_sampled"] = len(stratum), k
            pick["weight"] = len(stratum) / k
            chosen.append(pick)
    if wanted is not None:
        missing = sorted(set(wanted) - set(events["species"]))
        if missing:
            logger.warning("no detections of %s to review", ", ".join(missing))
    if not chosen:
        return events.iloc[:0].assign(bin=pd.Series(dtype="int64"), bin_low=pd.Series(dtype="float64"),
                                      bin_high=pd.Series(dtype="float64"), stratum_size=pd.Series(dtype="int64"),
                                      stratum_sampled=pd.Series(dtype="int64"), weight=pd.Series(dtype="float64"))
    out = pd.concat(chosen, ignore_index=True)
    return out.sort_values(["species", "peak_score", "recording", "begin_s"], kind="mergesort", ignore_index=True)


def _file_part(text: str) -> str:
    """A file-name piece from a species or recording name: letters, digits, ``._-`` only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", printable(text)).strip("._") or "x"


def clip_name(species: str, score: float, recording: str, begin_s: float) -> str:
    """``<species>/<score>_<recording stem>_t<begin>.wav``: sorted by name is sorted by score."""
    stem = _file_part(Path(safe_relative(recording)).stem)
    return f"{_file_part(species)}/{score:.4f}_{stem}_t{begin_s:09.3f}.wav"


@dataclass
class ReviewResult:
    """What ``review`` wrote."""

    out: Path
    chosen: pd.DataFrame  # the rows of review.csv
    tables: list[Path]
    sheets: list[Path]
    unreadable: int  # chosen detections whose audio could not be read (no clip, no panel)


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse a folder that holds another review unless ``overwrite``, and even then refuse one
    whose tables already hold verdicts: they are a person's work and are never overwritten.

    A table that cannot be read back (saved by a spreadsheet with ``;``, a cell emptied, no
    Verdict column) refuses too: whether it holds verdicts cannot be known, and guessing "no"
    would destroy them."""
    tables = sorted((out / "raven").rglob(f"*{TABLE_SUFFIX}")) if (out / "raven").is_dir() else []
    if not tables and not (out / "review.csv").exists():
        return
    if not overwrite:
        raise ValueError(f"{out} already holds a review (review.csv, raven/); pick another -o, or --overwrite "
                         "to replace it")
    for table in tables:
        try:
            read = read_selection_table(table)
            if VERDICT_COLUMN not in read.columns:
                raise ValueError(f"no {VERDICT_COLUMN!r} column")
        except (ValueError, OSError) as e:
            reason = str(e).removeprefix(f"{table}: ")
            raise ValueError(f"{table}: cannot be read as a review table ({reason}), so it may hold verdicts; move it "
                             "(or the review folder) away first: review never overwrites a table it cannot "
                             "check") from e
        verdicts = read[VERDICT_COLUMN]
        if verdicts.astype(str).str.strip().ne("").any():
            raise ValueError(f"{table} holds verdicts; move it (or the review folder) away first: "
                             "review never overwrites a filled-in table")


def scan_species(events: pd.DataFrame) -> set[str]:
    """The species a scan can have detected: the model's classes but its reject class (the run
    parameters in detections.parquet), and every species detected.
    Why: a misspelt ``--species`` must be an error, not an empty review."""
    classes, reject = model_species(events)
    return {c for c in classes if c != reject} | {str(sp) for sp in events["species"].unique()}


def review_scan(scan_dir: str | Path, out: str | Path, options: ReviewOptions | None = None,
                overwrite: bool = False) -> ReviewResult:
    """Draw detections of the scan in ``scan_dir`` for review and write tables, clips, sheets and
    review.csv under ``out`` (see the module docstring). Works on any scan output and model: it
    reads only detections.parquet and the recordings the scan lists."""
    from .scan_run import scanned_files
    from .writers import read_parquet

    options = options or ReviewOptions()
    scan_dir, out = Path(scan_dir), Path(out)
    detections = scan_dir / "detections.parquet"
    if not detections.is_file():
        raise FileNotFoundError(f"{scan_dir}: not a scan output folder (no detections.parquet)")
    events = read_parquet(detections)
    if options.species is not None:
        known = scan_species(events)
        unknown = [sp for sp in options.species if sp not in known]
        if unknown:
            raise ValueError(f"species {', '.join(map(repr, unknown))} not in the scan {scan_dir}; its species: "
                             f"{', '.join(sorted(known)) or '(none)'}")
    floors = species_floors(events)
    real_paths = {rel: path for rel, path in scanned_files(scan_dir)}
    ensure_output_dir(out)
    _check_out(out, overwrite)
    chosen = choose_detections(events, floors, options)
    chosen["clip"] = ""
    unreadable = 0
    sheets: list[Path] = []
    for species, rows in chosen.groupby("species", sort=True):
        panels = []
        for i, row in rows.iterrows():
            path = real_paths.get(row["recording"], Path(row["recording_path"]))
            audio = _clip_audio(path, row["begin_s"], row["end_s"], options.context_s)
            if audio is None:
                unreadable += 1
                continue
            samples, sr, offset = audio
            name = clip_name(str(species), float(row["peak_score"]), row["recording"], float(row["begin_s"]))
            _write_wav(out / "clips" / name, samples, sr)
            chosen.at[i, "clip"] = f"clips/{name}"
            if options.sheets:
                panels.append((_spectrogram(samples, sr), row, offset))
        if panels:
            sheets += _draw_sheets(str(species), panels, out / "sheets")
    chosen["table"], chosen["selection"] = "", 0
    tables = _write_tables(chosen, out / "raven")
    columns = ["species", "peak_score", "mean_score", "recording", "recording_path", "begin_s", "end_s", "bin",
               "bin_low", "bin_high", "stratum_size", "stratum_sampled", "weight", "table", "selection", "clip"]
    write_csv(chosen[columns], out / "review.csv")
    info = {"scan": str(scan_dir.resolve()), "options": asdict(options), "floors": floors,
            "detections": {str(k): int(v) for k, v in events["species"].value_counts().sort_index().items()},
            "chosen": {str(k): int(v) for k, v in chosen["species"].value_counts().sort_index().items()}}
    write_json(out / "review.json", info)
    if unreadable:
        logger.warning("%d chosen detection(s) have no clip: their recording could not be read", unreadable)
    return ReviewResult(out, chosen[columns], tables, sheets, unreadable)


def _clip_audio(path: Path, begin_s: float, end_s: float, context_s: float) -> tuple[np.ndarray, int, float] | None:
    """(mono samples at the file's own rate, rate, s from clip start to the detection), or None."""
    from .audio import AudioReadError, load_audio, sample_rate_of

    try:
        sr = sample_rate_of(path)
        start = max(0.0, begin_s - context_s)
        stop = min(end_s, begin_s + MAX_CLIP_S) + context_s
        samples = load_audio(path, sr, start_s=start, end_s=stop)
    except (AudioReadError, OSError, ValueError) as e:
        logger.warning("%s: no clip for the detection at %.2f s (%s)", printable(str(path)), begin_s, e)
        return None
    if samples.size == 0:
        logger.warning("%s: no audio at %.2f s", printable(str(path)), begin_s)
        return None
    return samples, sr, begin_s - start


def _write_wav(path: Path, samples: np.ndarray, sr: int) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        sf.write(tmp, np.clip(samples, -1.0, 1.0), sr, format="WAV", subtype="PCM_16")


def _spectrogram(samples: np.ndarray, sr: int) -> tuple[np.ndarray, float, float]:
    """(dB, seconds per column, top Hz) of a clip, for one panel of a sheet."""
    from scipy.signal import spectrogram

    nper = int(2 ** np.ceil(np.log2(max(64, sr * 0.032))))  # ~32 ms windows
    f, t, power = spectrogram(samples, sr, nperseg=min(nper, max(16, samples.size)), noverlap=None)
    keep = f <= min(SHEET_MAX_HZ, sr / 2)
    db = 10 * np.log10(power[keep] + 1e-12)
    step = float(t[1] - t[0]) if t.size > 1 else samples.size / sr
    return db.astype(np.float32), step, float(f[keep][-1]) if keep.any() else sr / 2


def _draw_sheets(species: str, panels: list, folder: Path) -> list[Path]:
    """Pages of SHEET_ROWS x SHEET_COLUMNS spectrograms, the detection between dashed lines."""
    from .plots import plt, save_figure

    per_page = SHEET_ROWS * SHEET_COLUMNS
    written = []
    folder.mkdir(parents=True, exist_ok=True)
    for page, first in enumerate(range(0, len(panels), per_page), start=1):
        chunk = panels[first:first + per_page]
        rows = int(np.ceil(len(chunk) / SHEET_COLUMNS))
        fig, axes = plt.subplots(rows, SHEET_COLUMNS, figsize=(2.6 * SHEET_COLUMNS, 2.1 * rows + 0.6),
                                 squeeze=False, layout="constrained")
        for ax in axes.flat:
            ax.axis("off")
        for ax, ((db, step, top), row, offset) in zip(axes.flat, chunk):
            ax.axis("on")
            hi = float(db.max()) if db.size else 0.0
            ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=hi - 70, vmax=hi,
                      extent=(0, db.shape[1] * step, 0, top / 1000))
            for x in (offset, offset + min(row["end_s"] - row["begin_s"], MAX_CLIP_S)):
                ax.axvline(x, color="cyan", lw=1, ls="--")
            ax.set_title(f"{row['peak_score']:.3f}  {Path(str(row['recording'])).name[:22]}\n@{row['begin_s']:.1f} s",
                         fontsize=7)
            ax.tick_params(labelsize=6)
        fig.suptitle(f"{species}: {len(panels)} detections to review (score order), page {page}", fontsize=10)
        fig.supxlabel("s in clip", fontsize=8)
        fig.supylabel("kHz", fontsize=8)
        written.append(save_figure(fig, folder / f"{_file_part(species)}_{page:02d}.png"))
    return written


def _write_tables(chosen: pd.DataFrame, folder: Path) -> list[Path]:
    """One review table per recording with chosen rows; fills ``table`` and ``selection``."""
    written = []
    names = {rel: safe_relative(str(rel)) for rel in chosen["recording"].unique()}
    clashes = sorted(n for n, k in Counter(names.values()).items() if k > 1)
    if clashes:
        raise ValueError(f"recording names that would write the same review table: {clashes}")
    for rel, rows in chosen.groupby("recording", sort=True):
        rows = rows.sort_values(["begin_s", "species"], kind="mergesort")
        table = pd.DataFrame({
            "Selection": [str(k) for k in range(1, len(rows) + 1)],
            "View": RAVEN_VIEW,
            "Channel": RAVEN_CHANNEL,
            "Begin Time (s)": rows["begin_s"].map("{:.6f}".format),
            "End Time (s)": rows["end_s"].map("{:.6f}".format),
            "Low Freq (Hz)": rows["low_freq_hz"].map("{:.1f}".format),
            "High Freq (Hz)": rows["high_freq_hz"].map("{:.1f}".format),
            "Species": rows["species"].astype(str),
            "Score": rows["peak_score"].map("{:.4f}".format),
            "Begin Path": rows["recording_path"].astype(str),
            "File Offset (s)": rows["begin_s"].map("{:.6f}".format),
            "Mean Score": rows["mean_score"].map("{:.4f}".format),
            WEIGHT_COLUMN: rows["weight"].map("{:.4f}".format),
            CLIP_COLUMN: rows["clip"].astype(str),
            VERDICT_COLUMN: "",
        }, columns=list(REVIEW_HEADER))
        for col in table.columns:
            if table[col].str.contains(r"[\t\r\n]", regex=True).any():
                raise ValueError(f"{rel}: column {col!r} has a value containing a tab or newline")
        path = folder / f"{names[rel]}{TABLE_SUFFIX}"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "\t".join(REVIEW_HEADER) + "\n" + "".join("\t".join(r) + "\n" for r in table.itertuples(index=False))
        with atomic_write(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        chosen.loc[rows.index, "table"] = str(path.relative_to(folder.parent))
        chosen.loc[rows.index, "selection"] = range(1, len(rows) + 1)
        written.append(path)
    return written


# ---- reading filled-in tables back ---------------------------------------------------------
def find_review_tables(paths: list[str | Path]) -> list[Path]:
    """Review tables from files and folders (searched for ``*.selections.txt`` holding a Verdict
    column); each once. A file given by name must hold a Verdict column, and so must a
    ``*.review.selections.txt`` found in a folder: skipping one that a spreadsheet saved with
    ``;`` (or that is empty) would silently fit thresholds on fewer verdicts. Other tables
    without the column (truth tables beside the recordings) are passed over."""
    found: dict[Path, None] = {}
    for p in map(Path, paths):
        if p.is_dir():
            for table in sorted(p.rglob("*.selections.txt")):
                if _has_verdicts(table):
                    found.setdefault(table.resolve(), None)
                elif table.name.endswith(TABLE_SUFFIX):
                    raise ValueError(f"{table}: a review table with no readable {VERDICT_COLUMN!r} column (empty, "
                                     "unreadable, or saved with a separator other than tab or comma, e.g. ';' by a "
                                     f"spreadsheet); save it again as tab-separated text, or move it out of {p}")
        elif p.is_file():
            if not _has_verdicts(p):
                raise ValueError(f"{p}: no {VERDICT_COLUMN!r} column; is it a review table (primate-monitor review)?")
            found.setdefault(p.resolve(), None)
        else:
            raise FileNotFoundError(f"no such review table or folder: {p}")
    if not found:
        raise ValueError(f"no review tables (*.selections.txt with a {VERDICT_COLUMN!r} column) in "
                         f"{', '.join(map(str, paths))}")
    return list(found)


def _has_verdicts(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            header = f.readline()
    except OSError:
        return False
    return VERDICT_COLUMN in [c.strip() for c in re.split(r"[\t,]", header)]


def _row_names(table: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """(number, name) of each row as the person sees it: its ``Selection`` number when every row
    has one (Raven keeps it when rows are deleted or sorted), else its line in the file (the
    header is line 1). Why: "row 2" must point at the row an error is about."""
    if "Selection" in table.columns:
        sel = table["Selection"].astype(str).str.strip()
        if len(sel) and sel.str.fullmatch(r"[0-9]{1,9}").all():
            numbers = sel.astype(int).to_numpy()
            return numbers, [f"Selection {n}" for n in numbers]
    numbers = file_lines(table)
    return numbers, [f"line {n}" for n in numbers]


def _check_numbers(path: Path, table: pd.DataFrame, column: str, ok: np.ndarray, names: list[str],
                   rule: str) -> None:
    """A ValueError naming the file and row of the first reviewed row whose ``column`` breaks ``rule``."""
    bad = np.flatnonzero(~ok)
    if bad.size:
        i = int(bad[0])
        more = f" (and {bad.size - 1} more row(s))" if bad.size > 1 else ""
        raise ValueError(f"{path}, {names[i]}: {column} {table[column].iloc[i]!r} must be {rule}{more}; fix it "
                         "or clear the row's Verdict")


def read_review_tables(paths: list[str | Path]) -> pd.DataFrame:
    """Every row of the review tables in ``paths`` (files or folders), filled in or not.

    Columns: table, row (the row's Selection number, or its line in the file when the table
    has no Selection numbers), row_name ("Selection 3" or "line 4", for messages), species,
    score, begin_s, end_s, begin_path (absolute; a relative Begin Path is taken from the
    table's folder), weight (Sample Weight, 1 when the column is missing: every detection
    reviewed), verdict (stripped text; "" when not reviewed).

    On rows with a verdict, a Score that is not a number in [0, 1] or a Sample Weight that is
    not a finite number > 0 is an error naming the table and row: either would silently skew
    the fitted thresholds. Rows without a verdict are not used and not checked."""
    frames = []
    for path in find_review_tables(paths):
        table = read_selection_table(path)
        missing = [c for c in ("Species", "Score", VERDICT_COLUMN) if c not in table.columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; a review table has Species, Score and Verdict")
        verdict = table[VERDICT_COLUMN].astype(str).str.strip()
        reviewed = verdict.ne("").to_numpy()
        numbers, names = _row_names(table)
        score = pd.to_numeric(table["Score"].astype(str).str.strip(), errors="coerce").astype(float)
        s = score.to_numpy()
        with np.errstate(invalid="ignore"):
            _check_numbers(path, table, "Score", ~reviewed | (np.isfinite(s) & (s >= 0) & (s <= 1)), names,
                           "a number from 0 to 1")
        if WEIGHT_COLUMN in table.columns:
            weight = pd.to_numeric(table[WEIGHT_COLUMN].astype(str).str.strip(), errors="coerce").astype(float)
            w = weight.to_numpy()
            with np.errstate(invalid="ignore"):
                _check_numbers(path, table, WEIGHT_COLUMN, ~reviewed | (np.isfinite(w) & (w > 0)), names,
                               "a number > 0 (how many of the scan's detections the row stands for)")
        else:
            weight = pd.Series(1.0, index=table.index)
        begin = table["Begin Path"].astype(str).str.strip() if "Begin Path" in table.columns else pd.Series("", index=table.index)
        frames.append(pd.DataFrame({
            "table": str(path), "row": numbers, "row_name": names,
            "species": table["Species"].astype(str).str.strip(), "score": score,
            "begin_s": table["Begin Time (s)"], "end_s": table["End Time (s)"],
            "begin_path": [str(path.parent / b) if b and not Path(b).is_absolute() else b for b in begin],
            "weight": weight, "verdict": verdict}))
    return pd.concat(frames, ignore_index=True)


def verdict_label(verdict: str, detected: str, known: set[str] | list[str], reject_class: str,
                  where: str) -> str | None:
    """The class a verdict says the detection is: the detected species for ``yes``, the reject
    class for ``no``, or the species named (case-insensitive match to a known class). None for
    an empty verdict (not reviewed). Anything else is a ValueError naming ``where``: a typo must
    not silently become a label or a "no"."""
    text = verdict.strip()
    if not text:
        return None
    low = text.lower()
    if low in YES:
        return detected
    if low in NO:
        return reject_class
    matches = [k for k in known if k.lower() == low]
    if len(matches) == 1:
        return matches[0]
    raise ValueError(f"{where}: verdict {verdict!r} is not yes, no or a known class "
                     f"({', '.join(sorted(known))})")


def describe(result: ReviewResult) -> dict[str, Any]:
    """Counts per species of what was chosen, for the command's summary line."""
    return {str(k): int(v) for k, v in result.chosen["species"].value_counts().sort_index().items()}
