"""Unit tests for icpc/contract.py: positions, level draws, block geometry of level payloads, spec."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from icpc.contract import (
    STRATEGIES,
    Level,
    block_geometry,
    blocks_to_tokens,
    ids_dtype,
    level_field,
    tokens_to_blocks,
    Spec,
    check_key,
    check_spec,
    consistent_positions,
    corner_positions,
    decode_npy,
    draw_level,
    draw_levels,
    encode_npy,
    epoch_permutation,
    key_hash,
    interpolation_matrix,
    positions_for,
    renumber_positions,
    sanitize_key,
    split_of,
    unit_hash,
)

# ----------------------------------------------------------------------------- consistent positions


@pytest.mark.parametrize("reference, level, expected", [
    # 2x2 cells over a 4x4 grid: centres at 1 and 3 along each axis.
    ((4, 4), (2, 2), [5, 7, 13, 15]),
    # 3 cells over 7: centres 7/3 * (0.5, 1.5, 2.5) = 1.17, 3.5, 5.83 -> cells 1, 3, 5.
    ((7, 7), (3, 3), [8, 10, 12, 22, 24, 26, 36, 38, 40]),
    # 1-D: 4 cells over 10, centres 1.25, 3.75, 6.25, 8.75.
    ((10,), (4,), [1, 3, 6, 8]),
    # 1-D: 6 cells over 7, centres 0.58, 1.75, 2.92, 4.08, 5.25, 6.42.
    ((7,), (6,), [0, 1, 2, 4, 5, 6]),
    # 1-D: 5 cells over 7, centres 0.7, 2.1, 3.5, 4.9, 6.3.
    ((7,), (5,), [0, 2, 3, 4, 6]),
    # 3-D (t, y, x): every axis picks 1 and 3; index = 16 t + 4 y + x.
    ((4, 4, 4), (2, 2, 2), [21, 23, 29, 31, 53, 55, 61, 63]),
    # Non-square: rows 2 over 4 -> 1, 3; columns 3 over 6 -> 1, 3, 5; index = 6 y + x.
    ((4, 6), (2, 3), [7, 9, 11, 19, 21, 23]),
])
def test_consistent_positions_hand_computed(reference, level, expected):
    got = consistent_positions(reference, level)
    assert got.dtype == np.int32
    assert got.tolist() == expected


def test_consistent_positions_anisotropic_3d_entry():
    # ref (8, 7, 7), level (4, 3, 3): t centres 2 * (i + .5) -> 1, 3, 5, 7; y/x -> 1, 3, 5.
    # Level cell (t=2, y=1, x=0) is row-major index 2*9 + 1*3 + 0 = 21 and lands on
    # reference (5, 3, 1) = 5*49 + 3*7 + 1 = 267.
    got = consistent_positions((8, 7, 7), (4, 3, 3))
    assert len(got) == 36
    assert got[21] == 267
    assert got[0] == 1 * 49 + 1 * 7 + 1
    assert got[-1] == 7 * 49 + 5 * 7 + 5


@pytest.mark.parametrize("grid", [(1,), (5,), (7, 7), (3, 5), (2, 3, 4)])
def test_consistent_positions_identity_at_reference(grid):
    assert consistent_positions(grid, grid).tolist() == list(range(math.prod(grid)))


_DOWNSCALES = [((7, 7), (l, l)) for l in range(1, 8)] + [
    ((14, 14), (12, 12)), ((14, 14), (5, 5)), ((16,), (9,)), ((128,), (37,)),
    ((8, 14, 14), (4, 7, 7)), ((8, 14, 14), (3, 10, 6)), ((26,), (23,)), ((64, 64), (49, 49)),
]


@pytest.mark.parametrize("reference, level", _DOWNSCALES)
def test_consistent_positions_inside_and_increasing(reference, level):
    got = consistent_positions(reference, level)
    assert got.shape == (math.prod(level),)
    assert got.min() >= 0 and got.max() < math.prod(reference)
    assert np.all(np.diff(got.astype(np.int64)) > 0), "positions must be strictly increasing (row-major, no repeats)"


def test_consistent_positions_centre_on_a_cell_boundary():
    # 3 cells over 4: the centre of cell 1 is 1.5 * 4/3 = 2 exactly, the left edge of reference cell 2.
    assert consistent_positions((4,), (3,)).tolist() == [0, 2, 3]
    # 23 cells over 26: the centre of cell 11 is 11.5 * 26/23 = 13 exactly -> reference cell 13
    # (the half-open cell [13, 14) contains it), the same rule as the (4,)/(3,) case above.
    assert consistent_positions((26,), (23,))[11] == 13


def test_consistent_positions_match_exact_integer_arithmetic():
    """floor((i + 1/2) * R / n) computed exactly in integers, (2i + 1) R // 2n, for every R <= 64."""
    wrong = []
    for ref_n in range(1, 65):
        for level_n in range(1, ref_n + 1):
            exact = [min((2 * i + 1) * ref_n // (2 * level_n), ref_n - 1) for i in range(level_n)]
            if consistent_positions((ref_n,), (level_n,)).tolist() != exact:
                wrong.append((ref_n, level_n))
    assert not wrong, f"(reference, level) axis lengths whose centres land in the wrong cell: {wrong}"


@pytest.mark.parametrize("reference, level", [((4, 4), (2,)), ((4, 4), (5, 4)), ((4, 4), (0, 2)), ((4,), (2, 2))])
def test_bad_grids_raise(reference, level):
    with pytest.raises(ValueError):
        consistent_positions(reference, level)
    with pytest.raises(ValueError):
        corner_positions(reference, level)
    with pytest.raises(ValueError):
        interpolation_matrix(reference, level)


# ----------------------------------------------------------------------------- corner / renumber / positions_for


@pytest.mark.parametrize("reference, level, expected", [
    ((4, 4), (2, 2), [0, 1, 4, 5]),
    ((7, 7), (3, 3), [0, 1, 2, 7, 8, 9, 14, 15, 16]),
    ((10,), (3,), [0, 1, 2]),
    ((3, 4, 4), (2, 1, 2), [0, 1, 16, 17]),
    ((3, 3), (3, 3), list(range(9))),
])
def test_corner_positions(reference, level, expected):
    got = corner_positions(reference, level)
    assert got.dtype == np.int32
    assert got.tolist() == expected


def test_renumber_positions():
    got = renumber_positions(5)
    assert got.dtype == np.int32
    assert got.tolist() == [0, 1, 2, 3, 4]
    assert renumber_positions(0).tolist() == []


def test_positions_for_grid_strategies():
    ref, lvl = (7, 7), (3, 3)
    assert positions_for("consistent", ref, lvl).tolist() == [8, 10, 12, 22, 24, 26, 36, 38, 40]
    stored = np.array([8, 10, 12, 22, 24, 26, 36, 38, 40], dtype=np.int64)
    got = positions_for("consistent", ref, lvl, stored)
    assert got.dtype == np.int32 and got.tolist() == stored.tolist()
    assert positions_for("corner", ref, lvl, stored).tolist() == [0, 1, 2, 7, 8, 9, 14, 15, 16]
    assert positions_for("renumber", ref, lvl, stored).tolist() == list(range(9))
    # interpolate: positions index the rows of the resized (9-row) table.
    got = positions_for("interpolate", ref, lvl, stored)
    assert got.tolist() == list(range(9))
    assert got.max() < interpolation_matrix(ref, lvl).shape[0]


@pytest.mark.parametrize("strategy, expected", [
    ("consistent", [0, 3, 4, 9]),
    ("corner", [0, 1, 2, 3]),
    ("renumber", [0, 1, 2, 3]),
    ("interpolate", [0, 1, 2, 3]),
])
def test_positions_for_text(strategy, expected):
    stored = np.array([0, 3, 4, 9], dtype=np.int64)
    got = positions_for(strategy, (16,), (), stored)
    assert got.dtype == np.int32
    assert got.tolist() == expected


def test_positions_for_text_needs_stored():
    with pytest.raises(ValueError, match="stored"):
        positions_for("consistent", (16,), ())


def test_positions_for_unknown_strategy_names_it():
    with pytest.raises(ValueError, match="diagonal"):
        positions_for("diagonal", (4, 4), (2, 2))
    assert set(STRATEGIES) == {"consistent", "corner", "renumber", "interpolate"}


# ----------------------------------------------------------------------------- interpolation matrix


@pytest.mark.parametrize("reference, level", [((7, 7), (3, 3)), ((7, 7), (5, 5)), ((10,), (4,)), ((4, 6, 6), (2, 3, 5))])
def test_interpolation_matrix_rows_sum_to_one(reference, level):
    m = interpolation_matrix(reference, level)
    assert m.dtype == np.float32
    assert m.shape == (math.prod(level), math.prod(reference))
    assert np.all(m >= 0)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)


@pytest.mark.parametrize("grid", [(5,), (4, 4), (2, 3, 4)])
def test_interpolation_matrix_identity_at_reference(grid):
    np.testing.assert_array_equal(interpolation_matrix(grid, grid), np.eye(math.prod(grid), dtype=np.float32))


def test_interpolation_matrix_hand_computed_1d():
    # 2 cells over 4: source coordinates (i + .5) * 2 - .5 = 0.5, 2.5 -> halfway between neighbours.
    expected = [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]]
    np.testing.assert_allclose(interpolation_matrix((4,), (2,)), expected, atol=1e-7)
    # 3 cells over 4: source 1/6, 1.5, 17/6.
    expected = [[5 / 6, 1 / 6, 0, 0], [0, 0.5, 0.5, 0], [0, 0, 1 / 6, 5 / 6]]
    np.testing.assert_allclose(interpolation_matrix((4,), (3,)), expected, atol=1e-6)


