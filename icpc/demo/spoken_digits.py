"""Spoken-digit demo data: one-second 16 kHz clips synthesized offline with espeak-ng and flite, split by voice."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from icpc.contract import unit_hash

INSTALL_HINT = "install them with 'apt-get install -y espeak-ng flite sox' (Debian packages)"
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")  # class folder = the digit
SAMPLE_RATE, SECONDS = 16_000, 1.0
DEFAULT_TRAIN, DEFAULT_TEST = 1600, 400

# espeak-ng's English accents (`espeak-ng --voices=en`, the gmw/ voices: the mb/ ones need mbrola).
ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
                  "en-029", "en-us-nyc")
# Voice variants (files in espeak-ng-data/voices/!v; an unknown name silently falls back to the
# default voice, so build checks each one exists). A voice is accent x variant: the variant sets
# formants and pitch range, the accent the pronunciation. Test variants never occur in training.
ESPEAK_VARIANTS = {"train": ("m1", "m2", "m3", "m4", "m7", "f1", "f2", "f4", "klatt", "klatt3", "croak", "Andy"),
                   "test": ("m6", "f3", "klatt2")}
ESPEAK_SPEEDS = (140, 170, 200)   # words per minute
ESPEAK_PITCHES = (30, 50, 70)     # espeak pitch, 0..99
# flite's built-in voices (`flite -lv`; awb_time only says the time). kal and kal16 are one speaker.
FLITE_VOICES = {"train": ("kal", "kal16", "awb", "slt"), "test": ("rms",)}
FLITE_STRETCHES = (0.85, 1.0, 1.15)                       # duration_stretch: > 1 speaks slower
FLITE_F0 = {"slt": (150, 175, 200)}                        # Hz, int_f0_target_mean for the female voice
FLITE_F0_DEFAULT = (90, 110, 130)                          # Hz, for the male voices


@dataclass(frozen=True)
class Voice:
    """One synthesizer setting: a voice (engine, accent, variant) at one speed and pitch."""

    engine: str       # espeak-ng or flite
    name: str         # espeak "ACCENT+VARIANT", flite voice name
    speed: float      # espeak words per minute, flite duration_stretch
    pitch: float      # espeak pitch 0..99, flite mean F0 in Hz

    @property
    def tag(self) -> str:
        return f"{self.engine}_{self.name.replace('+', '_')}_s{self.speed:g}_p{self.pitch:g}"

    def command(self, word: str, wav: Path) -> list[str]:
        if self.engine == "espeak-ng":
            return ["espeak-ng", "-v", self.name, "-s", f"{self.speed:g}", "-p", f"{self.pitch:g}",
                    "-w", str(wav), word]
        return ["flite", "-voice", self.name, "--setf", f"duration_stretch={self.speed:g}",
                "--setf", f"int_f0_target_mean={self.pitch:g}", "-t", word, "-o", str(wav)]


def voice_settings(split: str, seed: int) -> list[Voice]:
    """Every setting of ``split``'s voices, ordered so that the first ones cover every voice once.

    Voices come in a seeded order, and each voice's speed x pitch settings in a seeded order; the
    list deals them round-robin (voice 1 setting 1, voice 2 setting 1, ..., voice 1 setting 2, ...),
    so a small build still spans accents, variants and both engines.
    """
    per_voice: list[list[Voice]] = []
    for accent in ESPEAK_ACCENTS:
        for variant in ESPEAK_VARIANTS[split]:
            name = f"{accent}+{variant}"
            per_voice.append([Voice("espeak-ng", name, s, p) for s in ESPEAK_SPEEDS for p in ESPEAK_PITCHES])
    for name in FLITE_VOICES[split]:
        pitches = FLITE_F0.get(name, FLITE_F0_DEFAULT)
        per_voice.append([Voice("flite", name, s, p) for s in FLITE_STRETCHES for p in pitches])
    per_voice.sort(key=lambda vs: unit_hash("voice", seed, vs[0].engine, vs[0].name))
    for vs in per_voice:
        vs.sort(key=lambda v: unit_hash("setting", seed, v.tag))
    rounds = max(len(vs) for vs in per_voice)
    return [vs[r] for r in range(rounds) for vs in per_voice if r < len(vs)]


def clip_plan(split: str, n: int, seed: int) -> list[tuple[Voice, int]]:
    """``n`` (voice setting, digit) pairs: every digit of each setting in turn, so classes stay balanced."""
    settings = voice_settings(split, seed)
    if n > len(settings) * len(WORDS):
        raise ValueError(f"spoken-digits {split}: {n} clips asked, its voices give at most "
                         f"{len(settings) * len(WORDS)}")
    return [(settings[i // len(WORDS)], i % len(WORDS)) for i in range(n)]


# ----------------------------------------------------------------------------- synthesis (subprocesses)


def check_tools() -> None:
    """Raise naming the missing programs and the install command; check espeak-ng's variant files."""
    missing = [t for t in ("espeak-ng", "flite", "sox") if shutil.which(t) is None]
    if missing:
        raise FileNotFoundError(f"the spoken-digits demo needs {', '.join(missing)}; {INSTALL_HINT}")
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    data_dir = Path(out.split("Data at:")[-1].strip())
    absent = [v for vs in ESPEAK_VARIANTS.values() for v in vs if not (data_dir / "voices" / "!v" / v).is_file()]
    if absent:
        raise FileNotFoundError(f"espeak-ng variants {absent} are not in {data_dir}/voices/!v; espeak-ng would "
                                f"silently use its default voice instead")


