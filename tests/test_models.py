"""The paper's five networks: sizes, interface, input BatchNorm, initialisation, fast path."""

import pytest
import torch
from torch import nn

from primate_monitor.models import MODELS, create_model

PARAMS_5_CLASSES = {
    "cnn10": 4_951_493,
    "cnn6": 4_569_669,
    "mobilenetv1": 4_261_253,
    "resnet22": 62_605_509,
}
EMBEDDING = {"cnn10": 512, "cnn6": 512, "mobilenetv1": 1024, "resnet22": 2048, "wrn28_2": 128}


def n_learnable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: create_model(name, 5) for name in sorted(MODELS)}


def test_registry_names():
    assert sorted(MODELS) == ["cnn10", "cnn6", "mobilenetv1", "resnet22", "wrn28_2"]


@pytest.mark.parametrize("name", sorted(PARAMS_5_CLASSES))
def test_parameter_counts(models, name):
    assert n_learnable(models[name]) == PARAMS_5_CLASSES[name]


def test_wrn28_2_parameter_count(models):
    assert 1_400_000 <= n_learnable(models["wrn28_2"]) <= 1_600_000


@pytest.mark.parametrize("name", sorted(EMBEDDING))
def test_forward_returns_logits_and_embedding(models, name):
    model = models[name].eval()
    x = torch.randn(2, 1, 150, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, embedding = model(x)
    assert logits.shape == (2, 5)
    assert embedding.shape == (2, EMBEDDING[name]) == (2, model.embedding_dim)
    assert torch.isfinite(logits).all() and torch.isfinite(embedding).all()
    if model.fast_path:  # the scanner's split: trunk once, then classify (smaller input to save time)
        x = x[:1, :, :64]
        with torch.no_grad():
            logits, embedding = model(x)
            t_logits, t_embedding = model.classify(model.trunk(x))
        torch.testing.assert_close(t_logits, logits, rtol=0, atol=0)
        torch.testing.assert_close(t_embedding, embedding, rtol=0, atol=0)


def test_fast_path_flags(models):
    assert {n for n, m in models.items() if m.fast_path} == {"cnn10", "cnn6", "mobilenetv1", "resnet22"}
    assert not models["wrn28_2"].fast_path


def test_unknown_model_lists_the_names():
    with pytest.raises(ValueError) as e:
        create_model("vgg16", 5)
    for name in MODELS:
        assert name in str(e.value)
    assert "vgg16" in str(e.value)


def test_too_few_classes():
    with pytest.raises(ValueError, match="num_classes"):
        create_model("cnn6", 1)


def test_num_classes_sets_output_width():
    model = create_model("cnn6", 3).eval()
    with torch.no_grad():
        logits, _ = model(torch.randn(1, 1, 75, 64))
    assert logits.shape == (1, 3)


@pytest.mark.parametrize("name", sorted(EMBEDDING))
def test_bn0_normalises_each_mel_bin(models, name):
    bn0 = models[name].bn0
    assert isinstance(bn0.bn, nn.BatchNorm2d) and bn0.bn.num_features == 64
    if name != "cnn6":
        return  # the statistics check below is the same module for every network
    bn0 = type(bn0)(64).train()
    g = torch.Generator().manual_seed(0)
    offsets = torch.linspace(-80, 10, 64)  # very different level per mel bin
    scales = torch.linspace(0.5, 20, 64)
    x = offsets + scales * torch.randn(4, 1, 100, 64, generator=g)
    z = bn0(x)
    assert z.shape == x.shape
    mean = z.mean(dim=(0, 1, 2))
    std = z.std(dim=(0, 1, 2), unbiased=False)
    torch.testing.assert_close(mean, torch.zeros(64), rtol=0, atol=1e-4)
    torch.testing.assert_close(std, torch.ones(64), rtol=0, atol=1e-3)
    # running statistics are kept per mel bin
    torch.testing.assert_close(bn0.bn.running_mean, 0.1 * x.mean(dim=(0, 1, 2)), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", sorted(EMBEDDING))
def test_panns_initialisation(models, name):
    model = models[name]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears
    for m in linears:
        assert torch.count_nonzero(m.bias) == 0
        assert m.weight.abs().max() <= (6 / (m.in_features + m.out_features)) ** 0.5 + 1e-6  # Xavier-uniform bound
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert torch.all(model.bn0.bn.weight == 1) and torch.all(model.bn0.bn.bias == 0)
    zero_init = set()
    if name == "resnet22":  # PANNs zero-initialises the last BN of each residual branch
        from primate_monitor.models.resnet import BasicBlock

        zero_init = {id(b.bn2) for b in model.modules() if isinstance(b, BasicBlock)}
        assert len(zero_init) == 8
    for m in bns:
        assert torch.all(m.bias == 0)
        assert torch.all(m.weight == (0 if id(m) in zero_init else 1))
