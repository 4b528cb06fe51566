"""icpc/models/registry.py: plugin references, the built-in transformer, user factories, entry points, refusals."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from icpc.config import ModelConfig, TrainConfig, finalize, to_dict
from icpc.models import ModelPluginError, build_model, plugin_record
from icpc.modelio import load_model, save_checkpoint
from icpc.pipeline.modalities.image import ImageConfig, build_spec
from tests.conftest import REPO

SPEC = build_spec(ImageConfig())  # 28 px, 4 px patches: a 7 x 7 grid, ladder 28/24/20/16/12
TINY = "tests.plugins.tiny_model:build"


def batch(level: int = 0, b: int = 2):
    n = SPEC.ladder[level].tokens
    tokens = torch.randint(0, 256, (b, n, SPEC.tokenization["token_dim"]), dtype=torch.uint8)
    return tokens, torch.randint(0, SPEC.reference_cells, (b, n))


def test_the_default_is_the_built_in_transformer():
    from icpc.models.transformer import TokenClassifier

    model = build_model(SPEC, ModelConfig(dim=32, depth=1, heads=2), 10)
    assert type(model) is TokenClassifier and model.pos_table.shape == (49, 32)
    assert model(*batch(3)).shape == (2, 10)


def test_a_user_factory_by_module_path_gets_the_spec_and_its_args():
    model = build_model(SPEC, ModelConfig(name=TINY, args={"width": 5}), 3)
    assert model.pos.weight.shape == (49, 5) and model.head.out_features == 3
    tokens, positions = batch(2)
    assert model(tokens, positions, 2).shape == (2, 3)


@pytest.mark.parametrize("ref, needle", [
    ("no_such_model", "is not a known model"),
    ("timm:", "name the model after 'timm:'"),
    ("tests.plugins.nowhere:build", "cannot be imported"),
    ("tests.plugins.tiny_model:nothing", "has no attribute 'nothing'"),
    ("tests.plugins.tiny_model:NOT_CALLABLE", "is a int, not a factory"),
    ("tests.plugins.tiny_model:not_a_module", "returned str, not a torch.nn.Module"),
])
def test_bad_references_are_refused_naming_them(ref, needle):
    with pytest.raises(ModelPluginError, match="model") as info:
        build_model(SPEC, ModelConfig(name=ref), 3)
    assert needle in str(info.value) and ref.split(":")[0] in str(info.value)


def test_arguments_the_factory_does_not_take_are_refused_before_it_runs():
    with pytest.raises(ModelPluginError, match=r"model.args \{'depth': 2\} do not fit") as info:
        build_model(SPEC, ModelConfig(name=TINY, args={"depth": 2}), 3)
    assert "width" in str(info.value)  # the factory's signature is shown
    with pytest.raises(ModelPluginError, match="do not fit"):
        build_model(SPEC, ModelConfig(args={"width": 2}), 3)  # the built-in transformer takes none


def test_config_takes_a_reference_and_json_arguments():
    cfg = finalize(TrainConfig(), [f"model.name={TINY}", "model.args.width=6", "model.args.pool=avg",
                                   "model.args.sizes=[1, 2]", "model.weights=s3://b/w.safetensors"])
    assert cfg.model.name == TINY and cfg.model.args == {"width": 6, "pool": "avg", "sizes": [1, 2]}
    assert TrainConfig().model.args is not ModelConfig().args  # no shared default dict


@pytest.mark.parametrize("override, needle", [
    ("model.kind=timm", "model.kind='timm' is replaced by model.name"),
    ("model.name=mod:", "model.name='mod:'"),
    ("model.args.a.b=1", "one key below model.args"),
    ("model.args=[1]", "not a valid dict"),
])
def test_config_refusals(override, needle):
    with pytest.raises(ValueError) as info:
        finalize(TrainConfig(), [override])
    assert needle in str(info.value)


def test_a_checkpoint_names_its_plugin_and_rebuilds_it(tmp_path):
    cfg = finalize(TrainConfig(), [f"model.name={TINY}", "model.args.width=4"])
    model = build_model(SPEC, cfg.model, 3)
    record = plugin_record(cfg.model)
    assert record == {"ref": TINY, "args": {"width": 4}, "weights": "", "factory": "tests.plugins.tiny_model:build"}
    state = {"model": model.state_dict(), "config": to_dict(cfg), "spec": SPEC.to_json(), "classes": ["a", "b", "c"],
             "model_plugin": record}
    save_checkpoint(state, str(tmp_path / "last.pt"))
    back, spec, _ = load_model(str(tmp_path / "last.pt"))
    tokens, positions = batch(1)
    with torch.no_grad():
        torch.testing.assert_close(back(tokens, positions, 1), model.eval()(tokens, positions, 1))

    state["config"]["model"]["name"] = state["model_plugin"]["ref"] = "gone_pkg.models:build"
    state["model_plugin"]["distribution"] = "gone-pkg 1.2"
    save_checkpoint(state, str(tmp_path / "gone.pt"))
    with pytest.raises(ModelPluginError, match=r"trained with the model plugin 'gone_pkg.models:build' from gone-pkg "
                                               r"1.2 .*not available here"):
        load_model(str(tmp_path / "gone.pt"))


def test_an_old_checkpoint_without_a_plugin_record_loads_as_the_transformer(tmp_path):
    cfg = TrainConfig()
    cfg.model.dim, cfg.model.depth, cfg.model.heads = 16, 1, 2
    old = to_dict(cfg)
    for key in ("name", "weights", "args"):  # written before plugins existed
        del old["model"][key]
    model = build_model(SPEC, cfg.model, 2)
    save_checkpoint({"model": model.state_dict(), "config": old, "spec": SPEC.to_json(), "classes": ["a", "b"]},
                    str(tmp_path / "old.pt"))
    back, _, _ = load_model(str(tmp_path / "old.pt"))
    assert back.pos_table.shape == (49, 16)


def test_transformer_weights_of_the_same_shapes_load_and_others_are_refused(tmp_path):
    small = build_model(SPEC, ModelConfig(dim=16, depth=1, heads=2), 2)
    torch.save({"model": small.state_dict()}, tmp_path / "w.pt")
    again = build_model(SPEC, ModelConfig(dim=16, depth=1, heads=2, weights=str(tmp_path / "w.pt")), 2)
    torch.testing.assert_close(again.pos_table, small.pos_table)
    other = build_spec(ImageConfig(sides=[32, 16]))  # an 8 x 8 grid: the 7 x 7 table must not be cropped
    with pytest.raises(ValueError, match=r"pos_table: file \(49, 16\), model \(64, 16\)"):
        build_model(other, ModelConfig(dim=16, depth=1, heads=2, weights=str(tmp_path / "w.pt")), 2)


def test_a_user_module_is_found_through_the_entry_point_group(tmp_path):
    """A real ``icpc.models`` entry point: a dist-info folder on sys.path of a fresh interpreter names the
    module in tests/plugins/; no ICPC file names it."""
    dist = tmp_path / "site" / "tiny_icpc_model-0.3.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-icpc-model\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text("[icpc.models]\ntiny-pooled = tiny_model:build\n")
    script = textwrap.dedent("""
        from icpc.config import ModelConfig
        from icpc.models import available, build_model, plugin_record
        from icpc.pipeline.modalities.image import ImageConfig, build_spec
        model = build_model(build_spec(ImageConfig()), ModelConfig(name="tiny-pooled", args={"width": 3}), 4)
        print(type(model).__module__, type(model).__name__, model.pos.weight.shape[1], "tiny-pooled" in available())
        print(plugin_record(ModelConfig(name="tiny-pooled"))["distribution"])
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO / "tests" / "plugins")])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["tiny_model TinyPooled 3 True", "tiny-icpc-model 0.3"]
