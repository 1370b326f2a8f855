"""The tables field ecologists analyse, from a scan's output folder: recording effort,
detection histories for occupancy models, and diel activity normalised by effort.

Inputs are ``SCAN_OUT/recordings.csv`` (start time and duration of every recording that
was scanned) and ``SCAN_OUT/detections.parquet``. Rules, stated once:

- **Local time** is UTC plus a fixed offset (``utc_offset``, default +00:00; no daylight
  saving, which tropical sites rarely keep). Days, occasions and hours of day are local.
- **Effort** is recorder time: a recording covers [start, start + duration) and counts,
  piece by piece, towards every day / occasion / clock hour it overlaps, so a recording
  spanning midnight adds its hours before midnight to one day and the rest to the next.
  Two recorders at one site add up (recorder-hours).
- **Detections** count towards the occasion and hour holding their ``begin_time``.
- A cell of a detection history is **NA** when the site recorded nothing in that
  occasion, **1** when a detection passed its species' threshold (a threshold of 1 switches
  the species off, as in ``events.passing``), else **0**.
- Recordings with no known start time cannot be placed in time: they are left out of
  every table, with a warning giving how many.
- Occasions are aligned on local midnight of the first recorded day and run to the last
  recorded occasion of any site; every site gets the same columns.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .fsutil import atomic_write, ensure_output_dir, write_json
from .events import passing
from .writers import METADATA_KEY, model_species, read_parquet

logger = logging.getLogger(__name__)

SITE_MODES = ("folder", "prefix", "regex")
DAY = pd.Timedelta(days=1)
HOUR = pd.Timedelta(hours=1)
_OFFSET_RE = re.compile(r"^(?:UTC)?([+-])(\d{1,2})(?::?(\d{2}))?$")


@dataclass(frozen=True)
class SummaryOptions:
    """How detections become tables; everything that changes a cell is here."""

    site_from: str = "folder"  # folder | prefix | regex
    site_regex: str | None = None  # for site_from="regex": group "site", else group 1, else the match
    occasion: str = "1d"  # occasion length: "1d", "6h", "12h", "7d", ... (divides a day, or whole days)
    min_score: float = 0.0  # peak score a detection needs (species not in ``thresholds``)
    thresholds: dict[str, float] = field(default_factory=dict)  # species -> peak score it needs (1: off)
    utc_offset: str = "+00:00"  # local time = UTC + this
    species: tuple[str, ...] | None = None  # None: the scan's species (its classes less the reject class)

    def __post_init__(self) -> None:
        if self.site_from not in SITE_MODES:
            raise ValueError(f"site_from must be one of {SITE_MODES}, got {self.site_from!r}")
        if self.site_from == "regex" and not self.site_regex:
            raise ValueError("--site-from regex needs --site-regex PATTERN")
        if self.site_regex:
            try:
                re.compile(self.site_regex)
            except re.error as e:
                raise ValueError(f"--site-regex {self.site_regex!r} is not a regular expression: {e}") from e
        parse_occasion(self.occasion)
        parse_utc_offset(self.utc_offset)
        for name, value in [("min_score", self.min_score), *self.thresholds.items()]:
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"threshold for {name} must be a number in [0, 1], got {value!r}")


def parse_utc_offset(text: str) -> pd.Timedelta:
    """'+07:00', '-5', 'UTC-03:30', 'UTC', 'Z' -> a Timedelta between -14 h and +14 h."""
    text = text.strip()
    if text.upper() in ("UTC", "Z", "0", "+0", "-0"):
        return pd.Timedelta(0)
    m = _OFFSET_RE.match(text)
    if not m:
        raise ValueError(f"UTC offset must look like +07:00 or -5, got {text!r}")
    sign = -1 if m.group(1) == "-" else 1
    hours, minutes = int(m.group(2)), int(m.group(3) or 0)
    if minutes >= 60 or hours * 60 + minutes > 14 * 60:
        raise ValueError(f"UTC offset {text!r} is out of range (-14:00 to +14:00)")
    return sign * pd.Timedelta(hours=hours, minutes=minutes)


def parse_occasion(text: str) -> pd.Timedelta:
    """'1d', '6h', '7d', '30min' -> a Timedelta that divides a day or is whole days, so
    occasions align on local midnight."""
    days = re.fullmatch(r"\s*(\d+)\s*(?:d|day|days)\s*", text, re.IGNORECASE)  # pandas deprecates a bare 'd'
    try:
        length = pd.Timedelta(days=int(days.group(1))) if days else pd.Timedelta(text)
    except (ValueError, TypeError) as e:
        raise ValueError(f"occasion length {text!r} is not a duration like 1d, 6h or 7d") from e
    if length <= pd.Timedelta(0):
        raise ValueError(f"occasion length must be positive, got {text!r}")
    if (length < DAY and DAY % length != pd.Timedelta(0)) or (length > DAY and length % DAY != pd.Timedelta(0)):
        raise ValueError(f"occasion length {text!r} must divide a day (1h, 6h, 12h, ...) or be whole days (1d, 7d, ...)")
    return length


def site_of(recording: str, path: str, options: SummaryOptions) -> str:
    """The site of one recording.

    - ``folder``: the name of the folder holding the file (``site3`` for ``.../site3/x.WAV``);
    - ``prefix``: the file name before its first underscore (``CAM02`` for
      ``CAM02_20240312_180000.wav``); a name without one, or whose prefix is all digits
      (a bare ``20240312_053000.WAV``), has none and is an error;
    - ``regex``: ``re.search`` on the recording's name relative to the scanned folder;
      the group named ``site``, else group 1, else the whole match.
    """
    if options.site_from == "folder":
        name = Path(path or recording).parent.name
        if not name:
            raise ValueError(f"{recording}: no folder name to use as its site")
        return name
    if options.site_from == "prefix":
        stem = Path(recording).name
        prefix, sep, _ = stem.partition("_")
        if not sep or not prefix or prefix.isdigit():
            raise ValueError(f"{recording}: file name has no site prefix before an underscore "
                             "(use --site-from folder or --site-from regex)")
        return prefix
    m = re.search(str(options.site_regex), recording)
    if m is None:
        raise ValueError(f"{recording}: --site-regex {options.site_regex!r} does not match this recording's name")
    if "site" in m.groupdict():
        return m.group("site")
    return m.group(1) if m.re.groups else m.group(0)


def _pieces(table: pd.DataFrame, origin: pd.Timestamp, length: pd.Timedelta) -> pd.DataFrame:
    """Cut every [start, end) at the bin edges origin + k*length: rows of (site, recording,
    bin k, piece start, piece end, seconds)."""
    rows = []
    for site, rec, start, end in zip(table["site"], table["recording"], table["start"], table["end"]):
        t = start
        while t < end:
            k = (t - origin) // length
            stop = min(end, origin + (k + 1) * length)
            rows.append((site, rec, int(k), t, stop, (stop - t).total_seconds()))
            t = stop
    return pd.DataFrame(rows, columns=["site", "recording", "bin", "begin", "end", "seconds"])


@dataclass
class Summary:
    """The tables (also written by ``write_summary``) and what went into them."""

    effort: pd.DataFrame
    detection_history: pd.DataFrame
    occasion_effort: pd.DataFrame
    diel: pd.DataFrame
    info: dict[str, Any]


def _scan_species(events: pd.DataFrame, options: SummaryOptions) -> list[str]:
    if options.species:
        return list(options.species)
    classes, reject = model_species(events)
    classes = events.attrs.get(METADATA_KEY, {}).get("report_classes") or classes
    if classes:
        return [c for c in classes if c != reject]
    logger.warning("detections.parquet records no classes: only species with a detection get a history")
    return sorted(events["species"].unique())


def _occasion_label(start: pd.Timestamp, length: pd.Timedelta) -> str:
    return start.strftime("%Y-%m-%d") if length >= DAY else start.strftime("%Y-%m-%dT%H:%M")


def summarize(scan_dir: str | Path, options: SummaryOptions | None = None) -> Summary:
    """Effort, detection histories and diel activity of the scan in ``scan_dir``."""
    from .scan_run import scanned_recordings

    options = options or SummaryOptions()
    scan_dir = Path(scan_dir)
    offset = parse_utc_offset(options.utc_offset)
    length = parse_occasion(options.occasion)
    recordings = scanned_recordings(scan_dir)
    events = read_parquet(scan_dir / "detections.parquet")
    species = _scan_species(events, options)
    unknown_thresholds = sorted(set(options.thresholds) - set(species))
    if unknown_thresholds:
        logger.warning("thresholds given for species the scan does not report: %s", ", ".join(unknown_thresholds))

    text = recordings["recording_start"].astype(str).str.strip()
    starts = pd.to_datetime(text.mask(text.isin(["", "nan", "None", "NaT"])), utc=True, format="ISO8601", errors="coerce")
    untimed = int(starts.isna().sum())
    if untimed:
        logger.warning("%d of %d scanned recording(s) have no known start time: left out of effort, detection "
                       "history and diel activity", untimed, len(recordings))
    timed = recordings[starts.notna().to_numpy()].copy()
    if timed.empty:
        raise ValueError(f"{scan_dir}: no scanned recording has a known start time; nothing can be placed in time")
    timed["site"] = [site_of(r, p, options) for r, p in zip(timed["recording"], timed["path"])]
    timed["start"] = (starts[starts.notna()] + offset).dt.tz_localize(None).to_numpy()
    timed["end"] = timed["start"] + pd.to_timedelta(timed["duration_s"].astype(float), unit="s")
    origin = timed["start"].min().normalize()  # local midnight of the first recorded day
    sites = sorted(timed["site"].unique())

    # detections: passing the threshold, of a timed recording, placed in local time
    site_by_rec = dict(zip(timed["recording"], timed["site"]))
    peak, passed = events["peak_score"].to_numpy(float), np.zeros(len(events), dtype=bool)
    for sp, rows in events.groupby("species").indices.items():  # events.passing: a threshold of 1 is "off"
        passed[rows] = passing(peak[rows], options.thresholds.get(sp, options.min_score))
    kept = events[passed & events["species"].isin(species)]
    kept = kept[kept["recording"].isin(site_by_rec) & kept["begin_time"].notna()].copy()
    kept["site"] = kept["recording"].map(site_by_rec)
    kept["local"] = (pd.to_datetime(kept["begin_time"], utc=True) + offset).dt.tz_localize(None)

    effort = _effort_by_day(timed, origin)
    occ_pieces = _pieces(timed, origin, length)
    n_occasions = int(occ_pieces["bin"].max()) + 1
    labels = [_occasion_label(origin + k * length, length) for k in range(n_occasions)]
    seconds = occ_pieces.pivot_table(index="site", columns="bin", values="seconds", aggfunc="sum")
    seconds = seconds.reindex(index=sites, columns=range(n_occasions)).fillna(0.0)
    kept["bin"] = ((kept["local"] - origin) // length).astype(int)
    history_rows = []
    for name in species:
        mine = kept[kept["species"] == name]
        hit = set(zip(mine["site"], mine["bin"]))
        for site in sites:
            cells = [pd.NA if seconds.at[site, k] <= 0 else int((site, k) in hit) for k in range(n_occasions)]
            history_rows.append([name, site, *cells])
    history = pd.DataFrame(history_rows, columns=["species", "site", *labels])
    for col in labels:
        history[col] = history[col].astype("Int64")
    occasion_effort = (seconds / 3600).round(6)
    occasion_effort.columns = labels
    occasion_effort = occasion_effort.reset_index().rename(columns={"index": "site"})

    diel = _diel(timed, kept, species, origin)
    info = {"scan": str(scan_dir.resolve()), "options": asdict(options), "species": species, "sites": sites,
            "recordings_used": len(timed), "recordings_without_start": untimed,
            "detections_used": len(kept), "detections_in_scan": len(events),
            "occasions": n_occasions, "first_occasion": labels[0], "local_time": f"UTC{options.utc_offset}"}
    return Summary(effort, history, occasion_effort, diel, info)


def _effort_by_day(timed: pd.DataFrame, origin: pd.Timestamp) -> pd.DataFrame:
    """A row per site and local day, from the site's first recorded day to its last; days
    with nothing recorded are rows of 0 hours, so duty-cycle and deployment gaps show."""
    pieces = _pieces(timed, origin, DAY)
    rows = []
    for site, group in pieces.groupby("site", sort=True):
        per_day = group.groupby("bin")
        for k in range(int(group["bin"].min()), int(group["bin"].max()) + 1):
            day = (origin + k * DAY).strftime("%Y-%m-%d")
            if k not in per_day.groups:
                rows.append([site, day, 0.0, 0, "", "", 0.0])
                continue
            g = per_day.get_group(k)
            recorded = g["seconds"].sum() / 3600
            span = (g["end"].max() - g["begin"].min()).total_seconds() / 3600
            rows.append([site, day, round(recorded, 6), g["recording"].nunique(),
                         g["begin"].min().strftime("%Y-%m-%d %H:%M:%S"), g["end"].max().strftime("%Y-%m-%d %H:%M:%S"),
                         round(max(0.0, span - recorded), 6)])
    return pd.DataFrame(rows, columns=["site", "date", "recorded_hours", "n_recordings", "first_start", "last_end",
                                       "gap_hours"])


def _diel(timed: pd.DataFrame, kept: pd.DataFrame, species: list[str], origin: pd.Timestamp) -> pd.DataFrame:
    """Per species and local hour of day: detections, recorded hours (all sites), and their ratio."""
    pieces = _pieces(timed, origin, HOUR)
    recorded = (pieces.groupby(pieces["bin"] % 24)["seconds"].sum() / 3600).reindex(range(24), fill_value=0.0)
    rows = []
    for name in species:
        counts = kept.loc[kept["species"] == name, "local"].dt.hour.value_counts().reindex(range(24), fill_value=0)
        for hour in range(24):
            hours = float(recorded[hour])
            rate = counts[hour] / hours if hours > 0 else math.nan
            rows.append([name, hour, int(counts[hour]), round(hours, 6), round(rate, 6)])
    return pd.DataFrame(rows, columns=["species", "hour", "detections", "recorded_hours", "detections_per_recorded_hour"])


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    """CSV with ``NA`` for missing cells, the way R's read.csv reads them by default."""
    with atomic_write(path) as tmp:
        frame.to_csv(tmp, index=False, na_rep="NA")


