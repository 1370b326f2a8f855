"""The one log-mel front end shared by training, evaluation and scanning.

The settings are the paper's (Pellegrini 2021, after PANNs): the window and hop are
the same number of samples at every sample rate, so a 3 s clip is 150 frames at
16 kHz and 75 frames at 8 kHz (the paper's Table 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

WINDOW_SAMPLES = 1024  # periodic Hann window length, samples (= n_fft)
N_FFT = 1024  # FFT size, samples
HOP_SAMPLES = 320  # frame hop, samples (20 ms at 16 kHz, 40 ms at 8 kHz)
N_MELS = 64  # Slaney mel bands
FMIN_HZ = 10.0  # lowest mel edge, Hz
AMIN_POWER = 1e-10  # floor before 10*log10, so silence is -100 dB rather than -inf


@dataclass(frozen=True)
class FrontEndConfig:
    """Everything needed to rebuild the front end; stored in every checkpoint."""

    sample_rate: int  # Hz; the model's rate, audio is resampled to it
    n_fft: int = N_FFT
    window_samples: int = WINDOW_SAMPLES
    hop_samples: int = HOP_SAMPLES
    n_mels: int = N_MELS
    fmin_hz: float = FMIN_HZ
    fmax_hz: float | None = None  # None means sample_rate / 2

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        if self.hop_samples <= 0 or self.n_fft <= 0 or self.n_mels <= 0:
            raise ValueError("n_fft, hop_samples and n_mels must be positive")

    @property
    def upper_hz(self) -> float:
        """The top mel edge in Hz."""
        return float(self.fmax_hz if self.fmax_hz is not None else self.sample_rate / 2)

    def frames(self, n_samples: int) -> int:
        """Number of log-mel frames for n_samples of audio (see LogMel)."""
        return n_samples // self.hop_samples

    def to_dict(self) -> dict:
        return asdict(self)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa ``hz_to_mel(htk=False)``): linear below 1 kHz, log above."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    hz = np.atleast_1d(np.asarray(hz, dtype=np.float64))
    mels = hz / f_sp
    log_t = hz >= min_log_hz
    mels[log_t] = min_log_mel + np.log(hz[log_t] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    """Inverse of ``_hz_to_mel`` (librosa ``mel_to_hz(htk=False)``)."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    freqs = f_sp * mels
    log_t = mels >= min_log_mel
    freqs[log_t] = min_log_hz * np.exp(logstep * (mels[log_t] - min_log_mel))
    return freqs


def mel_filters(config: FrontEndConfig) -> np.ndarray:
    """Slaney-style mel filterbank, (n_mels, n_fft // 2 + 1) float32: librosa's
    ``filters.mel(norm="slaney", htk=False)``, operation for operation.

    Why not call librosa: importing ``librosa.filters`` pulls in numba, llvmlite and scipy,
    about 120 MB of resident memory for one 64 x 513 matrix, in every scan. The result is
    checked bit for bit against librosa in tests/test_frontend.py."""
    n_mels = int(config.n_mels)
    weights = np.zeros((n_mels, 1 + config.n_fft // 2), dtype=np.float32)
    fftfreqs = np.fft.rfftfreq(n=config.n_fft, d=1.0 / config.sample_rate)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(config.fmin_hz)[0], _hz_to_mel(config.upper_hz)[0], n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]
    return weights


class LogMel(nn.Module):
    """Waveform (batch, samples) -> log-mel (batch, 1, frames, n_mels), in dB.

    STFT with ``center=True`` and reflect padding, power spectrum, Slaney mel filters,
    then ``10*log10(max(x, 1e-10))`` with no top_db. Frame k is centred on sample
    ``k*hop``. We keep ``n_samples // hop`` frames: the extra frame that ``center=True``
    adds, centred on the very last sample boundary, is dropped so that a 3 s clip gives
    exactly 150 frames at 16 kHz (Table 1) and adjacent windows tile without overlap.
    """

    def __init__(self, config: FrontEndConfig) -> None:
        super().__init__()
        self.config = config
        window = torch.hann_window(config.window_samples, periodic=True)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel_basis", torch.from_numpy(mel_filters(config)), persistent=False)

    def power_to_db(self, mel_power: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.log10(torch.clamp(mel_power, min=AMIN_POWER))

    def mel_power(self, frames_spec: torch.Tensor) -> torch.Tensor:
        """(batch, freq, frames) complex STFT -> (batch, frames, n_mels) mel power."""
        power = frames_spec.real.square() + frames_spec.imag.square()
        return torch.matmul(self.mel_basis, power).transpose(1, 2)

    def forward(self, waveform: torch.Tensor, center: bool = True) -> torch.Tensor:
        """With ``center=False`` the caller supplies n_fft/2 samples of context on each
        side (the scanner's streaming path) and gets one frame per hop in between."""
        cfg = self.config
        # STFT in float32 even under autocast: log-mel precision matters more than speed here.
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            x = waveform.float()
            n_frames = cfg.frames(x.shape[-1]) if center else 1 + (x.shape[-1] - cfg.n_fft) // cfg.hop_samples
            spec = torch.stft(
                x,
                n_fft=cfg.n_fft,
                hop_length=cfg.hop_samples,
                win_length=cfg.window_samples,
                window=self.window,
                center=center,
                pad_mode="reflect",
                return_complex=True,
            )
            mel = self.power_to_db(self.mel_power(spec[..., :n_frames]))
        return mel.unsqueeze(1)  # (batch, 1, frames, n_mels)
