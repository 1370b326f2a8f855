"""Click commands for field review: review, calibrate, set-thresholds.

The loop they serve: scan -> ``review`` (choose detections, write Raven tables, clips and
spectrogram sheets) -> a person fills in the Verdict column -> ``calibrate`` (per-species
thresholds) -> ``train --add-reviewed`` (learn from the mistakes) -> ``scan``/``detect
--thresholds-file`` or ``set-thresholds`` (ship them with the model). ``cli.py`` calls
``register(main)`` once; each command only translates options to the library.
"""

from __future__ import annotations

from pathlib import Path

import click


def _errors():
    from .cli import USER_ERRORS, _fail

    return USER_ERRORS, _fail


def _species(text: str | None, option: str) -> tuple[str, ...] | None:
    from .cli import _class_list

    return _class_list(text, option)


@click.command()
@click.argument("scan_dir", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output folder for the review.")
@click.option("--per-bin", default=5, show_default=True, type=click.IntRange(min=1),
              help="Detections drawn per score bin and species.")
@click.option("--bins", default=5, show_default=True, type=click.IntRange(min=1),
              help="Equal-width score bins from each species' threshold up to 1.")
@click.option("--seed", default=0, show_default=True, help="Seed of the draw.")
@click.option("--all", "take_all", is_flag=True, help="Review every detection instead of a sample.")
@click.option("--context", "context_s", default=1.0, show_default=True, type=click.FloatRange(0, 60),
              help="Seconds of audio kept before and after each detection in its clip.")
@click.option("--species", default=None, help="Comma-separated species to review (default: all detected).")
@click.option("--no-sheets", is_flag=True, help="Skip the spectrogram pages.")
@click.option("--overwrite", is_flag=True, help="Replace a review in OUT (never one whose tables hold verdicts).")
def review(scan_dir: Path, out: Path, per_bin: int, bins: int, seed: int, take_all: bool, context_s: float,
           species: str | None, no_sheets: bool, overwrite: bool) -> None:
    """Choose detections of SCAN_DIR for a person to verify.

    Per species, a seeded sample stratified over score bins (or --all). Writes
    OUT/raven/<recording>.review.selections.txt (open in Raven Pro over the recording; fill the
    Verdict column with yes, no or the right species), OUT/clips/<species>/<score>_... .wav,
    OUT/sheets/<species>_NN.png (spectrograms) and OUT/review.csv.
    """
    from .review import ReviewOptions, describe, review_scan

    user_errors, fail = _errors()
    try:
        chosen = _species(species, "--species")
        options = ReviewOptions(per_bin=per_bin, bins=bins, seed=seed, take_all=take_all, context_s=context_s,
                                species=chosen, sheets=not no_sheets)
        result = review_scan(scan_dir, out, options, overwrite)
    except (*user_errors, OSError) as e:
        fail(e)
    counts = describe(result)
    click.echo(f"{len(result.chosen)} detections to review"
               + (": " + ", ".join(f"{k} {v}" for k, v in counts.items()) if counts else ""))
    click.echo(f"  {out / 'raven'}/  ({len(result.tables)} Raven tables: fill the Verdict column with yes, no or a species)")
    click.echo(f"  {out / 'clips'}/  " + (f"{out / 'sheets'}/  " if result.sheets else "") + f"{out / 'review.csv'}")


@click.command()
@click.argument("reviewed", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="thresholds.yaml to write.")
@click.option("--scan", "scan_dir", type=click.Path(path_type=Path), default=None,
              help="Instead of review tables: a scan folder, judged against --truth.")
@click.option("--truth", multiple=True, type=click.Path(path_type=Path),
              help="With --scan: Raven truth tables (files or folders); a matched detection is 'yes', others 'no'.")
@click.option("--label-column", default="Species", show_default=True, help="With --truth: the species column.")
@click.option("--precision", "target", default=0.9, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Target precision of the detections at or above each threshold.")
@click.option("--bootstrap", default=1000, show_default=True, type=click.IntRange(min=0),
              help="Bootstrap resamples for the interval (0: none).")
@click.option("--seed", default=0, show_default=True)
@click.option("--min-verdicts", default=10, show_default=True, type=click.IntRange(min=2),
              help="Fewest verdicts a species needs for a threshold.")
@click.option("--min-each", default=3, show_default=True, type=click.IntRange(min=1),
              help="Fewest correct and fewest wrong verdicts a species needs.")
@click.option("--switch-off/--no-switch-off", default=True, show_default=True,
              help="Switch off (threshold 1) a species none of whose verdicts is correct, when that rules out "
                   "the target precision (at least --min-each verdicts).")
@click.option("--classes", default=None, help="Comma-separated class names a verdict may name besides those in the tables.")
@click.option("--plots", "plots_dir", type=click.Path(path_type=Path), default=None,
              help="Folder for the calibration PNGs (default: 'calibration' beside OUT).")
def calibrate(reviewed: tuple[Path, ...], out: Path, scan_dir: Path | None, truth: tuple[Path, ...], label_column: str,
              target: float, bootstrap: int, seed: int, min_verdicts: int, min_each: int, switch_off: bool,
              classes: str | None, plots_dir: Path | None) -> None:
    """Per-species thresholds from REVIEWED tables (files or folders), or from --scan and --truth.

    Fits P(correct | score) by logistic regression on logit(score) and writes, per species, the
    lowest threshold whose detections reach the target precision, with a bootstrap interval and
    the share of true detections it loses, plus a calibration plot. A species with too few
    verdicts gets no threshold and a message saying how many more are needed. A species none of
    whose verdicts is correct (one that does not live at the site) is switched off: threshold 1.
    """
    from .calibrate import CalibrationOptions, calibrate_to_files, verdicts_from_tables, verdicts_from_truth

    from .fsutil import check_output_file

    user_errors, fail = _errors()
    try:
        check_output_file(out)  # before any plot is drawn: a wrong -o leaves nothing half done
        if scan_dir is not None:
            if reviewed:
                raise click.UsageError("give review tables or --scan with --truth, not both")
            if not truth:
                raise click.UsageError("--scan needs --truth tables to judge the detections against")
            verdicts = verdicts_from_truth(scan_dir, list(truth), label_column)
            source = f"scan {scan_dir} judged against {', '.join(map(str, truth))}"
        else:
            if not reviewed:
                raise click.UsageError("give filled-in review tables (files or folders), or --scan with --truth")
            if truth:
                raise click.UsageError("--truth goes with --scan")
            known = _species(classes, "--classes")
            verdicts = verdicts_from_tables(list(reviewed), known)
            source = f"review tables {', '.join(map(str, reviewed))}"
        options = CalibrationOptions(precision=target, bootstrap=bootstrap, seed=seed, min_verdicts=min_verdicts,
                                     min_each=min_each, switch_off=switch_off)
        fitted = calibrate_to_files(verdicts, out, options, plots_dir, source)
    except (*user_errors, OSError) as e:
        fail(e)
    for species, r in fitted.items():
        if r.get("switched_off"):
            click.echo(r["reason"])
        elif r.get("threshold") is None:
            click.echo(f"  {r['reason']}", err=True)
        else:
            lo, hi = r.get("interval", [float("nan")] * 2)
            click.echo(f"{species}: threshold {r['threshold']:.4f} (95 % interval {lo:.3f}-{hi:.3f}), {r['n']} verdicts, "
                       f"{r['positives']} correct; fitted precision {r['precision_fitted']:.3f}, loses "
                       f"{100 * r['lost_true_reviewed']:.0f} % of the reviewed true detections")
    got = sum(r.get("threshold") is not None for r in fitted.values())
    off = sum(bool(r.get("switched_off")) for r in fitted.values())
    click.echo(f"{got} of {len(fitted)} species got a threshold" + (f" ({off} switched off)" if off else "") + f" -> {out}")


@click.command("set-thresholds")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("thresholds_file", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="The new checkpoint (.safetensors).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def set_thresholds_cmd(checkpoint: Path, thresholds_file: Path, out: Path, overwrite: bool) -> None:
    """Write a copy of CHECKPOINT that carries THRESHOLDS_FILE's per-species thresholds; scan
    uses them by default (--threshold and --thresholds-file override)."""
    from .calibrate import set_thresholds
    from .events import load_thresholds_file

    user_errors, fail = _errors()
    try:
        thresholds = load_thresholds_file(thresholds_file)
        path = set_thresholds(checkpoint, thresholds, out, overwrite)
    except (*user_errors, OSError) as e:
        fail(e)
    shown = ", ".join(f"{k}={v:g}" for k, v in sorted(thresholds.items())) or "none"
    click.echo(f"thresholds {shown} -> {path}")


def register(group: click.Group) -> None:
    """Add the review commands to the main group."""
    for command in (review, calibrate, set_thresholds_cmd):
        group.add_command(command)
