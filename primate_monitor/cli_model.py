"""Commands that make a variant of a checkpoint for scanning: ``quantize`` (int8 calibration).

Kept apart from cli.py so each command module stays small; ``register`` adds them to the group.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--calibrate", "audio", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Audio to calibrate on (repeat, or give folders): real recordings like those you will scan.")
@click.option("--seconds-per-file", type=click.FloatRange(min=0, min_open=True), default=120.0, show_default=True,
              help="Seconds read from the start of each file.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="Where to write (default: CHECKPOINT's name with .int8.safetensors, beside it, where scan looks).")
def quantize(checkpoint: Path, audio: tuple[Path, ...], seconds_per_file: float, out: Path | None) -> None:
    """Calibrate CHECKPOINT for int8 scans: record the activation ranges of its convolutions on
    real audio and save them beside the checkpoint, with a check of int8 against fp32 on that
    audio. Where the check passes, `scan` runs int8 by default on the CPU (--precision auto)."""
    from .audio import find_audio_files
    from .checkpoint import load_checkpoint
    from .cli import USER_ERRORS, _fail
    from .quantize import calibrate

    try:
        files: list[Path] = []
        for p in audio:  # the scan's own discovery: a missing path is an error, a folder is walked
            found = [f for _, f in find_audio_files([p])]
            if not found:
                raise ValueError(f"{p}: no audio files in this folder")
            files += found
        model = load_checkpoint(checkpoint)
        path = calibrate(model, files, out, seconds_per_file)
    except (*USER_ERRORS, OSError) as e:
        _fail(e)
    from .int8_check import check_passed, describe_check
    from .quantize import read_calibration

    check = read_calibration(path, tensors=False)[0]["agreement"]
    click.echo(f"int8 calibration from {len(files)} file(s) -> {path}\n  check: {describe_check(check)}\n"
               + (f"  scans of {checkpoint} on the CPU now run in int8 by default (--precision auto; fp32 with --precision fp32)"
                  if check_passed(check) else "  not enough for --precision auto (see `scan --help`): scans stay fp32 "
                  "unless --precision int8; calibrate on more audio (a few minutes) to change that"))


def register(group: click.Group) -> None:
    """Add the checkpoint-variant commands to the main group."""
    group.add_command(quantize)
