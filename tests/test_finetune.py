"""Fine-tuning: ``init_from`` starts training from a checkpoint's weights (issue 8, hard
negatives: a round of mining should not cost a training run from scratch)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from primate_monitor.checkpoint import CheckpointError, read_tensors
from primate_monitor.config import TrainConfig, load_config
from primate_monitor.train import Trainer

from test_hardening_train import CONFIG, assert_user_error, cli, compare_data, train_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """(data, checkpoint): two classes, trained for two steps."""
    root = tmp_path_factory.mktemp("finetune")
    data = compare_data(root / "data")
    result = cli(*train_args(data, root / "run", iterations=2))
    assert result.exit_code == 0, result.output
    return data, root / "run" / "best.safetensors"


def cheap_config(**changes) -> TrainConfig:
    config = load_config(CONFIG, ["batch_size=2", "clip_seconds=1", "eval_every=1", "iterations=1"])
    return dataclasses.replace(config, **changes)


def test_run_starts_from_the_checkpoint_weights(base_run, tmp_path):
    data, ckpt = base_run
    trainer = Trainer(data, tmp_path / "ft", cheap_config(init_from=str(ckpt)))
    saved = read_tensors(ckpt)
    state = trainer.model.state_dict()
    assert set(saved) == set(state)
    for name, value in saved.items():
        assert torch.equal(state[name].cpu(), value.to(state[name].dtype)), name
    fresh = Trainer(data, tmp_path / "fresh", cheap_config(seed=5))
    assert not all(torch.equal(fresh.model.state_dict()[k], state[k]) for k in state)


def test_cli_fine_tune_records_where_it_started(base_run, tmp_path):
    data, ckpt = base_run
    result = cli(*train_args(data, tmp_path / "ft", "--set", f"init_from={ckpt}", iterations=1))
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "ft" / "best.json").read_text())
    assert meta["config"]["init_from"] == str(ckpt)


def test_checkpoint_for_other_classes_is_refused(base_run, tmp_path):
    _, ckpt = base_run
    data = compare_data(tmp_path / "three", classes=("background", "gibbon", "titi_monkey"))
    result = cli(*train_args(data, tmp_path / "ft", "--set", f"init_from={ckpt}"))
    assert_user_error(result, str(ckpt), "classes", "titi_monkey")


def test_checkpoint_at_another_rate_is_refused(base_run, tmp_path):
    data, ckpt = base_run
    with pytest.raises(CheckpointError, match="sample_rate 8000"):
        Trainer(data, tmp_path / "ft", cheap_config(init_from=str(ckpt), sample_rate=16000))


def test_missing_init_checkpoint_names_the_file(base_run, tmp_path):
    data, _ = base_run
    missing = tmp_path / "nope.safetensors"
    assert_user_error(cli(*train_args(data, tmp_path / "ft", "--set", f"init_from={missing}")), str(missing))
