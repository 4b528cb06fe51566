"""icpc/models/timm_vit.py: timm ViTs on ICPC tokens, checked against timm's own forward on the same real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

timm = pytest.importorskip("timm")

from icpc.config import ModelConfig  # noqa: E402
from icpc.models import build_model  # noqa: E402
from icpc.pipeline.modalities.image import MODALITY, ImageConfig, build_spec  # noqa: E402
from icpc.training.model import param_groups  # noqa: E402

SPEC = build_spec(ImageConfig())  # 28 px Fashion-MNIST, 4 px patches: 7 x 7 grid; ladder 28/24/20/16/12
VIT = "vit_tiny_patch16_224"
SMALL = {"depth": 2}  # vit_tiny's width (192) and heads, two blocks: seconds on a CPU


@pytest.fixture(scope="module")
def images(image_folder):
    """Five real test images: (PNG path, tokens and stored positions per level)."""
    paths = sorted((image_folder / "test").glob("*/*.png"))[:5]
    return [(p, MODALITY.compress_bytes(p.read_bytes(), SPEC, range(len(SPEC.ladder))).levels) for p in paths]


@pytest.fixture(scope="module")
def rgb_images(image_folder, tmp_path_factory):
    """Three RGB images whose channels are three different real Fashion-MNIST images (so R, G, B differ)."""
    paths = sorted((image_folder / "test").glob("*/*.png"))[5:14]
    out = tmp_path_factory.mktemp("rgb")
    spec = build_spec(ImageConfig(channels=3))
    images = []
    for i in range(3):
        rgb = np.stack([np.asarray(Image.open(p).convert("L")) for p in paths[3 * i: 3 * i + 3]], -1)
        Image.fromarray(rgb, "RGB").save(out / f"{i}.png")
        images.append((out / f"{i}.png", MODALITY.compress_bytes((out / f"{i}.png").read_bytes(), spec, [0]).levels))
    return spec, images


def timm_weights(tmp_path, img_size: int, patch: int, classes: int = 10, chans: int = 1, **extra) -> str:
    """A safetensors file written by timm itself for a model at another grid / patch size."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = timm.create_model(VIT, img_size=img_size, patch_size=patch, in_chans=chans, num_classes=classes,
                              **SMALL, **extra)
    with torch.no_grad():  # timm zero-inits the head; a random one makes the comparison cover it
        model.head.weight.normal_(0, 0.2)
        model.head.bias.normal_(0, 0.2)
    path = tmp_path / f"vit-{img_size}-{patch}-{classes}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def timm_reference(weights: str, chans: int = 1, **extra):
    """timm's own model at the data's size (28 px, 4 px patches) with the same file, loaded by timm."""
    return timm.create_model(VIT, pretrained=True, pretrained_cfg_overlay={"file": weights, "num_classes": 10},
                             img_size=28, patch_size=4, in_chans=chans, num_classes=10, **SMALL, **extra).eval()


def normalised(pixels: np.ndarray, model) -> torch.Tensor:
    """(H, W) grayscale or (H, W, 3) RGB uint8 -> (1, C, H, W) normalised with timm's mean/std (grayscale: their
    mean over RGB)."""
    mean, std = np.array(model.pretrained_cfg["mean"]), np.array(model.pretrained_cfg["std"])
    if pixels.ndim == 2:
        pixels, mean, std = pixels[..., None], mean.mean(keepdims=True), std.mean(keepdims=True)
    x = (pixels.astype(np.float32) / 255 - mean) / std
    return torch.from_numpy(x.astype(np.float32).transpose(2, 0, 1).copy())[None]


