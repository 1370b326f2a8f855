"""Click commands for the science outputs: embed, probe, tsne, summarize.

Kept apart from ``cli.py`` so the scanning and training commands stay short; ``cli.py``
calls ``register(main)`` once. Each command only translates options to the library.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click


def _errors():
    from .cli import USER_ERRORS, _fail

    return USER_ERRORS, _fail


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="INPUT...")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output folder (embeddings.parquet).")
@click.option("--input", "kind", type=click.Choice(["auto", "clips", "recordings"]), default="auto", show_default=True,
              help="clips: INPUT is a labelled clip set (any layout train reads); recordings: files/folders, "
                   "windows every --hop. auto: clips for a ComParE folder (lab/), else recordings.")
@click.option("--hop", "hop_seconds", default=1.0, show_default=True, help="Recordings: seconds between window starts.")
@click.option("--pool", type=click.Choice(["mean", "max"]), default="mean", show_default=True,
              help="Clips longer than the window: pool their windows' embeddings this way.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Clips: data setting (e.g. raven_label_column=Species, data_format=folders); repeatable.")
@click.option("--channel", type=int, default=None, help="Recordings: 0-based channel (default: mix down).")
@click.option("--batch-size", default=32, show_default=True, help="Windows per network call.")
@click.option("--skip-bad", is_flag=True, help="Clips: skip unreadable clips (listed in embed_failures.csv).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Discard earlier embeddings in OUT instead of resuming.")
@click.pass_obj
def embed(obj: dict, checkpoint: Path, inputs: tuple[Path, ...], out: Path, kind: str, hop_seconds: float, pool: str,
          overrides: tuple[str, ...], channel: int | None, batch_size: int, skip_bad: bool, device: str,
          overwrite: bool) -> None:
    """Write OUT/embeddings.parquet: the penultimate layer of CHECKPOINT for every clip of a
    labelled set, or every window of recordings. Rerun the same command to resume."""
    from .checkpoint import load_checkpoint
    from .config import parse_overrides
    from .devices import resolve_device
    from .embed import embed as run_embed

    user_errors, fail = _errors()
    try:
        model = load_checkpoint(checkpoint, resolve_device(device))
        summary = run_embed(model, list(inputs), out, kind, hop_seconds, pool, channel, batch_size,
                            parse_overrides(overrides), skip_bad, overwrite, progress=not (obj or {}).get("quiet"))
    except user_errors as e:
        fail(e)
    except KeyboardInterrupt:
        click.echo(f"interrupted; finished parts are kept in {out}. Rerun the same command to resume.", err=True)
        sys.exit(130)
    done = f", {summary.done_before} done earlier" if summary.done_before else ""
    click.echo(f"embedded {summary.rows} {'clips' if summary.kind == 'clips' else 'windows'} "
               f"({summary.parts} parts{done}) with {model.name} -> {out / 'embeddings.parquet'}")
    if summary.failed:
        click.echo(f"  {len(summary.failed)} item(s) could not be embedded: see {out / 'embed_failures.csv'}", err=True)
        sys.exit(3)


@click.command()
@click.argument("embeddings", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output folder (probe.safetensors).")
@click.option("--kind", type=click.Choice(["logreg", "svm"]), default="logreg", show_default=True,
              help="logreg: logistic regression, balanced class weights; svm: LinearSVC (the paper) + Platt scaling.")
@click.option("--C", "c", default=1.0, show_default=True, help="Inverse regularisation strength.")
@click.option("--train-split", default="train", show_default=True)
@click.option("--devel-split", default="devel", show_default=True)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="The checkpoint the embeddings were made with, if it moved (its sha256 must match).")
@click.option("--reject-class", default=None, help="The probe's reject class (default: the checkpoint's).")
def probe(embeddings: Path, out: Path, kind: str, c: float, train_split: str, devel_split: str,
          checkpoint: Path | None, reject_class: str | None) -> None:
    """Fit a linear probe on EMBEDDINGS (train split), report it on devel, and save
    OUT/probe.safetensors: a full checkpoint for `scan --model`."""
    from .probe import train_probe

    user_errors, fail = _errors()
    try:
        result = train_probe(embeddings, out, kind, c, train_split, devel_split, checkpoint, reject_class)
    except user_errors as e:
        fail(e)
    m = result["metrics"]
    scores = f"{devel_split}: UAR {m['uar']:.4f}, mAP {m['map']:.4f} on {m['n_clips']} rows" if m else f"no {devel_split} rows"
    click.echo(f"{kind} probe on {result['train_rows']} {train_split} rows, {len(result['classes'])} classes; "
               f"{scores} -> {result['checkpoint']}")


@click.command()
@click.argument("embeddings", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="Image to write: .png, .pdf, .svg or .jpg.")
@click.option("--split", default=None, help="Only rows of this split (default: all).")
@click.option("--max-points", default=5000, show_default=True, help="Subsample larger files (same share per label).")
@click.option("--perplexity", default=30.0, show_default=True)
@click.option("--seed", default=0, show_default=True)
def tsne(embeddings: Path, out: Path, split: str | None, max_points: int, perplexity: float, seed: int) -> None:
    """Draw a 2-D t-SNE map of EMBEDDINGS coloured by label."""
    from .plots import image_format
    from .tsne_map import tsne_map

    user_errors, fail = _errors()
    try:
        image_format(out)  # an unknown suffix fails before the map is computed
        path = tsne_map(embeddings, out, split, max_points, perplexity, seed)
    except user_errors as e:
        fail(e)
    click.echo(f"t-SNE map -> {path}")


@click.command()
@click.argument("scan_dir", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output folder for the tables.")
@click.option("--site-from", type=click.Choice(["folder", "prefix", "regex"]), default="folder", show_default=True,
              help="folder: the folder holding each file; prefix: the file name before its first '_'; "
                   "regex: --site-regex on the recording's name.")
@click.option("--site-regex", default=None, help="With --site-from regex: group 'site', else group 1, else the match.")
@click.option("--occasion", default="1d", show_default=True, help="Occasion length: 1d, 6h, 12h, 7d, ...")
@click.option("--min-score", default=0.0, show_default=True, help="Peak score a detection needs to count.")
@click.option("--thresholds-file", type=click.Path(path_type=Path), default=None,
              help="YAML 'species: threshold'; species not in it use --min-score.")
@click.option("--utc-offset", default="+00:00", show_default=True, help="Local time = UTC + this (e.g. -05:00).")
@click.option("--species", default=None, help="Comma-separated species (default: the scan's classes).")
def summarize(scan_dir: Path, out: Path, site_from: str, site_regex: str | None, occasion: str, min_score: float,
              thresholds_file: Path | None, utc_offset: str, species: str | None) -> None:
    """Effort, detection histories (for R unmarked) and diel activity from a scan's SCAN_DIR."""
    from .cli import _class_list
    from .events import load_thresholds_file
    from .summarize import SummaryOptions, write_summary
    from .summarize import summarize as run_summarize

    user_errors, fail = _errors()
    try:
        options = SummaryOptions(site_from=site_from, site_regex=site_regex, occasion=occasion, min_score=min_score,
                                 thresholds=load_thresholds_file(thresholds_file) if thresholds_file else {},
                                 utc_offset=utc_offset,
                                 species=_class_list(species, "--species"))
        summary = run_summarize(scan_dir, options)
        write_summary(summary, out)
    except user_errors as e:
        fail(e)
    info = summary.info
    skipped = f", {info['recordings_without_start']} without a start time left out" if info["recordings_without_start"] else ""
    click.echo(f"{len(info['sites'])} site(s), {info['occasions']} occasion(s) from {info['first_occasion']}, "
               f"{info['recordings_used']} recording(s){skipped}, {info['detections_used']} detection(s) counted -> {out}")


def register(group: click.Group) -> None:
    """Add embed, probe, tsne and summarize to the ``primate-monitor`` group."""
    for command in (embed, probe, tsne, summarize):
        group.add_command(command)
