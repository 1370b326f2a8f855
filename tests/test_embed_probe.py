"""Embeddings, linear probes and the t-SNE map on real audio: sample_data/clips and
sample_data/recordings with the bundled demo model (CNN10, 8 kHz, 5 classes)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from primate_monitor import embed as embed_module
from primate_monitor.audio import load_audio
from primate_monitor.bundled import default_model_path
from primate_monitor.checkpoint import load_checkpoint
from primate_monitor.cli import main
from primate_monitor.embed import EMBEDDINGS_FILE, STATE_DIR, EmbedError, embed, read_embeddings
from primate_monitor.evaluate import evaluate
from primate_monitor.probe import train_probe
from primate_monitor.scanner import scan_recording
from primate_monitor.windows import window_starts

ROOT = Path(__file__).parents[1]
CLIPS = ROOT / "sample_data" / "clips"
RECORDINGS = ROOT / "sample_data" / "recordings"
CLASSES = ["background", "chimpanzee", "gibbon", "howler_monkey", "titi_monkey"]


@pytest.fixture(scope="module")
def demo():
    return load_checkpoint(default_model_path(), "cpu")


@pytest.fixture(scope="module")
def clip_embeddings(demo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("emb")
    embed(demo, [CLIPS], out, progress=False)
    return out / EMBEDDINGS_FILE


def _labels() -> pd.DataFrame:
    frames = [pd.read_csv(CLIPS / "lab" / f"{s}.csv", dtype=str).assign(split=s) for s in ("train", "devel", "test")]
    return pd.concat(frames, ignore_index=True)


def test_clip_embeddings_are_the_input_of_the_output_layer(demo, clip_embeddings, tmp_path):
    rows, x, meta = read_embeddings(clip_embeddings)
    truth = _labels()
    assert len(rows) == len(truth) and x.shape == (len(truth), 512) and x.dtype == np.float32
    got = {(Path(r).name, s): lab for r, s, lab in zip(rows["recording"], rows["split"], rows["label"])}
    for name, label, split in zip(truth["filename"], truth["label"], truth["split"]):
        expected = None if label == "?" else label
        assert (got[(name, split)] if isinstance(got[(name, split)], str) else None) == expected
    assert meta["checkpoint"]["name"] == demo.name and meta["checkpoint"]["sha256"] == demo.sha256
    assert meta["embedding_dim"] == 512
    # the network's own output layer on the embedding gives the scores `evaluate` computes
    # on the audio (every devel clip is at most 3 s: one window, no max over windows)
    evaluate(demo, CLIPS, "devel", tmp_path / "ev")
    predictions = pd.read_csv(tmp_path / "ev" / "predictions.csv")
    devel = (rows["split"] == "devel").to_numpy()
    with torch.no_grad():
        logits = demo.network.head.fc_out(torch.from_numpy(x[devel]))
    from_embedding = torch.sigmoid(logits).numpy()
    order = [list(predictions["filename"]).index(Path(r).name) for r in rows.loc[devel, "recording"]]
    expected = predictions.iloc[order][[f"score_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(from_embedding, expected, atol=2e-4)


@pytest.mark.parametrize("kind", ["logreg", "svm"])
def test_probe_beats_chance_and_is_a_scanning_model(clip_embeddings, tmp_path, kind):
    result = train_probe(clip_embeddings, tmp_path / "probe", kind=kind)
    metrics = result["metrics"]
    assert result["classes"] == CLASSES and metrics["n_clips"] == 15
    assert metrics["uar"] >= 0.6  # chance is 0.2 for 5 balanced classes
    probe = load_checkpoint(result["checkpoint"], "cpu")
    assert probe.info.activation == "sigmoid" and list(probe.info.classes) == CLASSES
    assert probe.info.config["probe"]["kind"] == kind
    # the checkpoint's output layer reproduces the probe's reported devel scores
    rows, x, _ = read_embeddings(clip_embeddings)
    devel = (rows["split"] == "devel").to_numpy()
    with torch.no_grad():
        scores = torch.sigmoid(probe.network.head.fc_out(torch.from_numpy(x[devel]))).numpy()
    predictions = pd.read_csv(tmp_path / "probe" / "predictions.csv")
    np.testing.assert_allclose(scores, predictions[[f"score_{c}" for c in CLASSES]].to_numpy(), atol=1e-5)
    assert ((scores >= 0) & (scores <= 1)).all()
    # and it scans a real recording, with the trunk of the demo model
    events = scan_recording(RECORDINGS / "CAM02_20240312_180000.wav", probe)
    assert len(events) >= 1 and (events["model"] == probe.name).all()
    assert set(events["species"]) <= set(CLASSES) - {"background"}


def test_probe_refuses_a_different_trunk(clip_embeddings, tiny_checkpoint, tmp_path):
    from primate_monitor.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="sha256"):
        train_probe(clip_embeddings, tmp_path / "p", checkpoint=tiny_checkpoint)


def test_recording_windows_follow_the_scan_schedule_and_resume_skips_done_work(demo, tmp_path, monkeypatch):
    out = tmp_path / "emb"
    first = embed(demo, [RECORDINGS], out, hop_seconds=2.0, progress=False)
    assert first.kind == "recordings" and first.parts == 3 and first.done_before == 0
    rows, x, meta = read_embeddings(out)
    for path in sorted(p for p in RECORDINGS.iterdir() if p.suffix in (".wav", ".flac")):
        n = len(load_audio(path, 8000))
        starts = window_starts(n, 3 * 8000, 2 * 8000) / 8000
        np.testing.assert_allclose(rows.loc[rows["recording"] == path.name, "begin_s"], starts)
    assert rows["label"].isna().all() and meta["params"]["hop_seconds"] == 2.0

    calls = []
    real = embed_module.embed_recording
    monkeypatch.setattr(embed_module, "embed_recording", lambda path, *a, **k: calls.append(Path(path).name) or real(path, *a, **k))
    again = embed(demo, [RECORDINGS], out, hop_seconds=2.0, progress=False)
    assert calls == [] and again.done_before == 3
    # an interruption before the second recording's commit marker landed: only it is redone
    marker = sorted((out / STATE_DIR).glob("rec-*.json"))[1]
    marker.unlink()
    resumed = embed(demo, [RECORDINGS], out, hop_seconds=2.0, progress=False)
    assert len(calls) == 1 and resumed.done_before == 2
    rows2, x2, _ = read_embeddings(out)
    pd.testing.assert_frame_equal(rows, rows2)
    np.testing.assert_array_equal(x, x2)
    with pytest.raises(EmbedError, match="hop_seconds"):
        embed(demo, [RECORDINGS], out, hop_seconds=1.0, progress=False)


@pytest.fixture(scope="module")
def folder_set(tmp_path_factory) -> Path:
    """A small class-folder set: 2 train and 2 devel clips of gibbon and of titi monkey."""
    data = tmp_path_factory.mktemp("folders") / "data"
    truth = _labels()
    for split in ("train", "devel"):
        for label in ("gibbon", "titi_monkey"):
            folder = data / split / label
            folder.mkdir(parents=True)
            for name in truth[(truth["split"] == split) & (truth["label"] == label)]["filename"][:2]:
                shutil.copy(CLIPS / "wav" / name, folder / name)
    return data


def test_class_folder_layout_needs_clips_said_outright(demo, folder_set, tmp_path):
    summary = embed(demo, [folder_set], tmp_path / "emb", kind="clips", progress=False)
    rows, _, _ = read_embeddings(tmp_path / "emb")
    assert summary.rows == 8 and sorted(set(rows["label"])) == ["gibbon", "titi_monkey"]
    assert sorted(set(rows["split"])) == ["devel", "train"]
    assert embed_module.resolve_input_kind([folder_set], "auto") == "recordings"


def test_cli_embed_probe_tsne_scan_summarize(folder_set, tmp_path):
    runner = CliRunner()
    emb, probe = tmp_path / "emb", tmp_path / "probe"
    result = runner.invoke(main, ["-q", "embed", str(default_model_path()), str(folder_set), "--input", "clips",
                                  "-o", str(emb)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["-q", "probe", str(emb / EMBEDDINGS_FILE), "-o", str(probe), "--kind", "logreg"])
    assert result.exit_code == 0, result.output
    assert "UAR" in result.output and (probe / "confusion_matrix.png").is_file() and (probe / "probe.json").is_file()
    result = runner.invoke(main, ["-q", "tsne", str(emb / EMBEDDINGS_FILE), "-o", str(tmp_path / "map.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "map.png").stat().st_size > 0
    result = runner.invoke(main, ["-q", "scan", "--model", str(probe / "probe.safetensors"),
                                  str(RECORDINGS / "SITE03_2024-03-13_064500.wav"), "-o", str(tmp_path / "scan")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["summarize", str(tmp_path / "scan"), "-o", str(tmp_path / "sum"), "--site-from", "prefix"])
    assert result.exit_code == 0, result.output
    assert "SITE03,2024-03-13,0.016667,1," in (tmp_path / "sum" / "effort.csv").read_text()  # 60 s recorded
    result = runner.invoke(main, ["-q", "embed", str(default_model_path()), str(folder_set), "--input", "clips",
                                  "-o", str(emb), "--pool", "max"])
    assert result.exit_code == 2 and "different parameters" in result.output


def test_wrn_probe_checkpoint_on_audio_equals_probe_on_embeddings(folder_set, tmp_path):
    """WRN-28-2's head differs (no PannsHead): its output layer is found and replaced, and the
    saved network run on the audio gives the probe's scores on the embeddings."""
    from primate_monitor.checkpoint import ModelInfo, save_checkpoint
    from primate_monitor.frontend import FrontEndConfig, LogMel
    from primate_monitor.models import create_model

    torch.manual_seed(0)
    info = ModelInfo(model="wrn28_2", classes=("a", "b", "c"), reject_class="a", activation="sigmoid",
                     frontend=FrontEndConfig(sample_rate=8000), clip_seconds=3.0)
    base = tmp_path / "wrn.safetensors"
    save_checkpoint(base, create_model("wrn28_2", 3).state_dict(), info)
    wrn = load_checkpoint(base, "cpu")
    embed(wrn, [folder_set], tmp_path / "emb", kind="clips", progress=False)
    rows, x, meta = read_embeddings(tmp_path / "emb")
    assert x.shape == (8, 128) and meta["embedding_dim"] == 128
    result = train_probe(tmp_path / "emb" / EMBEDDINGS_FILE, tmp_path / "probe", kind="logreg")
    probe = load_checkpoint(result["checkpoint"], "cpu")
    assert list(probe.info.classes) == ["gibbon", "titi_monkey"]
    audio = np.stack([np.pad(a := load_audio(folder_set / r, 8000), (0, max(0, 24000 - len(a))))[:24000]
                      for r in rows["recording"]])
    with torch.no_grad():
        logits, _ = probe.network(LogMel(probe.info.frontend)(torch.from_numpy(audio)))
    predictions = pd.read_csv(tmp_path / "probe" / "predictions.csv")
    devel = (rows["split"] == "devel").to_numpy()
    np.testing.assert_allclose(torch.sigmoid(logits).numpy()[devel],
                               predictions[["score_gibbon", "score_titi_monkey"]].to_numpy(), atol=1e-4)
