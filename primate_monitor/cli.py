"""The command line: a thin translator from options to the library's functions."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from . import __version__
from .checkpoint import CheckpointError, load_checkpoint, read_metadata
from .config import ConfigError, load_config
from .data import DataError
from .devices import resolve_device
from .writers import EXPORT_FORMATS

logger = logging.getLogger("primate_monitor")

EXIT_OK = 0
EXIT_USAGE = 2  # bad arguments, config, data or checkpoint (click also uses 2)
EXIT_SOME_FAILED = 3  # scan finished but some files could not be read (see failures.csv)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)


def _fail(error: Exception) -> None:
    """Report a user error (bad data, config, checkpoint, an output that cannot be written)
    without a traceback, naming the file and the reason."""
    if isinstance(error, OSError) and not isinstance(error, FileNotFoundError) and error.filename:
        from .fsutil import printable

        click.echo(f"error: cannot write {printable(str(error.filename))}: {error.strerror or error}", err=True)
    else:
        click.echo(f"error: {error}", err=True)
    sys.exit(EXIT_USAGE)


USER_ERRORS = (ConfigError, DataError, CheckpointError, FileNotFoundError, ValueError)


def _late_verbose(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    if value:
        _setup_logging(value, False)


def _late_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        _setup_logging(0, True)
        if isinstance(ctx.obj, dict):
            ctx.obj["quiet"] = True


class _Group(click.Group):
    """Accepts -q/-v after the subcommand too (``scan -q``), as users type them."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        taken = {opt for p in cmd.params for opt in getattr(p, "opts", [])}
        if not taken & {"-q", "--quiet", "-v", "--verbose"}:
            cmd.params += [
                click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_late_verbose,
                             help="More logging (debug); also accepted before the command."),
                click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, callback=_late_quiet,
                             help="Only warnings and errors, no progress bars; also accepted before the command."),
            ]
        super().add_command(cmd, name)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="primate-monitor")
@click.option("-v", "--verbose", count=True, help="More logging (debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Find primate calls in long forest recordings (CNN10 after Pellegrini 2021)."""
    _setup_logging(verbose, quiet)
    ctx.obj = {"quiet": quiet}


@main.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path), help="YAML config (configs/*.yaml).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key; repeatable.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output folder for checkpoints and logs.")
@click.option("--resume", is_flag=True, help="Continue the run saved in OUT.")
@click.option("--overwrite", is_flag=True,
              help="Replace the run in OUT (only the files train writes: checkpoints, log, skipped list).")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable clips (listed in OUT/skipped_clips.csv).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Overrides the config's device.")
@click.option("--add-reviewed", "reviewed", multiple=True, type=click.Path(path_type=Path),
              help="Filled-in review tables (files or folders, from `review`): 'no' becomes a background clip, "
                   "a species name a clip of it, 'yes' one of the detected species; train split only. Repeatable.")
@click.pass_obj
def train(obj: dict, data: Path, config_path: Path | None, overrides: tuple[str, ...], out: Path, resume: bool,
          overwrite: bool, skip_bad: bool, device: str | None, reviewed: tuple[Path, ...]) -> None:
    """Train a model on labelled clips in DATA (ComParE layout, class folders or Raven tables).

    OUT must be a new or empty folder, or hold a run to continue with --resume (or to
    replace with --overwrite). Ctrl-C saves the state; rerun with --resume to continue.
    """
    from .train import BEST_NAME, RESUME_NAME, train as run_train

    extra = list(overrides) + (["skip_bad=true"] if skip_bad else []) + ([f"device={device}"] if device else [])
    try:
        config = load_config(config_path, extra)
        best = run_train(data, out, config, resume=resume, progress=not obj["quiet"], overwrite=overwrite,
                         reviewed=reviewed)
    except (*USER_ERRORS, OSError) as e:
        _fail(e)
    except KeyboardInterrupt:
        if (out / RESUME_NAME).is_file():
            click.echo("interrupted; rerun with --resume to continue from the last saved step", err=True)
        else:
            click.echo("interrupted before training started; nothing was saved to resume", err=True)
        sys.exit(130)
    devel = best.get("devel", {})
    click.echo(f"best devel UAR {devel.get('uar', float('nan')):.4f}, mAP {devel.get('map', float('nan')):.4f} "
               f"at step {best.get('step')} ({best.get('weights')} weights) -> {out / BEST_NAME}")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="[CHECKPOINT] DATA")
