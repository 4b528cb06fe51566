"""Video end to end on moving Fashion-MNIST: Ray compress (decord in workers), two-process DDP training, evaluation.

Outputs are read back with independent readers: tarfile, numpy, pyarrow, webdataset, and PyAV for the
source clips. The single-frame run checks that the demo task needs time: one frame scores near chance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli, train_ddp
from tests.readers import index_rows, manifest, rejects_rows, shard_samples

TRAIN_CLIPS, TEST_CLIPS = 480, 160
FRAMES, SIDES = [16, 8, 8, 4, 4], [64, 64, 48, 48, 32]
TOKENS = [512, 256, 144, 72, 32]
EPOCHS = 6
BROKEN = ["empty.mp4", "truncated.mp4", "short.mp4", "av1.mp4", "notes.txt"]
# The single-frame dataset: one frame (the middle one), tubelets of one frame, same 8 px patches.
ONE_FRAME = ["video.frames=[1]", "video.sides=[64]", "video.tubelet_frames=1"]


def _encode(path: Path, frames: np.ndarray, codec: str) -> None:
    import av

    with av.open(str(path), mode="w") as c:
        s = c.add_stream(codec, rate=8)
        s.height, s.width, s.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="gray")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory) -> Path:
    """Moving Fashion-MNIST mp4s (train/, test/) plus one broken file of each kind in train/E/."""
    from icpc.demo.moving_mnist import build_moving_fashion_mnist

    root = tmp_path_factory.mktemp("mfm")
    build_moving_fashion_mnist(root, TRAIN_CLIPS, TEST_CLIPS, seed=0)
    east = root / "train" / "E"
    good = next(east.glob("*.mp4")).read_bytes()
    (east / "empty.mp4").write_bytes(b"")
    (east / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (east / "notes.txt").write_text("not a video")
    _encode(east / "short.mp4", np.zeros((6, 64, 64), np.uint8), "libx264")
    _encode(east / "av1.mp4", np.zeros((16, 64, 64), np.uint8), "libsvtav1")
    return root


def _compress(folder: Path, out: Path, *sets: str) -> Path:
    from icpc.config import finalize
    from icpc.pipeline.config import CompressConfig
    from icpc.pipeline.job import run_compress

    run_compress(finalize(CompressConfig(modality="video", input=str(folder), output=str(out), shard_samples=80,
                                         overwrite=True), list(sets)), progress=False)
    return out


@pytest.fixture(scope="module")
def video_data(video_folder, ray_local, tmp_path_factory) -> Path:
    # exact levels (npy.zst): the tests compare the stored tubelets with PyAV's own decode; by default
    # the 64 px levels would be JPEG q90 (codecs=auto), which tests/icpc/test_codecs.py checks
    return _compress(video_folder, tmp_path_factory.mktemp("vdata"), "lossy_min_side=0")


def test_every_clip_once_in_index_or_rejects_with_its_reason(video_data, video_folder):
    index, rejects = index_rows(video_data), rejects_rows(video_data)
    inputs = sorted(str(p) for p in video_folder.rglob("*") if p.is_file())
    assert len(inputs) == TRAIN_CLIPS + TEST_CLIPS + len(BROKEN)
    assert sorted(r["source"] for r in index + rejects) == inputs
    why = {Path(r["source"]).name: (r["stage"], r["error"]) for r in rejects}
    assert set(why) == set(BROKEN)
    assert why["notes.txt"][0] == "scan" and "extension" in why["notes.txt"][1]
    assert why["empty.mp4"] == ("read", "ValueError: file is empty")
    assert why["truncated.mp4"][0] == "compress" and "decord cannot read this file" in why["truncated.mp4"][1]
    assert why["short.mp4"] == ("compress", "ValueError: fewer than 16 frames decode (6)")
    assert "AV1" in why["av1.mp4"][1] and "decord cannot read this file" in why["av1.mp4"][1]


def test_shards_hold_every_level_with_reference_grid_positions(video_data):
    from icpc.contract import consistent_positions

    m = manifest(video_data)
    spec = m["spec"]
    assert m["modality"] == "video" and spec["reference_grid"] == [8, 8, 8]
    assert [(lv["params"]["frames"], lv["params"]["side"]) for lv in spec["ladder"]] == list(zip(FRAMES, SIDES))
    assert spec["tokenization"]["tubelet"] == [2, 8, 8] and spec["tokenization"]["token_dim"] == 128
    index = {r["key"]: r for r in index_rows(video_data)}
    found = 0
    for shard in m["shards"]:
        samples = shard_samples(video_data / shard["name"], "uint8", (128,))
        assert len(samples) == shard["samples"]
        for key, sample in samples.items():
            found += 1
            assert sample["label"] == index[key]["label"]
            for level, (f, s, n) in enumerate(zip(FRAMES, SIDES, TOKENS)):
                tokens, pos = sample["levels"][level]
                assert tokens.shape == (n, 128) and tokens.dtype == np.uint8 and index[key][f"tokens_l{level}"] == n
                assert np.array_equal(pos, consistent_positions((8, 8, 8), (f // 2, s // 8, s // 8)))
    assert found == len(index) == TRAIN_CLIPS + TEST_CLIPS


def test_level0_tubelets_are_the_clip_as_pyav_decodes_it(video_data):
    import av

    row = index_rows(video_data)[0]
    levels = shard_samples(video_data / row["shard"], "uint8", (128,))[row["key"]]["levels"]
    with av.open(row["source"]) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert frames.shape == (16, 64, 64, 3)
    luma = (frames.astype(int) @ [299, 587, 114] + 500) // 1000
    clip = levels[0][0].reshape(8, 8, 8, 2, 8, 8).transpose(0, 3, 1, 4, 2, 5).reshape(16, 64, 64)
    assert np.abs(clip.astype(int) - luma).max() <= 2
    # level 4 keeps frames 2, 6, 10, 14 at 32 px: each is its full-size frame, halved
    small = levels[4][0].reshape(2, 4, 4, 2, 8, 8).transpose(0, 3, 1, 4, 2, 5).reshape(4, 32, 32)
    halved = luma[[2, 6, 10, 14]].reshape(4, 32, 2, 32, 2).mean(axis=(2, 4))
    assert np.abs(small - halved).mean() < 6


@pytest.fixture(scope="module")
def video_run(video_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vicpc")
    train_ddp(video_data, out, EPOCHS)
    return out


def _evaluate(run: Path, out: Path) -> dict:
    run_cli("evaluate", "--checkpoint", str(run / "last.pt"), "--output", str(out),
            "--set", "thresholds=[0.0,0.6,1.0]")
    return json.loads((out / "eval.json").read_text())


@pytest.fixture(scope="module")
def video_report(video_run) -> dict:
    return _evaluate(video_run, video_run / "eval")


def test_ddp_training_learns_direction_and_evaluate_reports_every_level(video_run, video_report):
    ranks = [[json.loads(x) for x in (video_run / "ranks" / f"rank-{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    assert [e["steps_run"] for e in ranks[0]] == [e["steps_run"] for e in ranks[1]] and len(ranks[0]) == EPOCHS
    report = video_report
    assert report["samples"] == TEST_CLIPS and [lv["tokens"] for lv in report["levels"]] == TOKENS
    assert report["levels"][0]["accuracy"] > 0.4, report["levels"]   # 8 directions: chance is 0.125
    by_t = {s["threshold"]: s for s in report["cascade"]}
    assert by_t[0.0]["answered"]["4"] == 1.0 and by_t[0.0]["mean_tokens"] == TOKENS[-1]
    assert by_t[1.0]["answered"]["0"] == 1.0 and by_t[1.0]["mean_tokens"] == sum(TOKENS)


def test_a_single_frame_scores_near_chance(video_folder, video_report, ray_local, tmp_path):
    """Same clips, same model and schedule, but only the middle frame: with wrap-around no direction shows."""
    data = _compress(video_folder, tmp_path / "data", *ONE_FRAME)
    m = manifest(data)
    assert m["spec"]["reference_grid"] == [1, 8, 8] and m["spec"]["ladder"][0]["tokens"] == 64
    train_ddp(data, tmp_path / "run", EPOCHS)
    single = _evaluate(tmp_path / "run", tmp_path / "eval")["levels"][0]["accuracy"]
    multi = video_report["levels"][0]["accuracy"]
    assert single < 0.25 < multi - 0.15, (single, multi)