@pytest.mark.parametrize("reference, level, mode", [
    ((7, 7), (3, 3), "bilinear"),
    ((7, 7), (5, 5), "bilinear"),
    ((7, 7), (6, 4), "bilinear"),
    ((12,), (5,), "linear"),
    ((9,), (8,), "linear"),
    ((4, 6, 6), (2, 3, 5), "trilinear"),
])
def test_interpolation_matrix_matches_torch_interpolate(reference, level, mode):
    dim = 8
    table = np.random.default_rng(0).standard_normal((math.prod(reference), dim)).astype(np.float32)
    grid = torch.from_numpy(table).T.reshape(1, dim, *reference)
    resized = F.interpolate(grid, size=tuple(level), mode=mode, align_corners=False)
    expected = resized.reshape(dim, -1).T.numpy()
    got = interpolation_matrix(reference, level) @ table
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- level draw


def test_unit_hash_range_and_purity():
    values = [unit_hash("x", i) for i in range(1000)]
    assert all(0 <= v < 1 for v in values)
    assert values == [unit_hash("x", i) for i in range(1000)]
    assert len(set(values)) == 1000


def test_draw_level_deterministic():
    weights = [1, 1, 1, 1, 1]
    for key in ("a", "b", "img_0001"):
        first = draw_level(3, 7, key, weights)
        assert 0 <= first < 5
        assert all(draw_level(3, 7, key, weights) == first for _ in range(5))


