"""The audio modality: spectrogram size modulation, one mel spectrogram per level with fewer frames and mel bins."""

from __future__ import annotations

import contextlib
import functools
import io
import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from icpc.contract import Level, Spec, consistent_positions
from icpc.pipeline.modalities.base import Compressed, Modality
from icpc.pipeline.scan import file_scanner

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg"}
# Sample rates outside this range are refused as implausible (a garbled header, not audio).
MIN_RATE, MAX_RATE = 1_000, 768_000
# Most samples (frames x channels) one file may decode to: 256 MB of float32. A compressed file's
# header can declare far more than its bytes hold; this is checked before the buffer is allocated.
MAX_DECODED_SAMPLES = 64_000_000
# libsndfile logs "data : 15096 (should be 7526)" when a WAV's data chunk is shorter than its
# header declares (a cut download); it then silently reads what is there. Writers that stream to a
# pipe put a placeholder there instead: 0, 0xFFFFFFFF, or 0x7FFFF000 (espeak-ng --stdout), which
# is not truncation.
_WAV_DATA_LOG = re.compile(r"data\s*:\s*(\d+)\s*\(should be (\d+)\)")
_STREAMING_SIZE = 0x7FFF0000  # declared sizes from here up are "length unknown"


@dataclass
class AudioConfig:
    """Clip format, spectrogram ladder and tokenization of an audio dataset."""

    sample_rate: int = 16_000     # Hz; every clip is resampled to this rate
    duration_s: float = 1.0       # s; shorter clips are zero-padded around the centre, longer cut to the loudest window
    # [time frames, mel bins] per level; ladder[0] is the reference. Frames span the clip evenly (hop = samples/frames)
    ladder: list[list[int]] = field(default_factory=lambda: [[96, 64], [80, 64], [64, 48], [48, 48], [32, 32]])
    patch: list[int] = field(default_factory=lambda: [8, 8])  # [mel bins, frames] per spectrogram patch (pf, pt)
    n_fft: int = 512              # samples per STFT window at every level (32 ms at 16 kHz); must cover the largest hop
    f_min: float = 20.0           # Hz, lowest mel filter edge
    f_max: float = 0.0            # Hz, highest mel filter edge; 0 = sample_rate / 2
    top_db: float = 80.0          # dB below the clip's peak mapped to -1 (the peak maps to +1); quieter is clamped
    max_seconds: float = 30.0     # s; only this much of a longer file is decoded (the file is counted as capped)
    silence_dbfs: float = -60.0   # dBFS; a clip whose peak sample is below this is rejected as silent

    def validate(self) -> list[str]:
        errors = []
        if self.sample_rate < MIN_RATE or self.duration_s <= 0:
            errors.append(f"audio.sample_rate={self.sample_rate}, audio.duration_s={self.duration_s}: "
                          f"need a rate >= {MIN_RATE} Hz and a positive duration")
            return errors
        if not self.ladder or any(len(lv) != 2 or min(lv) <= 0 for lv in self.ladder):
            errors.append(f"audio.ladder={self.ladder}: needs one or more [frames, mels] pairs of positive ints")
            return errors
        if len(self.patch) != 2 or min(self.patch) <= 0:
            errors.append(f"audio.patch={self.patch}: must be [mel bins, frames], both positive")
            return errors
        pf, pt = self.patch
        if bad := [lv for lv in self.ladder if lv[0] % pt or lv[1] % pf]:
            errors.append(f"audio.ladder: {bad} are not multiples of audio.patch={self.patch} "
                          f"(frames of {pt}, mel bins of {pf})")
        if any(lv[0] > self.ladder[0][0] or lv[1] > self.ladder[0][1] for lv in self.ladder[1:]):
            errors.append(f"audio.ladder={self.ladder}: levels 1..K must not have more frames or mels than level 0")
        samples = clip_samples(self.sample_rate, self.duration_s)
        if (hop := level_hop(samples, min(lv[0] for lv in self.ladder))) > self.n_fft:
            errors.append(f"audio.n_fft={self.n_fft}: shorter than the largest hop ({hop} samples), so frames "
                          f"would skip audio; raise n_fft or use more frames")
        nyquist = self.sample_rate / 2
        if not 0 <= self.f_min < (self.f_max or nyquist) <= nyquist:
            errors.append(f"audio.f_min={self.f_min}, audio.f_max={self.f_max}: need 0 <= f_min < f_max <= "
                          f"{nyquist:g} Hz (sample_rate / 2; f_max 0 means that)")
        if self.top_db <= 0 or self.max_seconds < self.duration_s:
            errors.append(f"audio.top_db={self.top_db}, audio.max_seconds={self.max_seconds}: top_db must be "
                          f"positive and max_seconds at least duration_s={self.duration_s}")
        return errors


