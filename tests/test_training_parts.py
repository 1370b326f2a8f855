"""Sampler, augmentation, EMA, metrics and config: the pieces of the training recipe."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, balanced_accuracy_score, precision_score, recall_score
from torch import nn

from primate_monitor.augment import mixup, specaugment
from primate_monitor.config import ConfigError, TrainConfig, load_config, valid_keys
from primate_monitor.ema import EMA
from primate_monitor.metrics import average_precision, classification_metrics
from primate_monitor.sampler import BalancedSampler, RandomSampler

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


# ---- BalancedSampler ---------------------------------------------------------------------
IMBALANCED = [0] * 100 + [1] * 10 + [2] * 3


def test_balanced_sampler_draws_classes_equally():
    labels = np.array(IMBALANCED)
    sampler = BalancedSampler(labels.tolist(), 3, seed=0)
    draws = np.concatenate([sampler.draw(n) for n in (1, 7, 992, 4000)])  # 5,000 in uneven chunks
    classes = labels[draws]
    counts = np.zeros(3, dtype=int)
    for i, k in enumerate(classes):
        counts[k] += 1
        assert counts.max() - counts.min() <= 1, f"unbalanced after {i + 1} draws: {counts}"
        if (i + 1) % 3 == 0:  # after each full round robin every class was drawn once more
            assert np.all(counts == (i + 1) // 3)
    assert sorted(Counter(classes.tolist()).values()) == [1666, 1667, 1667]


def test_balanced_sampler_uses_every_clip_before_repeating():
    labels = np.array(IMBALANCED)
    sampler = BalancedSampler(labels.tolist(), 3, seed=1)
    draws = sampler.draw(5000)
    for k in range(3):
        members = set(np.flatnonzero(labels == k).tolist())
        seq = draws[labels[draws] == k]
        n = len(members)
        for start in range(0, len(seq) - n + 1, n):  # each pass is a permutation of the class
            assert set(seq[start : start + n].tolist()) == members
        # and the passes are reshuffled, not the same order every time
        if n > 3:
            assert not np.array_equal(seq[:n], seq[n : 2 * n])


def test_balanced_sampler_state_round_trip_through_json():
    sampler = BalancedSampler(IMBALANCED, 3, seed=2)
    sampler.draw(57)
    state = json.loads(json.dumps(sampler.state_dict()))  # the resume file stores it as JSON
    expected = sampler.draw(300)
    other = BalancedSampler(IMBALANCED, 3, seed=99)
    other.draw(5)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.draw(300), expected)


def test_balanced_sampler_rejects_empty_class():
    with pytest.raises(ValueError, match=r"\[1\]"):
        BalancedSampler([0, 0, 2], 3, seed=0)


def test_random_sampler_state_round_trip():
    sampler = RandomSampler(IMBALANCED, 3, seed=0)
    sampler.draw(10)
    state = json.loads(json.dumps(sampler.state_dict()))
    expected = sampler.draw(50)
    other = RandomSampler(IMBALANCED, 3, seed=5)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.draw(50), expected)


# ---- MixUp -------------------------------------------------------------------------------
def test_mixup_arithmetic():
    batch = 6
    x = torch.randn(batch, 1, 20, 8, generator=torch.Generator().manual_seed(0))
    targets = torch.eye(batch)  # every example its own class, so λ and the partner can be read off
    mixed_x, mixed_t = mixup(x, targets, alpha=1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(mixed_t.sum(dim=1), torch.ones(batch))
    assert torch.all(mixed_t >= 0) and torch.all(mixed_t <= 1)
    partners = set()
    lams = []
    for i in range(batch):
        lam = float(mixed_t[i, i])
        others = mixed_t[i].clone()
        others[i] = 0
        if others.sum() > 0:
            j = int(others.argmax())
            assert float(others[j]) == pytest.approx(1 - lam, abs=1e-6)
            assert torch.count_nonzero(others) == 1  # exactly one partner
        else:
            j = i  # paired with itself: unchanged whatever λ is
        partners.add(j)
        lams.append(lam)
        torch.testing.assert_close(mixed_x[i], lam * x[i] + (1 - lam) * x[j], rtol=1e-5, atol=1e-6)
    assert partners == set(range(batch))  # the partners are a permutation
    assert len({round(v, 6) for v in lams}) > 1  # λ is drawn per pair, not once per batch


def test_mixup_is_reproducible_with_a_fixed_generator():
    x = torch.randn(8, 1, 10, 4)
    t = torch.nn.functional.one_hot(torch.arange(8) % 3, 3).float()
    a = mixup(x, t, 1.0, torch.Generator().manual_seed(7))
    b = mixup(x, t, 1.0, torch.Generator().manual_seed(7))
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
    torch.testing.assert_close(a[1].sum(dim=1), torch.ones(8))


# ---- SpecAugment -------------------------------------------------------------------------
def _runs(mask: np.ndarray) -> list[int]:
    """Lengths of the runs of True in a 1-D bool array."""
    padded = np.r_[False, mask, False].astype(int)
    edges = np.flatnonzero(np.diff(padded))
    return (edges[1::2] - edges[::2]).tolist()


def _time_freq_masks(out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(batch, frames) and (batch, mels) of stripes, checking that the zeros are exactly their union."""
    zero = (out[:, 0] == 0).numpy()  # (batch, frames, mels)
    t = zero.all(axis=2)
    f = zero.all(axis=1)
    np.testing.assert_array_equal(zero, t[:, :, None] | f[:, None, :])
    return t, f