def synthesize(voice: Voice, word: str, path: Path, scratch: Path) -> None:
    """Speak ``word`` with ``voice``; trim silence, resample to 16 kHz mono 16 bit, fit to one second.

    ``sox -D`` turns dither off (sox dithers randomly by default, so rebuilds would differ).
    The clip is zero-padded around its centre (or cut to its loudest second) and written under a
    temporary name first, so an interrupted build never leaves a half file.
    """
    import soundfile as sf

    from icpc.pipeline.modalities.audio import fit_duration

    stem = f"{path.parent.parent.name}_{path.parent.name}_{path.stem}"  # unique per clip: split, digit, voice
    raw, trimmed = scratch / f"{stem}.raw.wav", scratch / f"{stem}.trim.wav"
    for cmd in (voice.command(word, raw),
                ["sox", "-D", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(trimmed),
                 "silence", "1", "0.01", "1%", "reverse", "silence", "1", "0.01", "1%", "reverse"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    pcm, rate = sf.read(trimmed, dtype="int16")
    if rate != SAMPLE_RATE or len(pcm) < SAMPLE_RATE // 20:
        raise RuntimeError(f"{voice.tag} saying {word!r} gave {len(pcm)} samples at {rate} Hz after trimming")
    clip = fit_duration(pcm, int(SAMPLE_RATE * SECONDS), SAMPLE_RATE)
    tmp = path.with_name(f".{path.name}.tmp")
    sf.write(tmp, clip, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)
    raw.unlink()
    trimmed.unlink()


def build_spoken_digits(output: str | os.PathLike, train: int = 0, test: int = 0, seed: int = 0,
                        workers: int = 2) -> dict[str, int]:
    """Write ``train``/``test`` one-second clips (0 = 1600 / 400) as ``SPLIT/DIGIT/VOICE.wav``.

    Test voices are unseen in training (other espeak variants, another flite speaker); ``seed``
    picks which speeds and pitches of each voice come first. Clips already present are kept, so
    a re-run only fills gaps; ``voices.csv`` lists the voice behind every clip.
    """
    from tqdm import tqdm

    check_tools()
    out = Path(output)
    for stale in out.glob("*/*/.*.tmp"):  # left by an interrupted build
        stale.unlink()
    rows, counts = [], {}
    with tempfile.TemporaryDirectory(prefix="spoken-digits-") as scratch, ThreadPoolExecutor(workers) as pool:
        jobs = []
        for split, n in (("train", train or DEFAULT_TRAIN), ("test", test or DEFAULT_TEST)):
            plan = clip_plan(split, n, seed)
            for digit in range(len(WORDS)):
                (out / split / str(digit)).mkdir(parents=True, exist_ok=True)
            for voice, digit in plan:
                path = out / split / str(digit) / f"{voice.tag}.wav"
                rows.append({"split": split, "digit": digit, "file": str(path.relative_to(out)),
                             "engine": voice.engine, "voice": voice.name, "speed": voice.speed, "pitch": voice.pitch})
                if not path.exists():
                    jobs.append(pool.submit(synthesize, voice, WORDS[digit], path, Path(scratch)))
            counts[split] = len(plan)
        for job in tqdm(jobs, desc="synthesize spoken digits", unit="clip", disable=not jobs):
            job.result()  # re-raise the first failure
    with open(out / "voices.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return counts

