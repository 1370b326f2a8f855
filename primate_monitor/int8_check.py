"""Whether int8 may stand in for fp32 without being asked: the agreement check a calibration
stores, and the choice ``scan --precision auto`` makes from it.

Why its own module: quantize.py makes int8 networks; this decides when to use one. The rule
(``check_passed``): at least AUTO_MIN_WINDOWS windows checked, at least AUTO_MIN_DECISIONS of
them with the same classes above DECISION_THRESHOLD in int8 and fp32, and a 99th-percentile
score difference of at most AUTO_MAX_P99_DIFF. The check runs on the calibration audio
(``quantize.calibrate_audio``), so it says the quantisation is sound for the network, not that
every recording will decide alike (docs/benchmarks.md, "What the check does not promise").
"""

from __future__ import annotations

import copy

import torch

from .checkpoint import CheckpointError, LoadedModel
from .quantize import ENGINE, Int8Classifier, calibration_path, int8_network, read_calibration

AUTO_MIN_WINDOWS = 100  # fewer windows than this (~2 min of audio) say too little to run int8 unasked
AUTO_MIN_DECISIONS = 0.99  # share of windows with the same classes above DECISION_THRESHOLD
AUTO_MAX_P99_DIFF = 0.05  # 99th percentile of |int8 - fp32| over windows and classes
DECISION_THRESHOLD = 0.5


def agreement(model: LoadedModel, int8: torch.nn.Module, windows: list[torch.Tensor]) -> dict[str, float]:
    """How the int8 network's window scores compare with the fp32 network's on ``windows``
    (log-mel, one window each): the share of windows whose classes above DECISION_THRESHOLD are
    the same, and the 99th percentile and maximum of the absolute score differences. ``auto``
    reads this to decide whether int8 may replace fp32 without being asked."""
    from .predict import activate

    if not windows:
        return {"windows": 0, "decisions_equal": 0.0, "p99_abs_diff": None, "max_abs_diff": None}  # nothing checked
    fp32 = copy.deepcopy(model.network).cpu().eval()
    a, b = [], []
    with torch.no_grad():
        for i in range(0, len(windows), 64):
            x = torch.cat(windows[i:i + 64])
            a.append(activate(fp32(x)[0].float(), model.info.activation))
            b.append(activate(int8(x)[0].float(), model.info.activation))
    sa, sb = torch.cat(a), torch.cat(b)
    same = ((sa >= DECISION_THRESHOLD) == (sb >= DECISION_THRESHOLD)).all(dim=1).float().mean().item()
    diff = (sa - sb).abs().flatten()
    return {"windows": len(sa), "decisions_equal": round(same, 6),
            "p99_abs_diff": round(torch.quantile(diff, 0.99).item(), 6), "max_abs_diff": round(diff.max().item(), 6)}


def auto_precision(model: LoadedModel) -> tuple[str, str]:
    """(``"int8"`` or ``"fp32"``, why) for ``scan --precision auto``.

    Why a gate and not int8 everywhere: int8 is ~1.6x faster on the CPU, but a user who did not
    ask for it must get fp32's decisions. So int8 only when the model runs on the CPU, torch has
    the x86 int8 kernels, the checkpoint has a calibration made for these weights, and that
    calibration's own agreement check passed (``check_passed``). Any other
    case, including a damaged or foreign calibration, scans in fp32; --precision int8 still
    insists (and fails loudly)."""
    if isinstance(model.network, Int8Classifier):
        return "int8", "the model was prepared in int8"
    if model.device.type != "cpu":
        return "fp32", "the model runs on a GPU (bf16 autocast there)"
    path = calibration_path(model.path)
    if not path.is_file():
        return "fp32", f"no int8 calibration beside {model.path.name}"
    if ENGINE not in torch.backends.quantized.supported_engines:
        return "fp32", f"this torch build has no {ENGINE} int8 kernels"
    try:
        meta = read_calibration(path, tensors=False)[0]
    except CheckpointError as e:
        return "fp32", str(e)
    check = meta.get("agreement") if isinstance(meta, dict) else None
    if not isinstance(check, dict):
        return "fp32", f"{path.name} has no agreement check (made before it existed); run `primate-monitor quantize` again"
    if not check_passed(check):
        return "fp32", (f"{path.name}: its check does not meet auto's bar ({describe_check(check)}; auto asks for "
                        f"{AUTO_MIN_WINDOWS} windows, {100 * AUTO_MIN_DECISIONS:g} % alike, 99th percentile "
                        f"<= {AUTO_MAX_P99_DIFF}); calibrate on more audio, or scan with --precision int8")
    try:
        int8_network(model)  # the weights digest, and the layers themselves, must fit
    except (CheckpointError, RuntimeError, ValueError) as e:
        return "fp32", str(e)
    return "int8", f"{path.name}: {describe_check(check)}"


def check_passed(check: dict) -> bool:
    """Whether a calibration's agreement check (``agreement``) is enough for ``--precision auto``
    to run int8: enough windows, nearly all deciding alike, small score differences."""
    p99 = check.get("p99_abs_diff")
    return (check.get("windows", 0) >= AUTO_MIN_WINDOWS and check.get("decisions_equal", 0) >= AUTO_MIN_DECISIONS
            and p99 is not None and p99 <= AUTO_MAX_P99_DIFF)


def describe_check(check: dict) -> str:
    """One line for logs and the quantize command: what the agreement check found."""
    if not check.get("windows"):
        return "no whole 3-s window in the calibration audio, so nothing was checked"
    return (f"int8 agreed with fp32 on {100 * check.get('decisions_equal', 0):.1f} % of {check['windows']} "
            f"calibration windows, 99th percentile score difference {check.get('p99_abs_diff') or 0:.4f}")