def test_specaugment_stripe_limits_over_many_draws():
    g = torch.Generator().manual_seed(0)
    x = torch.ones(1, 1, 150, 64)
    widest_t, widest_f = 0, 0
    for _ in range(300):  # one stripe of each kind: every run is exactly one stripe
        t, f = _time_freq_masks(specaugment(x, g, time_stripes=1, freq_stripes=1))
        rt, rf = _runs(t[0]), _runs(f[0])
        assert len(rt) <= 1 and len(rf) <= 1
        widest_t, widest_f = max([widest_t, *rt]), max([widest_f, *rf])
    assert widest_t == 16 and widest_f == 8  # the limits are reached, and never passed
    n_t, n_f = Counter(), Counter()
    for _ in range(300):  # the defaults: at most 2 stripes of each kind
        t, f = _time_freq_masks(specaugment(x, g))
        rt, rf = _runs(t[0]), _runs(f[0])
        n_t[len(rt)] += 1
        n_f[len(rf)] += 1
        assert len(rt) <= 2 and t.sum() <= 32 and all(r <= 32 for r in rt)
        assert len(rf) <= 2 and f.sum() <= 16 and all(r <= 16 for r in rf)
    assert set(n_t) == {0, 1, 2} and set(n_f) == {0, 1, 2}


def test_specaugment_same_mask_for_the_batch_by_default():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 1, 75, 64).abs() + 1  # no natural zeros
    masked_any = False
    for _ in range(20):
        out = specaugment(x, g)
        zero = out[:, 0] == 0
        assert torch.equal(zero, zero[:1].expand_as(zero))
        masked_any |= bool(zero.any())
        torch.testing.assert_close(out[~zero[:, None].expand_as(out)], x[~zero[:, None].expand_as(x)])
    assert masked_any


def test_specaugment_per_example_masks_differ():
    g = torch.Generator().manual_seed(2)
    x = torch.ones(8, 1, 75, 64)
    out = specaugment(x, g, per_example=True)
    t, f = _time_freq_masks(out)
    zero = (out[:, 0] == 0)
    assert any(not torch.equal(zero[0], zero[i]) for i in range(1, 8))
    for i in range(8):
        assert len(_runs(t[i])) <= 2 and len(_runs(f[i])) <= 2


def test_specaugment_off_when_widths_zero():
    x = torch.randn(2, 1, 10, 8)
    out = specaugment(x, torch.Generator().manual_seed(0), time_width=0, freq_width=0)
    torch.testing.assert_close(out, x, rtol=0, atol=0)


# ---- EMA ---------------------------------------------------------------------------------
def _perturb(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g))


def test_ema_copies_before_start_then_averages():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    ema = EMA(model, decay=0.9, start=3)
    for a, b in zip(ema.model.parameters(), model.parameters()):
        assert torch.equal(a, b) and not a.requires_grad
    # steps 1, 2 < start: the shadow copies the weights (and the buffers)
    for step in (1, 2):
        _perturb(model, step)
        model.train()(torch.randn(5, 4))  # moves the BN running statistics
        ema.update(model, step)
        for a, b in zip(ema.model.parameters(), model.parameters()):
            assert torch.equal(a, b)
        for a, b in zip(ema.model.buffers(), model.buffers()):
            assert torch.equal(a, b)
    # step 3 >= start: shadow = d * shadow + (1 - d) * w
    before = [p.detach().clone().double() for p in ema.model.parameters()]
    _perturb(model, 3)
    model.train()(torch.randn(5, 4))
    ema.update(model, 3)
    for a, old, w in zip(ema.model.parameters(), before, model.parameters()):
        expected = 0.9 * old + 0.1 * w.detach().double()
        torch.testing.assert_close(a.double(), expected, rtol=1e-6, atol=1e-7)
        assert not torch.equal(a, w)
    for a, b in zip(ema.model.buffers(), model.buffers()):  # buffers are copied, never averaged
        assert torch.equal(a, b)
    assert int(dict(ema.model.named_buffers())["1.num_batches_tracked"]) == 3