# ----------------------------------------------------------------------------- spec and pure helpers


def build_spec(cfg: AudioConfig) -> Spec:
    """Level i is a ``mels_i x frames_i`` spectrogram cut into ``pf x pt`` patches on an ``(f, t)`` grid."""
    pf, pt = cfg.patch
    ladder = tuple(Level({"frames": n, "mels": m}, (m // pf, n // pt), (m // pf) * (n // pt)) for n, m in cfg.ladder)
    tokenization = {
        "patch": [pf, pt], "token_dim": pf * pt, "token_dtype": "float16", "sample_rate": cfg.sample_rate, "duration_s": cfg.duration_s,
        "n_fft": cfg.n_fft, "f_min": cfg.f_min, "f_max": cfg.f_max or cfg.sample_rate / 2, "top_db": cfg.top_db,
        "max_seconds": cfg.max_seconds, "silence_dbfs": cfg.silence_dbfs,
        "values": "mel power in dB relative to the clip's peak, (dB - peak) / (top_db / 2) + 1, clamped to [-1, 1]",
    }
    return Spec("audio", ladder[0].grid, ladder, tokenization)


def clip_samples(sample_rate: int, duration_s: float) -> int:
    return int(round(sample_rate * duration_s))


def level_hop(samples: int, frames: int) -> int:
    """Hop in samples that spreads ``frames`` frames evenly over ``samples`` (rounded: 16000/96 -> 167)."""
    return max(1, int(round(samples / frames)))


def fit_duration(wave: np.ndarray, samples: int, sample_rate: int) -> np.ndarray:
    """(S,) -> (samples,): zero-pad a short clip around its centre, or cut a long one to its loudest window.

    The window is searched on a 10 ms grid of start offsets; ties go to the earliest, so the cut is
    deterministic.
    """
    n = len(wave)
    if n <= samples:
        left = (samples - n) // 2
        return np.pad(wave, (left, samples - n - left))
    step = max(1, sample_rate // 100)
    energy = np.concatenate([[0.0], np.cumsum(wave.astype(np.float64) ** 2)])
    starts = np.arange(0, n - samples + 1, step)
    best = int(starts[np.argmax(energy[starts + samples] - energy[starts])])
    return wave[best:best + samples]


def patchify_spectrogram(spec: np.ndarray, pf: int, pt: int) -> np.ndarray:
    """(mels, frames) -> (mels/pf * frames/pt, pf*pt) patches, row-major over the (f, t) patch grid."""
    m, t = spec.shape
    gf, gt = m // pf, t // pt
    return spec.reshape(gf, pf, gt, pt).transpose(0, 2, 1, 3).reshape(gf * gt, pf * pt)


# ----------------------------------------------------------------------------- decoding


def decode_audio(data: bytes, max_seconds: float, silence_dbfs: float) -> tuple[np.ndarray, int, float]:
    """Encoded audio (anything libsndfile reads) -> (mono float32 (S,), Hz, seconds in the file).

    Reads at most ``max_seconds``. Raises ValueError naming the reason for undecodable, truncated,
    empty, silent or non-finite audio.
    """
    import soundfile as sf

    if not data:
        raise ValueError("file is empty")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, frames, log = f.samplerate, f.frames, f.extra_info
            if not MIN_RATE <= rate <= MAX_RATE:
                raise ValueError(f"sample rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz")
            if (m := _WAV_DATA_LOG.search(log)) and int(m[2]) < int(m[1]) < _STREAMING_SIZE:
                raise ValueError(f"file is truncated: its header declares {m[1]} data bytes, only {m[2]} are there")
            wanted = min(frames, int(max_seconds * rate))
            if wanted * f.channels > MAX_DECODED_SAMPLES:
                raise ValueError(f"{f.channels} channels x {wanted} frames exceed the decode limit of "
                                 f"{MAX_DECODED_SAMPLES} samples")
            pcm = f.read(wanted, dtype="float32", always_2d=True)
    except sf.LibsndfileError as exc:
        raise ValueError(f"cannot decode audio: {exc.error_string}") from None
    if pcm.size == 0:
        raise ValueError("file holds no audio samples")
    if not np.isfinite(pcm).all():
        raise ValueError(f"audio has {int((~np.isfinite(pcm)).sum())} NaN or infinite samples")
    wave = pcm.mean(axis=1)  # downmix to mono
    peak = float(np.abs(wave).max())
    if peak <= 0 or 20 * math.log10(peak) < silence_dbfs:
        level = "-inf" if peak <= 0 else f"{20 * math.log10(peak):.1f}"
        raise ValueError(f"audio is silent: peak {level} dBFS is below silence_dbfs={silence_dbfs:g}")
    return wave, rate, frames / rate


@functools.lru_cache(maxsize=64)
def _mel_transform(sample_rate: int, n_fft: int, hop: int, n_mels: int, f_min: float, f_max: float):
    import torchaudio

    # slaney area-normalised filters: a band's value is power per Hz, so 32 and 64 bins of the same
    # sound sit at the same dB (peak-height filters would read ~3 dB louder per halving of the bins).
    return torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop,
                                                f_min=f_min, f_max=f_max, n_mels=n_mels, center=False,
                                                norm="slaney", mel_scale="slaney", power=2.0)


def log_mel(wave, tok: dict[str, Any], frames: int, mels: int) -> np.ndarray:
    """torch (samples,) -> float32 (mels, frames) in [-1, 1]: frame i centred at (i + 1/2) * hop samples.

    Frames are computed from the waveform with hop = samples / frames (never by resizing another
    spectrogram); zero padding of ``(n_fft - hop) / 2`` on the left centres the windows on the frames'
    spans, as the reference grid assumes.
    """
    import torch
    import torchaudio

    n_fft, samples = int(tok["n_fft"]), len(wave)
    hop = level_hop(samples, frames)
    left = (n_fft - hop) // 2
    right = max(0, (frames - 1) * hop + n_fft - left - samples)
    padded = torch.nn.functional.pad(wave, (left, right))
    mel = _mel_transform(int(tok["sample_rate"]), n_fft, hop, mels, float(tok["f_min"]), float(tok["f_max"]))(padded)
    db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=float(tok["top_db"]))(mel[:, :frames])
    half = float(tok["top_db"]) / 2
    return ((db - db.max()) / half + 1).clamp(-1, 1).numpy()


# ----------------------------------------------------------------------------- compressor


@dataclass
class Clip:
    """A decoded clip: mono float32 ``(samples,)`` at the dataset rate, fitted to its duration."""

    signal: np.ndarray
    seconds: float       # length of the file (s)
    truncated: bool      # the file was longer than max_seconds and only that much was decoded


@contextlib.contextmanager
def _one_thread():
    """These tensors are tiny: one thread takes ~0.1 ms per level where torch's thread pool,
    contending for a busy 2-core machine, took 50 ms (measured), so decode and compress
    single-threaded. (Ray workers already run with OMP_NUM_THREADS=1; this covers in-process callers.)"""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def decode(data: bytes, spec: Spec) -> Clip:
    """Encoded audio -> the clip at the dataset rate and duration: decode (soundfile), downmix,
    resample (torchaudio), zero-pad or cut to the loudest ``duration_s`` window."""
    import torch
    import torchaudio

    tok = spec.tokenization
    wave, rate, seconds = decode_audio(data, float(tok["max_seconds"]), float(tok["silence_dbfs"]))
    target = int(tok["sample_rate"])
    with _one_thread():
        signal = torch.from_numpy(np.ascontiguousarray(wave))
        if rate != target:
            signal = torchaudio.functional.resample(signal, rate, target)
    samples = clip_samples(target, float(tok["duration_s"]))
    return Clip(fit_duration(signal.numpy(), samples, target), seconds, seconds > float(tok["max_seconds"]))


def compress(clip: Clip, spec: Spec, levels: Sequence[int] | None = None) -> Compressed:
    """Decoded clip -> patches float16 (N_i, pf*pt) and positions int32 (N_i,) per level.

    One mel spectrogram per level straight from the waveform. ``levels`` computes only those
    levels, in that order (the server's cascade); None = all. ``meta`` records the file's duration
    and whether it was cut at ``max_seconds`` (``truncated``, counted by the job).
    """
    import torch

    tok = spec.tokenization
    pf, pt = tok["patch"]
    signal = torch.from_numpy(clip.signal)
    out = []
    with _one_thread():
        for level in (spec.ladder if levels is None else [spec.ladder[i] for i in levels]):
            spectrogram = log_mel(signal, tok, int(level.params["frames"]), int(level.params["mels"]))
            out.append((patchify_spectrogram(spectrogram, pf, pt).astype(np.float16),
                        consistent_positions(spec.reference_grid, level.grid)))
    return Compressed(out, {"seconds": round(clip.seconds, 3), "truncated": clip.truncated})


def warm_up(spec: Spec) -> None:
    """Import soundfile, torch and torchaudio before the first sample (seconds of CPU on first import,
    which must not count against the first sample's ``sample_timeout_s``)."""
    import soundfile  # noqa: F401
    import torch  # noqa: F401
    import torchaudio  # noqa: F401


MODALITY = Modality(
    name="audio", config_type=AudioConfig, build_spec=build_spec, scan=file_scanner(AUDIO_EXTENSIONS),
    decode=decode, compress=compress, media_types=("audio/",), embedding="linear", shared_positions=True,
    warm_up=warm_up,
)
