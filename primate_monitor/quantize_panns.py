"""The int8 body of a PANNs CNN (CNN6, CNN10) rebuilt from plain tensors, without torch.fx.

Why: building the int8 network through FX at scan time (``quantize.int8_network``'s general
path) imports torch.fx's tracing stack, dynamo and sympy: ~115 MB of resident memory in every
scanning process, more than int8 saves. For the PANNs CNNs, whose body is a plain chain
(conv+BN+ReLU ×k, 2×2 average pooling, dropout, ×4), ``quantize.calibrate`` also stores the
*converted* int8 layers (integer weights with their per-channel scales, biases, and every
activation's scale and zero point) as tensors; ``Int8PannsBody`` puts them back into torch's
quantised modules and calls the same kernels in the same order as FX's converted graph, so
its output is bit-identical (tests/test_quantize.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

PREFIX = "eager."


def _is_panns(network: nn.Module) -> bool:
    blocks = getattr(network, "blocks", None)
    return isinstance(blocks, nn.ModuleList) and all(isinstance(getattr(b, "layers", None), nn.Sequential)
                                                     for b in blocks)


def export(converted: torch.fx.GraphModule, network: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The converted body's int8 layers as plain tensors plus a layout, or None when the network
    is not a PANNs chain or the graph is not the chain expected (then FX stays the only path)."""
    if not _is_panns(network):
        return None
    from torch.ao.nn.intrinsic.quantized import ConvReLU2d

    nodes = list(converted.graph.nodes)
    quant = [n for n in nodes if n.op == "call_function" and n.target is torch.quantize_per_tensor]
    drops = [n for n in nodes if n.op == "call_function" and n.target is torch.ops.quantized.dropout]
    if len(quant) != 1 or len(drops) != len(network.blocks):
        return None

    def attr(arg) -> torch.Tensor:
        return getattr(converted, arg.target)

    tensors: dict[str, torch.Tensor] = {
        f"{PREFIX}input.scale": attr(quant[0].args[1]).reshape(1).to(torch.float64),
        f"{PREFIX}input.zero_point": attr(quant[0].args[2]).reshape(1).to(torch.int64),
    }
    layout: dict[str, Any] = {"blocks": []}
    for i in range(len(network.blocks)):
        try:  # FX keeps the used submodules under their paths, as plain Modules named "0", "3", ...
            layers = converted.get_submodule(f"network.blocks.{i}.layers")
        except AttributeError:
            return None
        ordered = sorted(layers.named_children(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else -1)
        convs = [m for _, m in ordered if isinstance(m, ConvReLU2d)]
        if not convs:
            return None
        spec = []
        for j, conv in enumerate(convs):
            w = conv.weight()
            if w.qscheme() != torch.per_channel_affine or w.dtype != torch.qint8:
                return None
            key = f"{PREFIX}{i}.{j}."
            tensors |= {key + "weight": w.int_repr(), key + "weight_scales": w.q_per_channel_scales(),
                        key + "weight_zero_points": w.q_per_channel_zero_points(),
                        key + "bias": conv.bias().detach().clone(),
                        key + "scale": torch.tensor([conv.scale], dtype=torch.float64),
                        key + "zero_point": torch.tensor([conv.zero_point], dtype=torch.int64)}
            spec.append({"in": conv.in_channels, "out": conv.out_channels, "kernel": list(conv.kernel_size),
                         "padding": list(conv.padding), "axis": int(w.q_per_channel_axis())})
        drop = drops[i].kwargs
        tensors[f"{PREFIX}{i}.out_scale"] = attr(drop["output_scale"]).reshape(1).to(torch.float64)
        tensors[f"{PREFIX}{i}.out_zero_point"] = attr(drop["output_zero_point"]).reshape(1).to(torch.int64)
        layout["blocks"].append({"convs": spec, "p": float(drop["p"])})
    return {k: v.contiguous() for k, v in tensors.items()}, layout  # safetensors stores packed tensors only


class Int8PannsBody(nn.Module):
    """quantise → per block: int8 conv+ReLU ×k, 2×2 average pool, requantise → dequantise."""

    def __init__(self, tensors: dict[str, torch.Tensor], layout: dict[str, Any]) -> None:
        super().__init__()
        import warnings

        from torch.ao.nn.intrinsic.quantized import ConvReLU2d

        with warnings.catch_warnings():  # torch's notice that quantised dtypes are deprecated: in docs/benchmarks.md
            warnings.simplefilter("ignore", UserWarning)
            self._build(tensors, layout, ConvReLU2d)

    def _build(self, tensors: dict[str, torch.Tensor], layout: dict[str, Any], ConvReLU2d: type) -> None:
        self.input_scale = float(tensors[f"{PREFIX}input.scale"])
        self.input_zero_point = int(tensors[f"{PREFIX}input.zero_point"])
        self.blocks = nn.ModuleList()
        self.requant: list[tuple[float, int, float]] = []
        for i, block in enumerate(layout["blocks"]):
            convs = nn.ModuleList()
            for j, spec in enumerate(block["convs"]):
                key = f"{PREFIX}{i}.{j}."
                conv = ConvReLU2d(spec["in"], spec["out"], tuple(spec["kernel"]), padding=tuple(spec["padding"]))
                weight = torch._make_per_channel_quantized_tensor(
                    tensors[key + "weight"], tensors[key + "weight_scales"], tensors[key + "weight_zero_points"],
                    spec["axis"])
                conv.set_weight_bias(weight, tensors[key + "bias"])
                conv.scale = float(tensors[key + "scale"])
                conv.zero_point = int(tensors[key + "zero_point"])
                convs.append(conv)
            self.blocks.append(convs)
            self.requant.append((float(tensors[f"{PREFIX}{i}.out_scale"]), int(tensors[f"{PREFIX}{i}.out_zero_point"]),
                                 block["p"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.quantize_per_tensor(x, self.input_scale, self.input_zero_point, torch.quint8)
        for convs, (scale, zero_point, p) in zip(self.blocks, self.requant):
            for conv in convs:
                x = conv(x)
            x = F.avg_pool2d(x, kernel_size=2)
            x = torch.ops.quantized.dropout(x, scale, zero_point, p, False)  # eval: a requantisation
        return x.dequantize()