def test_fused_ema_update_equals_the_per_parameter_loop():
    """EMA.update uses torch._foreach_*: bit for bit what shadow.mul_(d).add_(w, alpha=1 - d) gives."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.Linear(6, 3))
    ema = EMA(model, decay=0.995, start=2)
    reference = [p.detach().clone() for p in model.parameters()]
    for step in range(1, 6):
        _perturb(model, step)
        ema.update(model, step)
        decay = 0.995 if step >= 2 else 0.0
        for r, w in zip(reference, model.parameters()):
            r.mul_(decay).add_(w.detach(), alpha=1.0 - decay)
        for a, r in zip(ema.model.parameters(), reference):
            assert torch.equal(a, r)


def test_ema_model_is_independent_and_in_eval_mode():
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.5, start=0)
    assert not ema.model.training
    with torch.no_grad():
        model.weight.zero_()
    assert not torch.equal(ema.model.weight, model.weight)


# ---- metrics -----------------------------------------------------------------------------
def _random_problem(seed: int, n: int = 200, k: int = 4, absent: int | None = None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    if absent is not None:
        y[y == absent] = (absent + 1) % k
    scores = np.round(rng.random((n, k)) + 0.3 * np.eye(k)[y], 1)  # rounded: many ties
    return y, scores


@pytest.mark.parametrize("seed, absent", [(0, None), (1, None), (2, 3)])
def test_classification_metrics_match_sklearn(seed, absent):
    classes = ["a", "b", "c", "d"]
    y, scores = _random_problem(seed, absent=absent)
    m = classification_metrics(y, scores, classes)
    pred = scores.argmax(axis=1)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            uar = balanced_accuracy_score(y, pred)
            precision = precision_score(y, pred, labels=range(4), average=None, zero_division=0)
            recall = recall_score(y, pred, labels=range(4), average=None, zero_division=0)
    assert m["uar"] == pytest.approx(uar, abs=1e-12)
    assert m["accuracy"] == pytest.approx(np.mean(pred == y), abs=1e-12)
    aps = []
    for k, c in enumerate(classes):
        pc = m["per_class"][c]
        assert pc["support"] == int(np.sum(y == k))
        assert pc["precision"] == pytest.approx(precision[k], abs=1e-12)
        if pc["support"] == 0:
            assert pc["recall"] is None and pc["ap"] is None
            continue
        assert pc["recall"] == pytest.approx(recall[k], abs=1e-12)
        ap = average_precision_score(y == k, scores[:, k])
        assert pc["ap"] == pytest.approx(ap, abs=1e-12)
        aps.append(ap)
    assert m["map"] == pytest.approx(np.mean(aps), abs=1e-12)
    assert np.array(m["confusion"]).sum() == len(y)


def test_average_precision_with_all_tied_scores():
    pos = np.array([1, 0, 0, 1, 0], dtype=bool)
    s = np.full(5, 0.5)
    assert average_precision(pos, s) == pytest.approx(average_precision_score(pos, s)) == pytest.approx(0.4)
    assert np.isnan(average_precision(np.zeros(3, bool), np.arange(3.0)))


# ---- config ------------------------------------------------------------------------------
def test_configs_are_non_empty():
    assert len(CONFIGS) >= 7


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert isinstance(config, TrainConfig)
    from primate_monitor.models import MODELS

    assert config.model in MODELS
    for tag, rate in (("_8k", 8000), ("_16k", 16000)):
        if tag in path.name:
            assert config.model == path.name.split(tag)[0]
            assert config.sample_rate == rate


def test_set_overrides_are_typed():
    config = load_config(CONFIGS[0], ["iterations=7", "lr=1e-4", "mixup=false", "ema_decay=0.5",
                                      "cache_dir=/tmp/x", "clip_seconds=2", "model=cnn6",
                                      "devel_split=2021", "cache_dir=null"][:-1])
    assert config.iterations == 7 and type(config.iterations) is int
    assert config.lr == 1e-4 and type(config.lr) is float  # '1e-4' is a string to YAML
    assert config.mixup is False
    assert config.clip_seconds == 2.0 and type(config.clip_seconds) is float
    assert config.cache_dir == "/tmp/x" and config.model == "cnn6"
    assert config.devel_split == "2021"  # a YAML number where text is due is taken as text
    assert load_config(None, ["cache_dir=/a", "cache_dir=null"]).cache_dir is None
    assert load_config(None).iterations == TrainConfig().iterations


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["itterations=5"])
    assert "itterations" in str(e.value)
    for key in valid_keys():
        assert key in str(e.value)


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: cnn10\nbatchsize: 4\n")
    with pytest.raises(ConfigError, match="batchsize.*valid keys are"):
        load_config(path)


@pytest.mark.parametrize("override", [
    "iterations=abc", "iterations=1.5", "batch_size=true", "lr=fast", "lr=true", "mixup=1", "mixup=maybe",
    "model=resnet50", "iterations=", "reject_class=[a, b]", "train_split={x: 1}", "reject_class=",
])
def test_wrong_type_or_value_raises(override):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert override.split("=")[0] in str(e.value)


def test_malformed_override():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["iterations"])


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)
