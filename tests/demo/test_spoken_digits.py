"""The spoken-digit demo set: voices split by speaker, real espeak-ng variants, balanced classes, identical rebuilds."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from icpc.demo.spoken_digits import (ESPEAK_ACCENTS, ESPEAK_VARIANTS, FLITE_VOICES, WORDS, build_spoken_digits,
                                 check_tools, clip_plan, voice_settings)


def _variant(v) -> str:
    return v.name.split("+")[-1]


def test_test_voices_never_occur_in_training():
    train, test = voice_settings("train", 0), voice_settings("test", 0)
    assert {_variant(v) for v in train if v.engine == "espeak-ng"}.isdisjoint(
        {_variant(v) for v in test if v.engine == "espeak-ng"})
    assert {v.name for v in train if v.engine == "flite"}.isdisjoint({v.name for v in test if v.engine == "flite"})
    assert len(train) == 8 * 12 * 9 + 4 * 9 and len(test) == 8 * 3 * 9 + 9  # voices x speeds x pitches


def test_the_first_settings_cover_every_voice_once():
    settings = voice_settings("train", 0)
    voices = {(v.engine, v.name) for v in settings}
    first = settings[:len(voices)]
    assert {(v.engine, v.name) for v in first} == voices
    other_seed = voice_settings("train", 1)
    assert other_seed != settings and sorted(other_seed, key=str) == sorted(settings, key=str)


def test_clip_plan_keeps_classes_balanced():
    plan = clip_plan("test", 95, 0)
    counts = [sum(d == k for _, d in plan) for k in range(10)]
    assert counts == [10] * 5 + [9] * 5
    with pytest.raises(ValueError, match="at most 2250"):
        clip_plan("test", 2251, 0)


def _speak(voice: str) -> str:
    wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", "seven"], capture_output=True, check=True).stdout
    return hashlib.sha256(wav).hexdigest()


def test_every_espeak_variant_is_real_and_changes_the_voice():
    check_tools()  # the tools are installed and every variant file is in espeak-ng's voices/!v
    # an unknown variant silently falls back to the accent's default voice: ours must not
    default = _speak("en-us")
    assert _speak("en-us+no_such_variant") == default
    for variant in [v for vs in ESPEAK_VARIANTS.values() for v in vs]:
        assert _speak(f"en-us+{variant}") != default, variant
    assert "en-gb-scotland" in ESPEAK_ACCENTS
    listed = subprocess.run(["flite", "-lv"], capture_output=True, text=True, check=True).stdout.split()
    assert {v for vs in FLITE_VOICES.values() for v in vs} <= set(listed)


def test_build_writes_one_second_clips_and_rebuilds_identically(tmp_path):
    import soundfile as sf

    counts = build_spoken_digits(tmp_path / "a", 12, 4, seed=0)
    build_spoken_digits(tmp_path / "b", 12, 4, seed=0)
    assert counts == {"train": 12, "test": 4}
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.wav"))
    assert len(files) == 16 and {p.parts[0] for p in files} == {"train", "test"}
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
        info = sf.info(tmp_path / "a" / rel)
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 16000, "PCM_16")
    assert sorted({p.parts[1] for p in files}) == [str(d) for d in range(len(WORDS))]