def test_draw_level_changes_with_epoch_and_seed():
    weights = [1] * 5
    keys = [f"k{i}" for i in range(2000)]
    e0 = np.array([draw_level(0, 0, k, weights) for k in keys])
    e1 = np.array([draw_level(0, 1, k, weights) for k in keys])
    s1 = np.array([draw_level(1, 0, k, weights) for k in keys])
    # Independent uniform draws over 5 levels differ 80% of the time.
    assert 0.7 < np.mean(e0 != e1) < 0.9
    assert 0.7 < np.mean(e0 != s1) < 0.9
    # One key over many epochs sees several levels.
    assert len({draw_level(0, e, "k0", weights) for e in range(50)}) == 5


def test_draw_level_roughly_uniform():
    n, levels = 5000, 5
    counts = np.bincount([draw_level(0, 0, f"sample_{i}", [1] * levels) for i in range(n)], minlength=levels)
    expected = n / levels
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # 4 degrees of freedom: P(chi2 > 30) < 1e-5.
    assert chi2 < 30, counts


def test_draw_level_respects_weights():
    n = 5000
    levels = np.array([draw_level(0, 2, f"s{i}", [3, 1]) for i in range(n)])
    assert abs(np.mean(levels == 0) - 0.75) < 0.03
    assert {draw_level(0, e, f"s{i}", [0, 1, 0]) for i in range(200) for e in range(3)} == {1}


def test_draw_level_single_weight_is_level_zero():
    assert {draw_level(s, e, f"k{i}", [1]) for s in range(3) for e in range(3) for i in range(100)} == {0}


