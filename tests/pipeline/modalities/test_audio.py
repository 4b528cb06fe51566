"""The audio compressor on synthesized tones: spectrogram shapes and content per level, positions, bad inputs."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import soundfile as sf

from icpc.config import ConfigError, finalize
from icpc.pipeline.config import CompressConfig
from icpc.contract import consistent_positions
from icpc.pipeline.modalities.audio import (MODALITY, AudioConfig, build_spec, decode_audio, fit_duration,
                                            patchify_spectrogram)


def compress(data: bytes, spec, levels=None):
    """Decode then compress, as the pipeline does; the levels' (tokens, positions)."""
    return MODALITY.compress_bytes(data, spec, levels).levels

RATE = 16_000


def wav_bytes(wave: np.ndarray, rate: int = RATE, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, subtype=subtype, format="WAV")
    return buf.getvalue()


def tone(freq: float, seconds: float = 1.0, rate: int = RATE, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def unpatch(tokens: np.ndarray, mels: int, frames: int, pf: int = 8, pt: int = 8) -> np.ndarray:
    """Inverse of patchify_spectrogram, written out here: (N, pf*pt) -> (mels, frames)."""
    gf, gt = mels // pf, frames // pt
    return tokens.astype(np.float32).reshape(gf, gt, pf, pt).transpose(0, 2, 1, 3).reshape(mels, frames)


def test_spec_has_the_ladder_and_an_f_by_t_reference_grid():
    spec = build_spec(AudioConfig())
    assert spec.modality == "audio" and spec.reference_grid == (8, 12)  # 64 mels / 8, 96 frames / 8
    assert [lv.grid for lv in spec.ladder] == [(8, 12), (8, 10), (6, 8), (6, 6), (4, 4)]
    assert [lv.tokens for lv in spec.ladder] == [96, 80, 48, 36, 16]
    assert [lv.name for lv in spec.ladder][-1] == "frames32_mels32"
    assert spec.tokenization["token_dim"] == 64 and spec.tokenization["patch"] == [8, 8]


def test_every_level_has_its_shape_dtype_and_consistent_positions():
    spec = build_spec(AudioConfig())
    levels = compress(wav_bytes(tone(440)), spec)
    assert [t.shape for t, _ in levels] == [(96, 64), (80, 64), (48, 64), (36, 64), (16, 64)]
    for (tokens, pos), level in zip(levels, spec.ladder):
        assert tokens.dtype == np.float16 and pos.dtype == np.int32
        assert np.array_equal(pos, consistent_positions(spec.reference_grid, level.grid))
        assert tokens.min() >= -1 and tokens.max() == 1  # the clip's peak maps to +1
    assert MODALITY.compress_bytes(wav_bytes(tone(440)), spec).meta == {"seconds": 1.0, "truncated": False}


@pytest.mark.parametrize("ladder, expected", [
    # reference (2 f, 4 t) patches; level (1 f, 2 t): f centre 0.5*2/1 -> cell 1; t centres 1, 3 -> [1*4+1, 1*4+3]
    ([[32, 16], [16, 8]], [5, 7]),
    # reference (2, 3); level (2, 2): t centres 0.75 -> 0 and 2.25 -> 2; f unchanged -> [0, 2, 3, 5]
    ([[24, 16], [16, 16]], [0, 2, 3, 5]),
    # reference (2, 2); level (1, 1): the single patch's centre is at (1, 1) -> 1*2+1
    ([[16, 16], [8, 8]], [3]),
])
def test_positions_on_small_grids_by_hand(ladder, expected):
    spec = build_spec(AudioConfig(ladder=ladder))
    levels = compress(wav_bytes(tone(440)), spec)
    assert levels[0][1].tolist() == list(range(math.prod(spec.reference_grid)))
    assert levels[1][1].tolist() == expected


def test_a_tone_lands_in_its_mel_band_at_every_level():
    # slaney mel: 3 f / 200 below 1 kHz (so 1 kHz = 15 mel, 20 Hz = 0.3), 27 ln(f/1000)/ln 6.4 above:
    # 8 kHz = 45.245 mel. n mels put n + 2 points evenly on [0.3, 45.245]; filter k peaks at point
    # k + 1, so 1 kHz peaks in filter round((15 - 0.3) / step) - 1: 20 of 64, 15 of 48, 10 of 32.
    spec = build_spec(AudioConfig())
    levels = compress(wav_bytes(tone(1000)), spec)
    for (tokens, _), level in zip(levels, spec.ladder):
        mels, frames = int(level.params["mels"]), int(level.params["frames"])
        image = unpatch(tokens, mels, frames)
        step = (45.245 - 0.3) / (mels + 1)
        assert image.mean(axis=1).argmax() == round(14.7 / step) - 1, level.name


def test_frames_are_computed_from_the_waveform_and_centred_on_their_spans():
    # a 2 kHz burst over the first half second, silence after: a frame of level n is centred at
    # (i + 1/2) * hop with a 512-sample window, so it is pure silence (-1, the floor) once
    # (i + 1/2) * hop - 256 >= 8000, hears the burst once its window holds 64 samples of it, and
    # holds it fully while (i + 1/2) * hop + 256 <= 8000
    wave = np.concatenate([tone(2000, 0.5), np.zeros(8000, np.float32)])
    spec = build_spec(AudioConfig())
    for (tokens, _), level in zip(compress(wav_bytes(wave), spec), spec.ladder):
        mels, frames = int(level.params["mels"]), int(level.params["frames"])
        image = unpatch(tokens, mels, frames)
        hop = round(16000 / frames)
        centres = (np.arange(frames) + 0.5) * hop
        assert np.all(image[:, centres - 256 >= 8000] == -1), level.name
        assert np.all(image[:, centres - 256 <= 8000 - 64].max(axis=0) > -1), level.name  # >= 64 burst samples
        assert np.all(image[:, centres + 256 <= 8000].max(axis=0) > 0.5), level.name


def test_stereo_44k_is_downmixed_and_resampled_like_the_16k_mono_clip():
    spec = build_spec(AudioConfig())
    stereo = np.stack([tone(1000, rate=44_100), np.zeros(44_100, np.float32)], axis=1)
    a = compress(wav_bytes(stereo, 44_100, "FLOAT"), spec)
    b = compress(wav_bytes(tone(1000), RATE, "FLOAT"), spec)
    for (ta, pa), (tb, pb), level in zip(a, b, spec.ladder):
        assert np.array_equal(pa, pb)
        mels, frames = int(level.params["mels"]), int(level.params["frames"])
        # dB relative to each clip's peak: halving the amplitude (downmix) changes nothing, and
        # 44.1 -> 16 kHz resampling leaves < 0.2 dB (0.005 of the 40 dB unit) away from the clip's
        # two ends, where the resampler's filter sees the cut-off tone
        diff = np.abs(unpatch(ta, mels, frames) - unpatch(tb, mels, frames))
        assert diff[:, 1:-1].max() < 0.005, level.name


def test_compress_only_the_levels_asked_for():
    spec = build_spec(AudioConfig())
    data = wav_bytes(tone(700))
    full, some = compress(data, spec), compress(data, spec, levels=[4, 0])
    assert len(some) == 2
    assert np.array_equal(some[0][0], full[4][0]) and np.array_equal(some[1][0], full[0][0])


def test_fit_duration_pads_around_the_centre_or_keeps_the_loudest_window():
    assert fit_duration(np.array([1, 2, 3]), 7, 100).tolist() == [0, 0, 1, 2, 3, 0, 0]
    wave = np.zeros(1000)
    wave[600:650] = 1.0  # the loud part; 10 ms steps at 1 kHz are 10 samples
    cut = fit_duration(wave, 200, 1000)
    assert len(cut) == 200 and cut.sum() == 50  # the whole burst is inside the window
    assert fit_duration(wave, 200, 1000).tolist() == wave[450:650].tolist()  # earliest window that holds it


def test_patchify_spectrogram_by_hand():
    spec = np.arange(24).reshape(4, 6)  # 4 mel bins x 6 frames, patches of 2 bins x 3 frames
    patches = patchify_spectrogram(spec, 2, 3)
    assert patches.shape == (4, 6)
    assert patches[0].tolist() == [0, 1, 2, 6, 7, 8] and patches[1].tolist() == [3, 4, 5, 9, 10, 11]
    assert patches[2].tolist() == [12, 13, 14, 18, 19, 20]


def _truncated_wav() -> bytes:
    data = wav_bytes(tone(440))
    return data[: len(data) // 2]


@pytest.mark.parametrize("data, reason", [
    (b"", "file is empty"),
    (b"RIFF\x00\x00garbage bytes, not audio at all" * 4, "cannot decode audio"),
    (wav_bytes(tone(440))[:30], "cannot decode audio"),                       # header cut short
    (_truncated_wav(), "file is truncated: its header declares 32000 data bytes, only 15978"),
    (wav_bytes(np.zeros(0, np.float32)), "holds no audio samples"),
    (wav_bytes(np.zeros(RATE, np.float32)), "silent: peak -inf dBFS"),
    (wav_bytes(tone(440, amplitude=1e-4), subtype="FLOAT"), "silent: peak -80.0 dBFS is below silence_dbfs=-60"),
    (wav_bytes(np.where(np.arange(RATE) == 5, np.nan, tone(440)).astype(np.float32), subtype="FLOAT"),
     "1 NaN or infinite samples"),
    (wav_bytes(np.where(np.arange(RATE) < 3, np.inf, tone(440)).astype(np.float32), subtype="FLOAT"),
     "3 NaN or infinite samples"),
])
def test_bad_audio_is_refused_with_the_reason(data, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(")):
        compress(data, build_spec(AudioConfig()))


def test_a_streaming_wav_header_is_not_taken_for_truncation():
    data = bytearray(wav_bytes(tone(440)))
    data[40:44] = (0x7FFFF000).to_bytes(4, "little")  # data size as espeak-ng --stdout writes it
    wave, rate, seconds = decode_audio(bytes(data), 30, -60)
    assert rate == RATE and len(wave) == RATE and seconds == 1.0  # the real length, not the placeholder's


def test_a_file_that_would_decode_to_too_many_samples_is_refused_before_reading(monkeypatch):
    import icpc.pipeline.modalities.audio as audio_module

    monkeypatch.setattr(audio_module, "MAX_DECODED_SAMPLES", 2 * RATE - 1)
    stereo = np.stack([tone(440), tone(440)], axis=1)
    with pytest.raises(ValueError, match="2 channels x 16000 frames exceed the decode limit"):
        decode_audio(wav_bytes(stereo), 30, -60)
    assert len(decode_audio(wav_bytes(tone(440)), 30, -60)[0]) == RATE  # one channel fits


def test_a_long_file_is_capped_and_reported():
    cfg = AudioConfig(max_seconds=2.0)
    wave = np.concatenate([tone(300, 2.5, amplitude=0.1), tone(300, 0.5, amplitude=0.9)])  # loud part past 2 s
    assert MODALITY.compress_bytes(wav_bytes(wave), build_spec(cfg)).meta == {"seconds": 3.0, "truncated": True}
    decoded, _, _ = decode_audio(wav_bytes(wave), cfg.max_seconds, cfg.silence_dbfs)
    assert len(decoded) == 2 * RATE and np.abs(decoded).max() < 0.11  # the loud tail was never read


def test_config_errors_name_the_field_and_the_fix():
    errors = AudioConfig(ladder=[[96, 64], [50, 40]], patch=[8, 8], n_fft=128).validate()
    assert any("[[50, 40]] are not multiples of audio.patch" in e for e in errors)
    assert any("audio.n_fft=128: shorter than the largest hop (320 samples)" in e for e in errors)
    assert any("must not have more frames" in e for e in AudioConfig(ladder=[[32, 32], [64, 32]]).validate())
    assert any("f_max" in e for e in AudioConfig(f_max=9000).validate())
    assert AudioConfig().validate() == []


def test_ladder_and_patch_can_be_set_from_the_command_line():
    cfg = finalize(CompressConfig(modality="audio", input="x"),
                   ["audio.ladder=[[32,16],[16,8]]", "audio.patch=8,8", "audio.sample_rate=8000"])
    assert cfg.audio.ladder == [[32, 16], [16, 8]] and cfg.audio.patch == [8, 8]
    with pytest.raises(ConfigError, match="audio.ladder"):
        finalize(CompressConfig(modality="audio", input="x"), ["audio.ladder=[[30,16]]"])


def test_the_registry_scans_a_path_label_csv_of_audio_files(tmp_path):
    from icpc.pipeline.modalities import get_modality
    from icpc.pipeline.scan import RecordView

    for name in ("a.wav", "b.flac", "c.ogg"):
        sf.write(tmp_path / name, tone(440), RATE)  # the format follows the extension
    (tmp_path / "d.mp3").write_bytes(b"ID3")
    (tmp_path / "clips.csv").write_text("path,label\na.wav,yes\nb.flac,no\nc.ogg,yes\nd.mp3,no\nmissing.wav,no\n")
    cfg = CompressConfig(modality="audio", input=str(tmp_path / "clips.csv"))
    listing, rejects, classes = get_modality("audio").scan(cfg)
    records = list(RecordView(listing))
    assert classes == ["no", "yes"]
    assert sorted((r.source.split("/")[-1], r.label_name) for r in records) == [
        ("a.wav", "yes"), ("b.flac", "no"), ("c.ogg", "yes")]
    assert sorted(r.error.split(";")[0] for r in rejects) == [f"no file at {tmp_path / 'missing.wav'}",
                                                              "unsupported extension '.mp3'"]
    assert all(len(compress(open(r.source, "rb").read(), build_spec(AudioConfig()))) == 5 for r in records)
