"""The command line: a thin translator from options to the library's functions."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from . import __version__
from .checkpoint import CheckpointError, load_checkpoint, read_metadata
from .config import ConfigError, load_config, valid_keys
from .data import DataError
from .devices import resolve_device

logger = logging.getLogger("primate_monitor")

EXIT_OK = 0
EXIT_USAGE = 2  # bad arguments, config, data or checkpoint (click also uses 2)
EXIT_SOME_FAILED = 3  # scan finished but some files could not be read (see failures.csv)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)


def _fail(error: Exception) -> None:
    """Report a user error (bad data, config, checkpoint) without a traceback."""
    click.echo(f"error: {error}", err=True)
    sys.exit(EXIT_USAGE)


USER_ERRORS = (ConfigError, DataError, CheckpointError, FileNotFoundError, ValueError)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("--skip-bad", is_flag=True, help="Skip unreadable clips (listed in OUT/skipped_clips.csv).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Overrides the config's device.")
@click.pass_obj
def train(obj: dict, data: Path, config_path: Path | None, overrides: tuple[str, ...], out: Path, resume: bool,
          skip_bad: bool, device: str | None) -> None:
    """Train a model on labelled clips in DATA (ComParE layout, class folders or Raven tables)."""
    from .train import BEST_NAME, train as run_train

    extra = list(overrides) + (["skip_bad=true"] if skip_bad else []) + ([f"device={device}"] if device else [])
    try:
        config = load_config(config_path, extra)
        best = run_train(data, out, config, resume=resume, progress=not obj["quiet"])
    except USER_ERRORS as e:
        _fail(e)
    devel = best.get("devel", {})
    click.echo(f"best devel UAR {devel.get('uar', float('nan')):.4f}, mAP {devel.get('map', float('nan')):.4f} "
               f"at step {best.get('step')} ({best.get('weights')} weights) -> {out / BEST_NAME}")


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--split", default="devel", show_default=True, help="Which split of DATA to score.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--hop", "hop_seconds", default=1.0, show_default=True, help="Hop of the windows over long clips, s.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable clips instead of failing.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def evaluate(checkpoint: Path, data: Path, split: str, out: Path, hop_seconds: float, skip_bad: bool, device: str) -> None:
    """Score a split of DATA with CHECKPOINT; write metrics, predictions and a confusion matrix."""
    from .evaluate import evaluate as run_evaluate

    try:
        model = load_checkpoint(checkpoint, resolve_device(device))
        metrics = run_evaluate(model, data, split, out, hop_seconds=hop_seconds, skip_bad=skip_bad)
    except USER_ERRORS as e:
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


@main.command("config-keys")
def config_keys() -> None:
    """List every training config key (each can be set with --set KEY=VALUE)."""
    click.echo("\n".join(valid_keys()))


if __name__ == "__main__":
    main()