@click.option("--split", default="devel", show_default=True, help="Which split of DATA to score.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--hop", "hop_seconds", default=1.0, show_default=True, help="Hop of the windows over long clips, s.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable clips instead of failing.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def evaluate(paths: tuple[Path, ...], split: str, out: Path, hop_seconds: float, skip_bad: bool, device: str) -> None:
    """Score a split of DATA with CHECKPOINT (default: the bundled demo model); write
    metrics, predictions and a confusion matrix."""
    from .bundled import default_model_path
    from .evaluate import evaluate as run_evaluate

    if len(paths) > 2:
        raise click.UsageError("expected [CHECKPOINT] DATA")
    try:
        checkpoint, data = paths if len(paths) == 2 else (default_model_path(), paths[0])
        model = load_checkpoint(checkpoint, resolve_device(device))
        metrics = run_evaluate(model, data, split, out, hop_seconds=hop_seconds, skip_bad=skip_bad)
    except (*USER_ERRORS, OSError) as e:
        _fail(e)
    if metrics is None:
        click.echo(f"{split}: unlabelled; wrote {out / 'predictions.csv'}")
    else:
        click.echo(f"{split}: UAR {metrics['uar']:.4f}, mAP {metrics['map']:.4f} on {metrics['n_clips']} clips -> {out}")


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
def info(checkpoint: Path) -> None:
    """Print a checkpoint's metadata as JSON."""
    try:
        meta = read_metadata(checkpoint)
    except CheckpointError as e:
        _fail(e)
    click.echo(json.dumps(meta, indent=2, sort_keys=True))


def _class_list(classes: str | None, option: str = "--classes") -> tuple[str, ...] | None:
    """A comma-separated species option (``--classes a,b``) as a tuple; None when not given; an
    error naming ``option`` when it names no species (``--classes ,``)."""
    if classes is None:
        return None
    chosen = tuple(dict.fromkeys(c.strip() for c in classes.split(",") if c.strip()))
    if not chosen:
        raise click.BadParameter(f"needs at least one species name, e.g. {option} chimpanzee,gibbon; got {classes!r}",
                                 param_hint=option)
    return chosen


def _event_options(thresholds: tuple[str, ...], classes: str | None, min_windows: int, max_gap: float,
                   thresholds_file: Path | None = None):
    """Per species, the first that applies: --threshold SPECIES=T, --thresholds-file, a bare
    --threshold T, (scan only) the model's own calibrated thresholds, 0.5."""
    from .events import EventOptions, load_thresholds_file, parse_thresholds

    default, per_class = parse_thresholds(thresholds) if thresholds else (0.5, {})
    if thresholds_file is not None:
        per_class = load_thresholds_file(thresholds_file) | per_class
    chosen = _class_list(classes)
    return EventOptions(threshold=default, class_thresholds=per_class, classes=chosen, min_windows=min_windows,
                        max_gap_s=max_gap)


EVENT_OPTIONS = [
    click.option("--threshold", "thresholds", multiple=True, metavar="T|SPECIES=T",
                 help="Score threshold, default 0.5; per class as chimpanzee=0.7; 1 switches a species off. Repeatable."),
    click.option("--thresholds-file", type=click.Path(path_type=Path), default=None,
                 help="YAML of per-species thresholds (calibrate's thresholds.yaml, or 'species: T'); "
                      "--threshold SPECIES=T overrides a species in it."),
    click.option("--classes", default=None, help="Comma-separated species to report (default: all)."),
    click.option("--min-windows", default=1, show_default=True, help="Drop events with fewer windows."),
    click.option("--max-gap", default=0.0, show_default=True, help="Merge windows of a species this many s apart."),
]


def event_options(fn):
    for option in reversed(EVENT_OPTIONS):
        fn = option(fn)
    return fn


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="Checkpoint (.safetensors); default: the bundled demo model.")
@click.option("--hop", "hop_seconds", default=1.0, show_default=True, help="Seconds between window starts.")
@event_options
@click.option("--mode", type=click.Choice(["auto", "fast", "exact"]), default="auto", show_default=True,
              help="fast: windows share convolutions; exact: each window on its own; auto: fast when windows overlap.")
@click.option("--channel", type=int, default=None, help="0-based channel to scan (default: mix down).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch-size", default=32, show_default=True, help="Windows per network call (exact mode).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "int8"]), default="auto", show_default=True,
              help="int8: the convolutions in 8-bit integers on the CPU, about 1.6x faster, scores within ~0.01; "
                   "needs the checkpoint's calibration (`primate-monitor quantize`; the bundled model has one). "
                   "auto: int8 on the CPU when that calibration's own check found int8 deciding as fp32 does, "
                   "else fp32 (run.json records which ran).")
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="Threads decoding upcoming files (serial), or worker processes (processes). "
                   "Default 1; on a GPU, 16 decoder threads (at most one per CPU core).")
@click.option("--executor", type=click.Choice(["serial", "processes", "dask"]), default=None,
              help="Where recordings are scanned: this process (serial, the default), --workers local processes, "
                   "or a Dask cluster (dask: --cluster, default local:WORKERS). Never changes the results.")