@pytest.mark.parametrize("weights", [[0], [0, 0], [1, -1], [], [-1, -2]])
def test_draw_level_bad_weights_raise(weights):
    with pytest.raises(ValueError, match="weights"):
        draw_level(0, 0, "k", weights)


def test_draw_levels_vectorised_equals_one_key_at_a_time_in_any_order():
    keys = [f"s{s}_k{i}" for s in range(24) for i in range(7)]
    hashes = np.array([key_hash(k) for k in keys], dtype=np.uint64)
    for epoch in (0, 1):
        levels = draw_levels(11, epoch, hashes, [1, 2, 1, 3])
        assert levels.tolist() == [draw_level(11, epoch, k, [1, 2, 1, 3]) for k in keys]
        perm = np.random.default_rng(epoch).permutation(len(keys))
        assert draw_levels(11, epoch, hashes[perm], [1, 2, 1, 3]).tolist() == levels[perm].tolist()
        # any split of the keys (shards, ranks, workers) sees the same level for each key
        assert np.concatenate([draw_levels(11, epoch, h, [1, 2, 1, 3]) for h in np.array_split(hashes, 5)]
                              ).tolist() == levels.tolist()


def test_key_hash_is_stable():
    assert key_hash("img_0001") == key_hash("img_0001") != key_hash("img_0002")
    assert 0 <= key_hash("") < 2**64


def test_epoch_permutation():
    p = epoch_permutation(50, 1, 2)
    assert sorted(p.tolist()) == list(range(50))
    assert p.tolist() == epoch_permutation(50, 1, 2).tolist()
    assert p.tolist() != epoch_permutation(50, 1, 3).tolist()


# ----------------------------------------------------------------------------- splits


def test_split_of_stable_and_fractions():
    keys = [f"img{i}" for i in range(10000)]
    splits = [split_of(k, 0, 0.1, 0.2) for k in keys]
    assert splits == [split_of(k, 0, 0.1, 0.2) for k in keys]
    n = len(keys)
    assert abs(splits.count("test") / n - 0.2) < 0.02
    assert abs(splits.count("val") / n - 0.1) < 0.02
    assert abs(splits.count("train") / n - 0.7) < 0.02
    assert splits != [split_of(k, 1, 0.1, 0.2) for k in keys]


def test_split_of_zero_fractions_all_train():
    assert {split_of(f"k{i}", 0, 0.0) for i in range(500)} == {"train"}


# ----------------------------------------------------------------------------- keys


@pytest.mark.parametrize("key", ["abc", "img_0001", "A-b_9"])
def test_check_key_accepts(key):
    assert check_key(key) == key


@pytest.mark.parametrize("key", ["a.b", "img.001", "a b", "", "a/b", "é", "abc\n", "\nabc"])
def test_check_key_rejects(key):
    with pytest.raises(ValueError):
        check_key(key)


@pytest.mark.parametrize("raw, expected", [
    ("train/cat/img.001.png", "train_cat_img_001_png"),
    ("/a/b/", "a_b"),
    ("plain-key_1", "plain-key_1"),
    ("a b\tc", "a_b_c"),
])
def test_sanitize_key(raw, expected):
    assert sanitize_key(raw) == expected
    assert check_key(sanitize_key(raw)) == expected


@pytest.mark.parametrize("raw", ["", "///"])
def test_sanitize_key_empty_raises(raw):
    with pytest.raises(ValueError):
        sanitize_key(raw)


# ----------------------------------------------------------------------------- encode / decode


def _geometry_spec(tokenization: dict, grid=(7, 7)) -> Spec:
    return Spec("x", grid, (Level({"side": 1}, grid, math.prod(grid)),), tokenization)


@pytest.mark.parametrize("tokenization, grid, shape", [
    ({"patch": 4, "channels": 1, "token_dim": 16, "token_dtype": "uint8"}, (7, 7), (28, 28, 1)),
    ({"patch": 2, "channels": 3, "token_dim": 12, "token_dtype": "uint8"}, (3, 5), (6, 10, 3)),
    ({"tubelet": [2, 4, 4], "channels": 3, "token_dim": 96, "token_dtype": "uint8"}, (2, 3, 3), (4, 12, 12, 3)),
    ({"patch": [8, 4], "token_dim": 32, "token_dtype": "float16"}, (2, 6), (16, 24)),
])
def test_blocks_round_trip_and_match_a_hand_patchify(tokenization, grid, shape):
    spec = _geometry_spec(tokenization, grid)
    block, channels = block_geometry(spec)
    tokens = np.random.default_rng(0).integers(0, 255, (math.prod(grid), tokenization["token_dim"]))
    array = tokens_to_blocks(tokens, grid, block, channels)
    assert array.shape == shape
    np.testing.assert_array_equal(blocks_to_tokens(array, grid, block, channels), tokens)
    if len(grid) == 2 and channels:  # the image modality's own patchify cuts the same tokens out of the array
        from icpc.pipeline.modalities.image import patchify

        np.testing.assert_array_equal(patchify(array, block[0]), tokens)


