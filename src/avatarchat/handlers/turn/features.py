"""The input Smart Turn v3 expects: Whisper's 80-bin log-mel of the last 8 s at 16 kHz.

The recipe, as Smart Turn's own inference prepares it (read from pipecat-ai 1.14.0's
``local_smart_turn_v3.py`` and the smart-turn repository; written here from the Whisper
definition, not copied): keep the last 8 s of the utterance; a shorter one gets zeros in
FRONT (the end of the speech always sits at the end of the window); normalize the whole
8 s window to zero mean and unit variance (Hugging Face's ``do_normalize=True``, padding
included); then Whisper's features: a 400-point periodic-Hann STFT every 160 samples,
centred with reflect padding, power spectrum, Slaney mel filters 0-8 kHz, log10 floored at
1e-10, the last frame dropped (801 -> 800), clamped to 8 below the maximum, (x + 4) / 4.
"""

from __future__ import annotations

import functools

import numpy as np

RATE = 16_000
WINDOW_S = 8
WINDOW_SAMPLES = WINDOW_S * RATE
N_FFT = 400
HOP = 160
N_MELS = 80
FRAMES = WINDOW_SAMPLES // HOP  # 800
_NORM_EPS = 1e-7


def last_window(audio: np.ndarray, seconds: float = WINDOW_S) -> np.ndarray:
    """The last ``seconds`` (at most 8) of 16 kHz ``audio``, left-padded with zeros to 8 s."""
    keep = min(int(seconds * RATE), WINDOW_SAMPLES)
    x = np.asarray(audio, np.float32).reshape(-1)[-keep:] if keep > 0 else np.zeros(0, np.float32)
    out = np.zeros(WINDOW_SAMPLES, np.float32)
    if len(x):
        out[-len(x):] = x
    return out


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    # Slaney's scale: linear below 1 kHz (3 per 200 Hz), logarithmic above.
    f = np.asarray(f, np.float64)
    log_part = 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f < 1000.0, f * 3.0 / 200.0, log_part)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    return np.where(m < 15.0, m * 200.0 / 3.0, 1000.0 * np.exp((m - 15.0) * np.log(6.4) / 27.0))


@functools.cache
def mel_filters() -> np.ndarray:
    """[80, 201] triangular filters on Slaney's mel scale, area-normalized (librosa's
    ``mel(sr=16000, n_fft=400, n_mels=80)``, which Whisper uses)."""
    fft_hz = np.linspace(0.0, RATE / 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(RATE / 2)), N_MELS + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_hz[None, :] - lo) / (mid - lo)
    falling = (hi - fft_hz[None, :]) / (hi - mid)
    tri = np.maximum(0.0, np.minimum(rising, falling))
    return tri * (2.0 / (edges[2:] - edges[:-2]))[:, None]


@functools.cache
def _hann() -> np.ndarray:
    n = np.arange(N_FFT)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)  # periodic, as torch.hann_window


def log_mel(window: np.ndarray, normalize: bool = True) -> np.ndarray:
    """[80, 800] float32 features of an 8 s ``window`` (see ``last_window``)."""
    x = np.asarray(window, np.float32)
    if x.shape != (WINDOW_SAMPLES,):
        raise ValueError(f"expected {WINDOW_SAMPLES} samples (8 s at 16 kHz), got shape {x.shape}")
    if normalize:
        x = (x - x.mean()) / np.sqrt(x.var() + _NORM_EPS)
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]  # [801, 400]
    power = np.abs(np.fft.rfft(frames * _hann(), axis=-1)) ** 2  # [801, 201]
    mel = np.log10(np.maximum(mel_filters() @ power.T, 1e-10))[:, :-1]  # [80, 800]
    mel = np.maximum(mel, mel.max() - 8.0)
    return ((mel + 4.0) / 4.0).astype(np.float32)


def features(audio: np.ndarray, seconds: float = WINDOW_S) -> np.ndarray:
    """The model's ``input_features`` for one utterance: [1, 80, 800] float32."""
    return log_mel(last_window(audio, seconds))[None]