@pytest.mark.parametrize("img_size, patch", [(32, 4), (64, 8)])  # another grid (8 x 8); another patch size too
def test_level0_equals_timms_own_forward_of_the_image(images, tmp_path, capfd, img_size, patch):
    weights = timm_weights(tmp_path, img_size, patch)
    ours = build_model(SPEC, ModelConfig(name=f"timm:{VIT}", args=SMALL, weights=weights), 10).eval()
    assert "pos_embed (1, 65, 192) -> (1, 50, 192)" in capfd.readouterr().err
    reference = timm_reference(weights)
    for path, levels in images:
        tokens, positions = levels[0]
        pixels = np.asarray(Image.open(path).convert("L"))  # decoded independently of ICPC
        with torch.no_grad():
            got = ours(torch.from_numpy(tokens[None]), torch.from_numpy(positions[None].astype(np.int64)), 0)
            want = reference(normalised(pixels, reference))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_rgb_patches_are_unflattened_channel_last_for_timms_kernel(rgb_images, tmp_path):
    """Stored patches are (p, p, c): with three different channels a wrong layout would not match timm."""
    spec, images = rgb_images
    weights = timm_weights(tmp_path, 48, 8, chans=3)  # another grid and patch size, RGB
    ours = build_model(spec, ModelConfig(name=f"timm:{VIT}", args=SMALL, weights=weights), 10).eval()
    reference = timm_reference(weights, chans=3)
    for path, levels in images:
        tokens, positions = levels[0]
        with torch.no_grad():
            got = ours(torch.from_numpy(tokens[None]), torch.from_numpy(positions[None].astype(np.int64)), 0)
            want = reference(normalised(np.asarray(Image.open(path).convert("RGB")), reference))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_compressed_levels_use_the_stored_positions(images, tmp_path):
    """At a compressed level the patches get pos_embed rows at their stored reference positions (consistent);
    the same tokens at the corner positions give other logits, so the check can fail."""
    ours = build_model(SPEC, ModelConfig(name=f"timm:{VIT}", args=SMALL), 10).eval()
    vit = ours.vit
    for _, levels in images:
        for level in (1, 3):
            tokens, stored = levels[level]
            g = SPEC.ladder[level].grid[0]
            pixels = tokens.reshape(g, g, 4, 4).transpose(0, 2, 1, 3).reshape(g * 4, g * 4)  # un-patchify
            with torch.no_grad():
                x = vit.patch_embed.proj(normalised(pixels, vit)).flatten(2).transpose(1, 2)
                x = x + vit.pos_embed[:, 1 + torch.from_numpy(stored.astype(np.int64))]
                x = torch.cat([vit.cls_token + vit.pos_embed[:, :1], x], 1)
                want = vit.forward_head(vit.norm(vit.blocks(x)))
                t = torch.from_numpy(tokens[None])
                got = ours(t, torch.from_numpy(stored[None].astype(np.int64)), level)
                corner = ours(t, torch.arange(g * g)[None] // g * 7 + torch.arange(g * g)[None] % g, level)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            assert not torch.allclose(corner, want, atol=1e-3)


def test_interpolate_equals_timms_dynamic_size_forward(images):
    """Strategy interpolate resizes pos_embed to the level's grid: what timm does for a smaller image."""
    torch.manual_seed(0)
    ours = build_model(SPEC, ModelConfig(name=f"timm:{VIT}", args=SMALL), 10, strategy="interpolate").eval()
    reference = timm.create_model(VIT, img_size=28, patch_size=4, in_chans=1, num_classes=10, dynamic_img_size=True,
                                  **SMALL).eval()
    reference.load_state_dict(ours.vit.state_dict())
    tokens, _ = images[0][1][2]  # level 2: 20 px, a 5 x 5 grid
    pixels = tokens.reshape(5, 5, 4, 4).transpose(0, 2, 1, 3).reshape(20, 20)
    with torch.no_grad():
        got = ours(torch.from_numpy(tokens[None]), torch.arange(25)[None], 2)
        torch.testing.assert_close(got, reference(normalised(pixels, reference)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pool", ["avg", "token"])
def test_padding_does_not_change_a_samples_logits(images, pool):
    ours = build_model(SPEC, ModelConfig(name=f"timm:{VIT}", args={**SMALL, "global_pool": pool}), 10).eval()
    tokens, positions = (torch.from_numpy(a[None].astype(np.int64 if a.dtype == np.int32 else a.dtype))
                         for a in images[0][1][3])
    n = tokens.shape[1]
    padded = torch.cat([tokens, torch.zeros_like(tokens[:, :5])], 1), torch.cat([positions, positions[:, :5]], 1)
    mask = torch.zeros(1, n + 5, dtype=torch.bool)
    mask[:, n:] = True
    with torch.no_grad():
        torch.testing.assert_close(ours(*padded, 3, mask), ours(tokens, positions, 3), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(ours(*padded, 3), ours(tokens, positions, 3), atol=1e-4)  # unmasked padding counts


def test_class_and_register_tokens_and_no_embed_class(images):
    """A deit3-style table without prefix rows and register tokens: prefix count and offsets follow the model."""
    ours = build_model(SPEC, ModelConfig(name=f"timm:{VIT}", args={**SMALL, "reg_tokens": 2, "no_embed_class": True}),
                       10).eval()
    assert (ours.num_prefix, ours.table_offset, ours.vit.pos_embed.shape[1]) == (3, 0, 49)
    reference = timm.create_model(VIT, img_size=28, patch_size=4, in_chans=1, num_classes=10, reg_tokens=2,
                                  no_embed_class=True, **SMALL).eval()
    reference.load_state_dict(ours.vit.state_dict())
    path, levels = images[1]
    with torch.no_grad():
        got = ours(torch.from_numpy(levels[0][0][None]), torch.from_numpy(levels[0][1][None].astype(np.int64)))
        want = reference(normalised(np.asarray(Image.open(path).convert("L")), reference))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    decay_free = {id(p) for p in param_groups(ours, 0.05)[1]["params"]}
    assert {id(ours.vit.pos_embed), id(ours.vit.cls_token), id(ours.vit.reg_token)} <= decay_free


def test_audio_spectrogram_patches_go_through_the_same_adapter():
    from icpc.pipeline.modalities.audio import AudioConfig, build_spec as audio_spec

    spec = audio_spec(AudioConfig())
    model = build_model(spec, ModelConfig(name=f"timm:{VIT}", args={"depth": 1}), 4).eval()
    level = spec.ladder[-1]
    tokens = torch.randn(2, level.tokens, spec.tokenization["token_dim"]).half()
    positions = torch.arange(level.tokens)[None].expand(2, -1)
    assert model.vit.patch_embed.proj.in_channels == 1 and model(tokens, positions, len(spec.ladder) - 1).shape == (2, 4)


def test_head_of_another_class_count_is_replaced_with_a_log_line(tmp_path, capfd):
    weights = timm_weights(tmp_path, 28, 4, classes=1000)
    model = build_model(SPEC, ModelConfig(name=f"timm:{VIT}", args=SMALL, weights=weights), 10)
    assert "head replaced: the file has 1000 classes, the data 10" in capfd.readouterr().err
    assert model.vit.head.out_features == 10


@pytest.mark.parametrize("name, args, needle", [
    ("beit_base_patch16_224", {"depth": 1}, "is a Beit, not a VisionTransformer"),
    ("vit_base_patch16_rope_224", {"depth": 1}, "not a VisionTransformer"),           # rotary (EVA class)
    ("vit_tiny_patch16_224", {"pos_embed": "none", "depth": 1}, "no absolute position table"),
    ("vit_tiny_patch16_224", {"img_size": 224}, "set from the dataset"),
    ("vit_nonexistent_patch3", {}, "has no such model"),
])
def test_models_without_an_absolute_table_and_bad_arguments_are_refused(name, args, needle):
    with pytest.raises(ValueError, match=f"timm:{name}|model.args") as info:
        build_model(SPEC, ModelConfig(name=f"timm:{name}", args=args), 10)
    assert needle in str(info.value)


def test_weights_of_another_architecture_are_refused(tmp_path):
    from safetensors.torch import save_file

    other = timm.create_model(VIT, img_size=28, patch_size=4, in_chans=1, num_classes=10, depth=3)
    save_file(other.state_dict(), str(tmp_path / "deeper.safetensors"))
    with pytest.raises(ValueError, match=r"does not fit timm:vit_tiny_patch16_224: missing \[\], unexpected "
                                         r"\['blocks.2"):
        build_model(SPEC, ModelConfig(name=f"timm:{VIT}", args=SMALL, weights=str(tmp_path / "deeper.safetensors")), 10)


def test_text_and_video_are_refused_with_what_to_use():
    from icpc.pipeline.modalities.video import VideoConfig, build_spec as video_spec

    with pytest.raises(ValueError, match="video tubelets"):
        build_model(video_spec(VideoConfig()), ModelConfig(name=f"timm:{VIT}"), 3)
