"""The video compressor on real H.264/VP9 clips written with PyAV: frame picks, positions, shapes, and bad files."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from icpc.pipeline.config import CompressConfig
from icpc.contract import consistent_positions
from icpc.pipeline.modalities.video import (MODALITY, VideoConfig, build_spec, decode_levels, decode_size,
                                            frame_indices, to_channels, tubelets)
from icpc.demo.moving_mnist import DIRECTIONS, moving_clip, write_mp4


def compress(data: bytes, spec, levels=None):
    """Decode then compress, as the pipeline does; the levels' (tokens, positions)."""
    return MODALITY.compress_bytes(data, spec, levels).levels


def _encode(frames: np.ndarray, codec: str = "libx264", fmt: str = "mp4", fps: int = 8) -> bytes:
    """uint8 (T, H, W, 3) RGB -> encoded bytes, lossless where the codec allows it."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as c:
        s = c.add_stream(codec, rate=fps)
        s.height, s.width, s.pix_fmt = frames.shape[1], frames.shape[2], "yuv444p" if codec == "libx264" else "yuv420p"
        s.options = {"qp": "0"} if codec == "libx264" else {}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def _numbered(n: int, h: int = 64, w: int = 64) -> np.ndarray:
    """n flat gray frames whose brightness encodes the frame number (frame i = 10 + 15 i)."""
    return np.broadcast_to((10 + 15 * np.arange(n, dtype=np.uint8))[:, None, None, None], (n, h, w, 3)).copy()


@pytest.fixture(scope="module")
def numbered_mp4() -> bytes:
    return _encode(_numbered(16))


# ----------------------------------------------------------------------------- pure functions


def test_frame_indices_are_segment_centres():
    assert frame_indices(16, 16).tolist() == list(range(16))
    assert frame_indices(16, 8).tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    assert frame_indices(16, 4).tolist() == [2, 6, 10, 14]
    assert frame_indices(16, 1).tolist() == [8]
    assert frame_indices(30, 4).tolist() == [3, 11, 18, 26]   # centres 3.75, 11.25, 18.75, 26.25
    assert frame_indices(9, 2).tolist() == [2, 6]              # centres 2.25, 6.75
    with pytest.raises(ValueError, match="cannot pick 8 frames from 5"):
        frame_indices(5, 8)


def test_positions_of_video_levels_by_hand():
    spec = build_spec(VideoConfig(frames=[4, 2], sides=[16, 8], tubelet_frames=1, patch=4))
    assert spec.reference_grid == (4, 4, 4) and [lv.grid for lv in spec.ladder] == [(4, 4, 4), (2, 2, 2)]
    # level 1: tubelet t=0 (of 2) has its centre at 0.5/2 of the clip = reference frame 1 of 4, t=1 -> frame 3;
    # rows/columns 0, 1 of 2 -> reference 1, 3 of 4. Index = 16 t + 4 y + x.
    assert consistent_positions(spec.reference_grid, spec.ladder[1].grid).tolist() == \
        [21, 23, 29, 31, 53, 55, 61, 63]
    # (8, 6, 6) reference, (2, 3, 3) level: t -> 2, 6; y, x -> 1, 3, 5
    pos = consistent_positions((8, 6, 6), (2, 3, 3))
    assert pos[:3].tolist() == [2 * 36 + 6 + 1, 2 * 36 + 6 + 3, 2 * 36 + 6 + 5] and pos[-1] == 6 * 36 + 5 * 6 + 5


def test_tubelets_are_row_major_over_t_y_x():
    frames = np.arange(4 * 4 * 4, dtype=np.uint8).reshape(4, 4, 4, 1)  # value = 16 f + 4 y + x
    tok = tubelets(frames, 2, 2)
    assert tok.shape == (8, 8)
    assert tok[0].tolist() == [0, 1, 4, 5, 16, 17, 20, 21]           # frames 0-1, rows 0-1, columns 0-1
    assert tok[3].tolist() == [10, 11, 14, 15, 26, 27, 30, 31]       # t 0, y 1, x 1
    assert tok[4].tolist() == [32, 33, 36, 37, 48, 49, 52, 53]       # t 1, y 0, x 0


def test_luma_matches_pil():
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(to_channels(rgb, 1)[..., 0], np.asarray(Image.fromarray(rgb).convert("L")))


def test_decode_size_keeps_aspect_and_skips_useless_scaling():
    assert decode_size(64, 64, 64) is None and decode_size(64, 64, 48) is None  # 48 rounds up to 64 px
    assert decode_size(64, 64, 32) == (32, 32)
    assert decode_size(1080, 1920, 64) == (72, 128)   # 64 x 114 rounded up to a 32 px multiple


def test_config_errors_are_all_reported():
    cfg = CompressConfig(modality="video", input="x", video=VideoConfig(frames=[16, 7, 32], sides=[64, 50, 32]))
    errors = "\n".join(cfg.validate())
    assert "[7] are not positive multiples of video.tubelet_frames=2" in errors
    assert "[50] are not positive multiples of video.patch=8" in errors
    assert "must not have more frames" in errors
    assert "need one frames and one side" in "\n".join(VideoConfig(frames=[16], sides=[64, 32]).validate())


# ----------------------------------------------------------------------------- decoding real clips


@pytest.mark.parametrize("decode_scale", [True, False])
def test_each_level_decodes_its_frames_at_its_size(numbered_mp4, decode_scale):
    cfg = VideoConfig(decode_scale=decode_scale)
    clips = decode_levels(numbered_mp4, cfg.frames, cfg.sides, decode_scale)
    assert [c.shape for c in clips] == [(16, 64, 64, 3), (8, 64, 64, 3), (8, 48, 48, 3), (4, 48, 48, 3), (4, 32, 32, 3)]
    for clip, n in zip(clips, cfg.frames):
        seen = np.round((clip.mean(axis=(1, 2, 3)) - 10) / 15).astype(int)  # brightness -> frame number
        assert seen.tolist() == frame_indices(16, n).tolist()


def test_compress_shapes_positions_and_level_subset(numbered_mp4):
    spec = build_spec(VideoConfig())
    levels = compress(numbered_mp4, spec)
    assert spec.reference_grid == (8, 8, 8)
    assert [t.shape for t, _ in levels] == [(512, 128), (256, 128), (144, 128), (72, 128), (32, 128)]
    for (tok, pos), lv in zip(levels, spec.ladder):
        assert tok.dtype == np.uint8 and pos.dtype == np.int32
        assert np.array_equal(pos, consistent_positions((8, 8, 8), lv.grid))
    # 4 frames of 32 px: tubelet rows/columns 0..3 -> reference 1, 3, 5, 7; time 0, 1 -> reference 2, 6
    assert levels[4][1][:4].tolist() == [2 * 64 + 8 + 1, 2 * 64 + 8 + 3, 2 * 64 + 8 + 5, 2 * 64 + 8 + 7]
    only = compress(numbered_mp4, spec, levels=[4, 0])
    assert np.array_equal(only[0][0], levels[4][0]) and np.array_equal(only[1][0], levels[0][0])


def test_decode_time_scaling_matches_pil_resizing():
    """A 256x192 clip: decord scales it in the decoder, or PIL resizes full frames; both give the same picture."""
    moving = np.stack([np.roll(np.kron(np.indices((12, 16)).sum(0) % 2 * 200 + 20, np.ones((16, 16))), 8 * i, 1)
                       for i in range(16)]).astype(np.uint8)
    data = _encode(np.repeat(moving[..., None], 3, axis=3))
    fast = decode_levels(data, [16, 4], [64, 32], decode_scale=True)
    slow = decode_levels(data, [16, 4], [64, 32], decode_scale=False)
    assert [c.shape for c in fast] == [c.shape for c in slow] == [(16, 64, 64, 3), (4, 32, 32, 3)]
    for a, b in zip(fast, slow):
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 12


def test_demo_clip_moves_two_px_per_frame_and_survives_h264(tmp_path):
    item = np.full((28, 28), 200, dtype=np.uint8)
    clip = moving_clip(item, "NE", (50, 60))
    assert clip.shape == (16, 64, 64)
    assert np.array_equal(clip[1], np.roll(clip[0], (-2, 2), axis=(0, 1)))   # up 2 px, right 2 px
    assert np.array_equal(clip[15], np.roll(clip[0], (-30, 30), axis=(0, 1)))
    assert (clip[0] > 0).sum() == 28 * 28                                   # wrapped, never cut
    assert len(DIRECTIONS) == 8
    write_mp4(tmp_path / "c.mp4", clip)
    decoded = decode_levels((tmp_path / "c.mp4").read_bytes(), [16], [64], True)[0]
    assert np.abs(decoded[..., 0].astype(int) - clip).mean() < 3


# ----------------------------------------------------------------------------- bad inputs


def test_truncated_webm_uses_the_frames_that_decode():
    """The header says 16 frames (2 s at 8 fps); a cut file holds fewer, and decord's packet index says so."""
    data = _encode(np.random.default_rng(1).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8), "libvpx-vp9", "webm")
    cut = data[: int(len(data) * 0.6)]
    with av.open(io.BytesIO(cut)) as c:
        assert round(c.duration / 1e6 * 8) == 16
    clips = decode_levels(cut, [4], [32], True)
    assert clips[0].shape == (4, 32, 32, 3)
    with pytest.raises(ValueError, match=r"fewer than 16 frames decode \((\d)\)"):
        compress(cut, build_spec(VideoConfig()))


