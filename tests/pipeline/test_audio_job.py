"""Audio end to end on synthesized spoken digits: Ray compress, two-process DDP, evaluation, independent readers."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import run_cli, train_ddp
from tests.readers import index_rows, manifest, patches, rejects_rows, shard_samples

TRAIN_CLIPS, TEST_CLIPS = 200, 40
TOKENS = [96, 80, 48, 36, 16]
EPOCHS = 10
BROKEN = {  # file in train/3/ -> (stage, words of the reason); each must land in the rejects table
    "empty.wav": ("read", "empty"),
    "silent.wav": ("compress", "silent"),
    "nan.wav": ("compress", "NaN or infinite"),
    "garbage.wav": ("compress", "cannot decode audio"),
    "truncated.wav": ("compress", "truncated"),
    "notes.txt": ("scan", "extension"),
    "voices.csv": ("scan", "not inside a split and class folder"),   # the builder's voice list, at the root
}


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """200 + 40 spoken-digit clips, the broken files above, a good OGG and a 31 s FLAC (capped at 30 s)."""
    from icpc.demo.spoken_digits import build_spoken_digits

    root = tmp_path_factory.mktemp("digits")
    build_spoken_digits(root, TRAIN_CLIPS, TEST_CLIPS, seed=0)
    three = root / "train" / "3"
    good = sorted(three.glob("*.wav"))[0]
    pcm, rate = sf.read(good, dtype="float32")
    silent, nan = np.zeros_like(pcm), pcm.copy()
    nan[100] = np.nan
    for name, data in {"silent.wav": silent, "nan.wav": nan}.items():
        sf.write(three / name, data, rate, subtype="FLOAT")
    (three / "empty.wav").write_bytes(b"")
    (three / "garbage.wav").write_bytes(bytes(range(256)) * 8)
    (three / "truncated.wav").write_bytes(good.read_bytes()[:20_000])
    (three / "notes.txt").write_text("not audio")
    sf.write(three / "long.flac", np.concatenate([np.zeros(12 * rate, np.float32), pcm,
                                                  np.zeros(18 * rate, np.float32)]), rate)
    sf.write(root / "train" / "5" / "extra.ogg", sf.read(sorted((root / "train" / "5").glob("*.wav"))[0])[0], rate)
    return root


@pytest.fixture(scope="module")
def audio_data(digits, ray_local, tmp_path_factory) -> Path:
    from icpc.config import finalize
    from icpc.pipeline.config import CompressConfig
    from icpc.pipeline.job import run_compress

    out = tmp_path_factory.mktemp("audio_data")
    summary = run_compress(finalize(CompressConfig(modality="audio", input=str(digits), output=str(out),
                                                   shard_samples=25, overwrite=True)), progress=False)
    assert summary["truncated"] == 1  # long.flac
    return out


@pytest.fixture(scope="module")
def audio_run(audio_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("audio_icpc")
    train_ddp(audio_data, out, EPOCHS)  # ~0.5 s an epoch: torchrun's start-up dominates
    return out


def test_every_input_once_and_bad_audio_rejected_with_its_reason(audio_data, digits):
    index, rejects = index_rows(audio_data), rejects_rows(audio_data)
    inputs = {p.relative_to(digits).as_posix() for p in digits.rglob("*") if p.is_file()}
    assert len(inputs) == TRAIN_CLIPS + TEST_CLIPS + len(BROKEN) + 2
    seen = [Path(r["source"]).relative_to(digits).as_posix() for r in index + rejects]
    assert sorted(seen) == sorted(inputs)
    by_name = {Path(r["source"]).name: r for r in rejects}
    assert set(by_name) == set(BROKEN)
    for name, (stage, words) in BROKEN.items():
        assert by_name[name]["stage"] == stage and words in by_name[name]["error"], by_name[name]
    flagged = {Path(r["source"]).name for r in index if r["truncated"]}
    assert flagged == {"long.flac"}
    assert any(r["source"].endswith("extra.ogg") for r in index)


def test_shards_hold_float16_spectrogram_patches_at_every_level(audio_data, digits):
    from icpc.pipeline.modalities.audio import MODALITY, build_spec
    from icpc.pipeline.config import CompressConfig

    m = manifest(audio_data)
    assert m["modality"] == "audio" and m["spec"]["reference_grid"] == [8, 12]
    assert [lv["tokens"] for lv in m["spec"]["ladder"]] == TOKENS
    index = {r["key"]: r for r in index_rows(audio_data)}
    spec = build_spec(CompressConfig().audio)
    found = 0
    for shard in m["shards"]:
        for key, sample in shard_samples(audio_data / shard["name"], "float16", (64,)).items():
            found += 1
            assert sample["label"] == index[key]["label"]
            for level, n in enumerate(TOKENS):
                tokens, pos = sample["levels"][level]
                assert index[key][f"tokens_l{level}"] == n
                assert tokens.shape == (n, 64) and tokens.dtype == np.float16
                assert pos.dtype == np.int32 and pos.min() >= 0 and pos.max() < 96 and np.all(np.diff(pos) > 0)
                assert -1 <= tokens.min() and tokens.max() == 1
            if found == 1:  # the stored level 0 is what the compressor makes of the raw file
                raw = Path(index[key]["source"]).read_bytes()
                assert np.array_equal(sample["levels"][0][0], MODALITY.compress_bytes(raw, spec, [0]).levels[0][0])
    assert found == len(index)


def test_test_split_holds_only_voices_unseen_in_training(audio_data, digits):
    with open(digits / "voices.csv", newline="") as f:
        voice_of = {r["file"]: r["voice"] for r in csv.DictReader(f)}
    voices: dict[str, set[str]] = defaultdict(set)
    for r in index_rows(audio_data):
        rel = Path(r["source"]).relative_to(digits).as_posix()
        if rel in voice_of:
            voices["test" if r["split"] == "test" else "train"].add(voice_of[rel])
    assert voices["test"] and voices["train"] and voices["test"].isdisjoint(voices["train"])
    variants = {split: {v.split("+")[-1] for v in vs} for split, vs in voices.items()}
    assert variants["test"].isdisjoint(variants["train"])  # not even the same espeak variant in another accent


def test_shards_read_with_webdataset(audio_data):
    """One webdataset record per clip: the spectrogram of every level (npy.zst: zstd around an .npy, one
    handler on top of the standard decoders), the label and the JSON."""
    import webdataset as wds
    import zstandard

    def npy_zst(key, data):
        if key.endswith(".npy.zst"):
            return np.load(io.BytesIO(zstandard.ZstdDecompressor().decompress(data)), allow_pickle=False)
        return None

    shard = manifest(audio_data)["shards"][0]
    path = audio_data / shard["name"]
    records = list(wds.WebDataset(str(path), shardshuffle=False).decode(npy_zst))
    expected = shard_samples(path, "float16", (64,))
    assert len(records) == shard["samples"] == len(expected)
    ladder = manifest(audio_data)["spec"]["ladder"]
    for r in records:
        assert r["cls"] == expected[r["__key__"]]["label"] and r["json"]["tokens"] == TOKENS
        for level, lv in enumerate(ladder):
            spectrogram = r[f"l{level}.npy.zst"]
            assert spectrogram.dtype == np.float16
            assert spectrogram.shape == (lv["params"]["mels"], lv["params"]["frames"])
            np.testing.assert_array_equal(patches(spectrogram, (8, 8)), expected[r["__key__"]]["levels"][level][0])



def test_two_process_ddp_training_learns_from_spectrograms(audio_run):
    import torch

    ranks = [[json.loads(line) for line in (audio_run / "ranks" / f"rank-{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    assert [e["steps_run"] for e in ranks[0]] == [e["steps_run"] for e in ranks[1]]
    with open(audio_run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train_loss"]) for r in rows]
    assert len(rows) == EPOCHS and losses[-1] < losses[0] - 0.3, losses  # measured: 2.49 -> 1.95
    assert all(int(n) > 0 for n in rows[0]["levels"].split("/"))
    state = torch.load(audio_run / "last.pt", weights_only=True)
    assert state["spec"]["modality"] == "audio" and state["spec"]["reference_grid"] == [8, 12]
    assert state["model"]["pos_table"].shape[0] == 96


def test_evaluate_reports_every_level_and_the_cascade(audio_run, tmp_path):
    run_cli("evaluate", "--checkpoint", str(audio_run / "last.pt"), "--output", str(tmp_path),
            "--set", "thresholds=[0.0,0.5,1.0]")
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["samples"] == TEST_CLIPS and [lv["tokens"] for lv in report["levels"]] == TOKENS
    assert report["levels"][0]["accuracy"] >= 0.2  # chance is 0.1; measured 0.3 on these 40 unseen-voice clips
    by_t = {s["threshold"]: s for s in report["cascade"]}
    assert by_t[0.0]["answered"]["4"] == 1.0 and by_t[0.0]["mean_tokens"] == 16
    assert by_t[1.0]["answered"]["0"] == 1.0 and by_t[1.0]["mean_tokens"] == sum(TOKENS)
    assert by_t[1.0]["accuracy"] == report["levels"][0]["accuracy"]