@click.option("--cluster", default=None, metavar="local:N|tcp://HOST:PORT|slurm:N",
              help="Dask cluster: N local worker processes, a running scheduler, or N dask-jobqueue jobs.")
@click.option("--piece-hours", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Cut longer recordings into pieces of about this many hours, scored by separate workers "
                   "(default on a GPU, unless --workers 1: 1 hour, so several threads decode one long file).")
@click.option("--torch-threads", type=click.IntRange(min=1), default=None,
              help="Torch threads per worker process (default 1 for processes and local:N).")
@click.option("--save-window-scores", is_flag=True, help="Also write windows.parquet (for `detect`).")
@click.option("--plots", is_flag=True, help="Draw a spectrogram with detections per recording in OUT/plots.")
@click.option("--overwrite", is_flag=True, help="Discard an earlier scan in OUT instead of resuming it.")
@click.pass_obj
def scan(obj: dict, paths: tuple[Path, ...], out: Path, model_path: Path | None, hop_seconds: float,
         thresholds: tuple[str, ...], thresholds_file: Path | None, classes: str | None, min_windows: int, max_gap: float, mode: str,
         channel: int | None, device: str, batch_size: int, precision: str, workers: int | None, executor: str | None,
         cluster: str | None, piece_hours: float | None, torch_threads: int | None, save_window_scores: bool, plots: bool,
         overwrite: bool) -> None:
    """Scan recordings (files or folders, recursively) for primate calls.

    Writes OUT/detections.parquet, OUT/raven/<recording>.selections.txt, recordings.csv,
    failures.csv and run.json. Rerun the same command to resume an interrupted scan.
    Exit status: 0 all files scanned, 3 some files failed (see failures.csv), 2 bad usage.
    """
    from .scan_run import ScanError, scan as run_scan
    from .scanner import ScanConfig

    try:
        config = ScanConfig(hop_seconds=hop_seconds,
                            events=_event_options(thresholds, classes, min_windows, max_gap, thresholds_file),
                            mode=mode, channel=channel, batch_size=batch_size, precision=precision,
                            model_thresholds=not any("=" not in t for t in thresholds))  # a bare --threshold T
        summary = run_scan(list(paths), out, config, model_path, device, workers, save_window_scores, overwrite,
                           progress=not obj["quiet"], executor=executor, cluster=cluster,
                           piece_seconds=piece_hours * 3600 if piece_hours else None, torch_threads=torch_threads)
        if plots:
            from .plots import plot_scan

            plot_scan(out)
    except (ScanError, *USER_ERRORS, OSError) as e:
        _fail(e)
    except KeyboardInterrupt:
        click.echo(f"interrupted; finished recordings are kept in {out}. Rerun the same command to resume.", err=True)
        sys.exit(130)
    click.echo(f"scanned {summary.scanned}/{summary.files} recordings ({summary.audio_hours:.2f} h of audio"
               f"{f', {summary.skipped_done} done earlier' if summary.skipped_done else ''}): {summary.events} detections, "
               f"{summary.failed} failed, {summary.times_real_time:.0f}x real time")
    if summary.species_counts:
        click.echo("  " + ", ".join(f"{name} {n}" for name, n in summary.species_counts.items()))
    click.echo(f"  {out / 'detections.parquet'}\n  {out / 'raven'}/  (Raven Pro selection tables)")
    if summary.failed:
        click.echo(f"  {summary.failed} file(s) could not be scanned fully: see {out / 'failures.csv'}", err=True)
        sys.exit(EXIT_SOME_FAILED)


@main.command()
@click.argument("scan_dir", type=click.Path(path_type=Path))
@event_options
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None, help="Where to write (default SCAN_DIR).")
def detect(scan_dir: Path, thresholds: tuple[str, ...], thresholds_file: Path | None, classes: str | None,
           min_windows: int, max_gap: float, out: Path | None) -> None:
    """Rebuild events and Raven tables from SCAN_DIR/windows.parquet with new thresholds."""
    from .redetect import redetect

    try:
        events = redetect(scan_dir, _event_options(thresholds, classes, min_windows, max_gap, thresholds_file), out)
    except (*USER_ERRORS, OSError) as e:
        _fail(e)
    click.echo(f"{len(events)} detections -> {(out or scan_dir) / 'detections.parquet'}")