def plot_diel(diel: pd.DataFrame, path: str | Path, local_time: str) -> Path:
    """Detections per recorded hour by hour of day, one line per species, over the recorded hours."""
    from .plots import plt, save_figure

    fig, (ax, effort_ax) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for name, group in diel.groupby("species", sort=True):
        ax.plot(group["hour"], group["detections_per_recorded_hour"], marker="o", label=name)
    ax.set_ylabel("detections per recorded hour")
    ax.legend(fontsize=8)
    ax.set_title("diel activity, normalised by effort")
    hours = diel.drop_duplicates("hour").sort_values("hour")
    effort_ax.bar(hours["hour"], hours["recorded_hours"], color="grey")
    effort_ax.set_ylabel("recorded h")
    effort_ax.set_xlabel(f"hour of day ({local_time})")
    effort_ax.set_xticks(range(24))
    return save_figure(fig, path)


def write_summary(summary: Summary, out_dir: str | Path) -> list[Path]:
    """effort.csv, detection_history.csv, occasion_effort.csv, diel_activity.csv/.png and
    summary.json in ``out_dir``; every file written atomically."""
    out = ensure_output_dir(out_dir)
    written = []
    for name, frame in (("effort.csv", summary.effort), ("detection_history.csv", summary.detection_history),
                        ("occasion_effort.csv", summary.occasion_effort), ("diel_activity.csv", summary.diel)):
        _write_csv(frame, out / name)
        written.append(out / name)
    written.append(plot_diel(summary.diel, out / "diel_activity.png", summary.info["local_time"]))
    write_json(out / "summary.json", summary.info)
    written.append(out / "summary.json")
    return written


def history_matrix(history: pd.DataFrame, species: str) -> np.ndarray:
    """(sites, occasions) float matrix of one species' history, NaN for NA (for Python users)."""
    rows = history[history["species"] == species]
    return rows.drop(columns=["species", "site"]).astype("Float64").to_numpy(dtype=float, na_value=np.nan)