def test_no_block_geometry_for_ids_or_tokens_without_patch():
    assert block_geometry(_geometry_spec({"token_dtype": "int32"}, (64,))) is None
    assert block_geometry(_geometry_spec({"token_dim": 4, "token_dtype": "float16"}, (8,))) is None
    assert block_geometry(_geometry_spec({"patch": 4, "channels": 3, "token_dim": 16, "token_dtype": "uint8"})) is None  # 48 != 16


def test_level_fields_name_their_codec_and_ids_pack_to_uint16_when_they_fit():
    assert level_field(3, "npy.zst") == "l3.npy.zst"
    with pytest.raises(ValueError, match="codec 'gif'"):
        level_field(0, "gif")
    assert ids_dtype(_geometry_spec({"token_dtype": "int32", "vocab_size": 30522}, (512,))) == np.dtype("<u2")
    assert ids_dtype(_geometry_spec({"token_dtype": "int32", "vocab_size": 250002}, (512,))) == np.dtype("<i4")


def test_encode_npy_round_trip_non_contiguous():
    a = np.arange(24, dtype=np.int16).reshape(4, 6)[:, ::2]
    back = decode_npy(encode_npy(a))
    assert back.dtype == np.int16
    np.testing.assert_array_equal(back, a)


def _pickled_object_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}, None], dtype=object), allow_pickle=True)
    return buf.getvalue()


def test_decode_npy_refuses_pickle():
    with pytest.raises(ValueError):
        decode_npy(_pickled_object_npy())


def test_encode_npy_refuses_object_arrays():
    with pytest.raises(ValueError):
        encode_npy(np.array([{"a": 1}], dtype=object))


# ----------------------------------------------------------------------------- spec


def _spec(grid=(7, 7)):
    ladder = (Level({"side": 28}, (7, 7), 49), Level({"side": 12}, (3, 3), 9))
    return Spec("image", grid, ladder, {"patch": 4, "channels": 1, "token_dim": 16})


def test_spec_json_round_trip():
    spec = _spec()
    d = json.loads(json.dumps(spec.to_json()))
    assert d["reference_grid"] == [7, 7]
    assert [lv["name"] for lv in d["ladder"]] == ["side28", "side12"]
    assert Spec.from_json(d) == spec
    assert spec.reference_cells == 49


@pytest.mark.parametrize("params, name", [
    ({"side": 28}, "side28"),
    ({"keep": 0.5}, "keep0.5"),
    ({"frames": 8, "side": 112}, "frames8_side112"),
    ({"frames": 64.0, "mels": 32}, "frames64_mels32"),
])
def test_level_name(params, name):
    assert Level(params, (), 1).name == name


def test_check_spec_passes_and_names_both_values():
    check_spec(_spec(), _spec(), "train")
    with pytest.raises(ValueError) as info:
        check_spec(_spec((7, 7)), _spec((6, 6)), "train")
    msg = str(info.value)
    assert "reference_grid" in msg and "[7, 7]" in msg and "[6, 6]" in msg and "train" in msg


def test_check_spec_tokenization_mismatch():
    other = Spec("image", (7, 7), _spec().ladder, {"patch": 8, "channels": 1, "token_dim": 16})
    with pytest.raises(ValueError, match="tokenization"):
        check_spec(_spec(), other, "serve")


@pytest.mark.parametrize("kwargs", [
    dict(modality="", reference_grid=(7, 7), ladder=(Level({}, (7, 7), 49),)),
    dict(modality="image", reference_grid=(7, 7), ladder=()),
    dict(modality="image", reference_grid=(0, 7), ladder=(Level({}, (7, 7), 49),)),
])
def test_spec_validation(kwargs):
    with pytest.raises(ValueError):
        Spec(**kwargs)