@pytest.mark.parametrize("data, reason", [
    (b"", "the file is empty"),
    (b"not a video at all" * 20, "decord cannot read this file: .*Invalid data"),
])
def test_undecodable_bytes_raise_with_a_reason(data, reason):
    with pytest.raises(ValueError, match=reason):
        compress(data, build_spec(VideoConfig()))


def test_truncated_mp4_and_too_short_clip_raise(numbered_mp4):
    with pytest.raises(ValueError, match="decord cannot read this file"):
        compress(numbered_mp4[: len(numbered_mp4) // 2], build_spec(VideoConfig()))
    with pytest.raises(ValueError, match=r"fewer than 16 frames decode \(6\)"):
        compress(_encode(_numbered(6)), build_spec(VideoConfig()))


def test_av1_is_refused_with_the_codec_named():
    data = _encode(_numbered(16, 64, 64), "libsvtav1")
    with pytest.raises(ValueError, match="decord cannot read this file: .*AV1.*re-encode it as H.264 or VP9"):
        compress(data, build_spec(VideoConfig()))


def test_csv_input_scans_videos_and_rejects_missing_or_foreign_files(tmp_path):
    from icpc.pipeline.modalities import get_modality
    from icpc.pipeline.scan import RecordView

    clip = moving_clip(np.full((28, 28), 200, dtype=np.uint8), "W", (0, 0))
    for name in ("a.mp4", "b.mov"):
        write_mp4(tmp_path / name, clip)
    (tmp_path / "c.gif").write_bytes(b"GIF89a")
    (tmp_path / "list.csv").write_text("path,label,split\na.mp4,W,train\nb.mov,E,test\nc.gif,W,train\ngone.mp4,W,\n")
    cfg = CompressConfig(modality="video", input=str(tmp_path / "list.csv"))
    listing, rejects, classes = get_modality("video").scan(cfg)
    records = list(RecordView(listing))
    assert classes == ["E", "W"] and [(r.label_name, r.split) for r in sorted(records, key=lambda r: r.key)] == \
        [("W", "train"), ("E", "test")]
    assert sorted(r.error.split(";")[0] for r in rejects) == [f"no file at {tmp_path / 'gone.mp4'}",
                                                               "unsupported extension '.gif'"]
