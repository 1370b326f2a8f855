"""Recording start times, tz-aware UTC, from AudioMoth comments or file names.

Never guesses: anything that is not clearly a date, time and zone gives None.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

logger = logging.getLogger(__name__)

# YYYYMMDD_HHMMSS (AudioMoth, Song Meter "PREFIX_") or YYYY-MM-DD_HHMMSS
# (e.g. "PUMA_2014-02-07_074500"); not glued to other digits, so suffixes
# like "_22.08" are fine.
_NAME_RE = re.compile(
    r"(?<!\d)(?P<y>\d{4})(?P<sep>-?)(?P<mo>\d{2})(?P=sep)(?P<d>\d{2})_(?P<h>\d{2})(?P<mi>\d{2})(?P<s>\d{2})(?!\d)"
)
# A zone written right after the time, e.g. "PUMA_2014-02-07_074500_EST".
_NAME_ZONE_RE = re.compile(r"^[_-]?(?P<zone>[A-Za-z]{1,5})(?![A-Za-z0-9])")
_UTC_ZONE_NAMES = frozenset({"UTC", "GMT", "Z"})
# Local zone abbreviations seen in recorder file names: the name is then
# local time, and abbreviations are ambiguous (CST, IST), so we give None.
_LOCAL_ZONE_NAMES = frozenset({
    "EST", "EDT", "CST", "CDT", "MST", "MDT", "PST", "PDT", "AKST", "HST", "ECT", "COT", "PET", "BRT", "ART",
    "CET", "CEST", "WET", "WEST", "EET", "EEST", "BST", "IST", "WAT", "CAT", "EAT", "SAST",
    "AEST", "AEDT", "ACST", "AWST", "NZST", "NZDT", "JST", "KST", "HKT", "SGT", "ICT", "WIB",
})
# AudioMoth: "Recorded at 05:30:00 12/03/2024 (UTC+1) by AudioMoth ..." (DD/MM/YYYY).
_COMMENT_RE = re.compile(
    r"Recorded at (?P<h>\d{2}):(?P<mi>\d{2}):(?P<s>\d{2}) (?P<d>\d{2})/(?P<mo>\d{2})/(?P<y>\d{4}) "
    r"\(UTC(?:(?P<sign>[+-])(?P<oh>\d{1,2})(?::(?P<om>\d{2}))?)?\)"
)
MAX_UTC_OFFSET_HOURS = 14  # the largest offset in use (Line Islands, UTC+14)
# Years a recording can plausibly start in. Outside them a name like 99991231_235959 is not a
# date (and its end time would overflow datetime past year 9999), so the start is unknown.
MIN_YEAR, MAX_YEAR = 1900, 2999


def _datetime(m: re.Match[str], tz: timezone) -> datetime | None:
    if not MIN_YEAR <= int(m["y"]) <= MAX_YEAR:
        logger.warning("%s: year %s is outside %d-%d; start time left unknown", m.string, m["y"], MIN_YEAR, MAX_YEAR)
        return None
    try:
        return datetime(int(m["y"]), int(m["mo"]), int(m["d"]), int(m["h"]), int(m["mi"]), int(m["s"]), tzinfo=tz)
    except ValueError:  # month 13, 31 April, hour 24, ...
        return None


def start_from_filename(name: str) -> datetime | None:
    """Start time from a file name or stem, as UTC; None if absent, invalid or in a local zone.

    The last YYYYMMDD_HHMMSS / YYYY-MM-DD_HHMMSS in the stem wins. Names are
    taken as UTC (AudioMoth names are UTC by default), except when a local
    zone abbreviation follows the time (e.g. "_EST"): then None.
    """
    stem = Path(name).stem
    matches = list(_NAME_RE.finditer(stem))
    if not matches:
        return None
    m = matches[-1]
    zone_match = _NAME_ZONE_RE.match(stem[m.end():])
    zone = zone_match["zone"].upper() if zone_match else None
    if zone in _LOCAL_ZONE_NAMES:
        logger.debug("%s: time is in local zone %s, not converting", name, zone)
        return None
    return _datetime(m, timezone.utc)


def start_from_comment(comment: str | None) -> datetime | None:
    """Start time in UTC from an AudioMoth comment; None if absent or unparseable.

    "05:30:00 12/03/2024 (UTC+1)" is 04:30Z; "(UTC+5:30)" and "(UTC-5)" work too.
    """
    if not comment:
        return None
    m = _COMMENT_RE.search(comment)
    if m is None:
        return None
    offset = timedelta(0)
    if m["sign"]:
        hours, minutes = int(m["oh"]), int(m["om"] or 0)
        if hours > MAX_UTC_OFFSET_HOURS or minutes >= 60:
            return None
        offset = timedelta(hours=hours, minutes=minutes) * (1 if m["sign"] == "+" else -1)
    local = _datetime(m, timezone(offset))
    return None if local is None else local.astimezone(timezone.utc)


def recording_start(path: str | Path, comment: str | None) -> datetime | None:
    """Start time in UTC: the comment first (it names its zone), else the file name, else None."""
    return start_from_comment(comment) or start_from_filename(Path(path).name)