@main.command()
@click.argument("detections", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), required=True)
@click.option("--min-score", default=0.0, show_default=True, help="Keep events with a peak score at least this (1: none).")
@click.option("--classes", default=None, help="Comma-separated species to keep.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--overwrite", is_flag=True, help="Replace files of the same names in OUT (refused otherwise).")
def export(detections: Path, fmt: str, min_score: float, classes: str | None, out: Path, overwrite: bool) -> None:
    """Convert DETECTIONS (a detections.parquet) to raven, csv, audacity or parquet."""
    from .redetect import export as run_export

    chosen = _class_list(classes)
    try:
        written = run_export(detections, fmt, out, min_score, chosen, overwrite)
    except (*USER_ERRORS, OSError) as e:
        _fail(e)
    click.echo(f"wrote {len(written)} file(s) under {out}")


def _detections_path(path: Path) -> Path:
    return path / "detections.parquet" if path.is_dir() else path


@main.command("evaluate-events")
@click.argument("detections", type=click.Path(path_type=Path))
@click.argument("truth", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--label-column", default="Species", show_default=True, help="Species column of the truth tables.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None, help="Also write the metrics as JSON here.")
def evaluate_events_cmd(detections: Path, truth: tuple[Path, ...], label_column: str, out: Path | None) -> None:
    """Event-level precision/recall/F1 of DETECTIONS (scan folder or .parquet) against Raven
    TRUTH tables (files, or folders searched for *.selections.txt)."""
    from .event_eval import evaluate_events, find_truth_tables
    from .fsutil import check_output_file, write_json
    from .scan_run import scan_index
    from .writers import model_species, read_parquet

    try:
        if out is not None:
            check_output_file(out)
        tables = find_truth_tables(list(truth))
        events_path = _detections_path(detections)
        events = read_parquet(events_path)
        result = evaluate_events(events, tables, label_column, scan_index(events_path.parent),
                                 classes=model_species(events)[0] or None)
        if out is not None:
            write_json(out, result)
    except (*USER_ERRORS, OSError) as e:
        _fail(e)
    click.echo(f"{'species':<16}{'precision':>10}{'recall':>8}{'F1':>7}{'TP':>5}{'det':>5}{'truth':>6}{'false/h':>9}")
    for species, m in result["per_class"].items():
        click.echo(f"{species:<16}{m['precision']:>10.3f}{m['recall']:>8.3f}{m['f1']:>7.3f}"
                   f"{m['true_positives']:>5}{m['detections']:>5}{m['truth']:>6}{m['false_per_hour']:>9.1f}")
    macro = result["macro"]
    click.echo(f"{'macro':<16}{macro['precision']:>10.3f}{macro['recall']:>8.3f}{macro['f1']:>7.3f}")
    click.echo(f"{len(result['recordings'])} recordings with truth, {result['audio_hours']:.3f} h of audio; "
               f"rule: {result['rule']}")


@main.command()
@click.argument("detections", type=click.Path(path_type=Path))
@click.argument("recording", type=click.Path(path_type=Path))
@click.option("--truth", type=click.Path(path_type=Path), default=None, help="Raven truth table to draw too.")
@click.option("--label-column", default="Species", show_default=True)
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="Image to write: .png, .pdf, .svg or .jpg.")
def plot(detections: Path, recording: Path, truth: Path | None, label_column: str, out: Path) -> None:
    """Draw RECORDING's spectrogram with its detections (and truth boxes) as an image."""
    from .event_eval import read_truth
    from .plots import image_format, plot_detections
    from .writers import read_parquet

    from .audio import AudioReadError
    from .scan_run import find_recording

    from .fsutil import check_output_file

    try:
        check_output_file(out)
        image_format(out)  # an unknown suffix fails before the spectrogram is computed
        events = read_parquet(_detections_path(detections))
        rel = find_recording(events, _detections_path(detections).parent, recording)
        mine = events[events["recording"] == rel]
        truth_table = read_truth(truth, label_column) if truth is not None else None
        plot_detections(recording, mine, out, truth_table)
    except (*USER_ERRORS, AudioReadError, OSError) as e:
        _fail(e)
    click.echo(f"{len(mine)} detections drawn -> {out}")


@main.command("config-keys")
def config_keys() -> None:
    """List every training config key with its type, default and meaning (set one with --set KEY=VALUE)."""
    from .config import describe_keys

    rows = [(name, kind, "null" if default is None else str(default).lower() if isinstance(default, bool) else str(default), meaning)
            for name, kind, default, meaning in describe_keys()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for name, kind, default, meaning in rows:
        click.echo(f"{name:<{widths[0]}}  {kind:<{widths[1]}}  {default:<{widths[2]}}  {meaning}".rstrip())


from .cli_science import register as _register_science  # noqa: E402  (embed, probe, tsne, summarize)

_register_science(main)

from .cli_review import register as _register_review  # noqa: E402  (review, calibrate, set-thresholds)

_register_review(main)

from .cli_model import register as _register_model  # noqa: E402  (quantize)

_register_model(main)


if __name__ == "__main__":
    main()
