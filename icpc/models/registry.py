"""The model registry (DESIGN contract 6): a plugin reference -> a factory -> the classifier for a dataset.

A reference (``model.name``, ``icpc train --model REF``) is one of

    transformer                this project's encoder (the default)
    timm:NAME                  a timm ViT-family model, e.g. timm:vit_tiny_patch16_224 (extra ``timm``)
    hf:PATH_OR_NAME            a Hugging Face encoder with an absolute position table
    PKG.MODULE:FACTORY         any importable factory, e.g. mylab.models:build_vit
    NAME                       an entry point of the group ``icpc.models`` in an installed distribution

A factory is ``factory(ctx: ModelContext, **args) -> torch.nn.Module`` whose module maps
``(tokens, positions, level=0, padding_mask=None)`` to logits ``(B, classes)``; ``args`` come from
``model.args`` (``--set model.args.KEY=JSON``). Prefixes and built-ins are imported lazily, so a
missing extra (timm, transformers) only matters to the user who names it.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable

from icpc.config import ModelConfig
from icpc.contract import Spec

ENTRY_POINT_GROUP = "icpc.models"
# reference -> "module:factory"; "minilm" is the retired model.kind=minilm: old configs and checkpoints build hf:minilm
BUILTIN = {
    "transformer": "icpc.models.transformer:build",
    "minilm": "icpc.models.hf:build_minilm",
}
# prefix before ':' -> (module:factory, what to install when it is missing)
PREFIXES = {
    "timm": ("icpc.models.timm_vit:build", "pip install 'icpc[timm]'"),
    "hf": ("icpc.models.hf:build", "pip install 'icpc[hf]'"),
}
FORMS = ("transformer", "timm:NAME", "hf:PATH_OR_NAME", "PKG.MODULE:FACTORY",
         f"an entry-point name of the group '{ENTRY_POINT_GROUP}'")


class ModelPluginError(ValueError):
    """A model reference that cannot be resolved, or a factory that refuses the data; the message says why."""


@dataclass(frozen=True)
class ModelContext:
    """What a model plugin is given.

    spec: the dataset's spec (modality, reference_grid, ladder, tokenization).
    num_classes: output width of the classifier.
    strategy: position strategy (consistent, corner, renumber, interpolate): how ``positions`` index
        the reference grid (``interpolate``: rows of the table resized to the level's grid).
    name: the reference after its prefix (``vit_tiny_patch16_224`` for ``timm:vit_tiny_patch16_224``).
    weights: pretrained weights to start from (a path or URL through icpc.storage); "" = none, and
        always "" when a checkpoint is rebuilt (the checkpoint carries the trained weights).
    cfg: the whole ModelConfig (dim, depth, ... for the built-in transformer).
    """

    spec: Spec
    num_classes: int
    strategy: str
    name: str
    weights: str
    cfg: ModelConfig


def plugin_ref(cfg: ModelConfig) -> str:
    """The reference ``cfg`` names: ``model.name``, or ``minilm`` for an old ``model.kind=minilm`` config."""
    if cfg.kind == "minilm" and cfg.name == "transformer":
        return "minilm"
    return cfg.name


def resolve(ref: str) -> tuple[Callable[..., Any], str]:
    """``(factory, name after the prefix)`` for a reference; ModelPluginError naming the reference otherwise."""
    ref = ref.strip()
    if ref in BUILTIN:
        return _import_target(BUILTIN[ref], ref, "a built-in model"), ref
    prefix, sep, rest = ref.partition(":")
    if sep and prefix in PREFIXES:
        if not rest:
            raise ModelPluginError(f"model {ref!r}: name the model after '{prefix}:', e.g. {_example(prefix)}")
        target, install = PREFIXES[prefix]
        return _import_target(target, ref, f"'{prefix}:' models", install), rest
    if sep:
        return _import_target(ref, ref, "a PKG.MODULE:FACTORY reference"), rest
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == ref]
    if found:
        try:
            return found[0].load(), ref
        except (ImportError, AttributeError) as exc:
            raise ModelPluginError(f"model {ref!r}: the entry point {found[0].value!r} of "
                                   f"{_distribution(found[0])} does not load: {exc}") from None
    raise ModelPluginError(f"model {ref!r} is not a known model; use one of: {', '.join(FORMS)}. "
                           f"Installed: {sorted(available())}")


def available() -> list[str]:
    """Built-in references and the entry points installed here (prefixes are open-ended, shown as NAME)."""
    names = {*BUILTIN, *(f"{p}:NAME" for p in PREFIXES)}
    return sorted(names | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def plugin_record(cfg: ModelConfig) -> dict[str, Any]:
    """What a checkpoint stores about its model: reference, arguments, weights origin, and where the factory
    came from (module, distribution and version), so a machine without it is told what to install."""
    ref = plugin_ref(cfg)
    factory, _ = resolve(ref)
    record = {"ref": ref, "args": dict(cfg.args), "weights": cfg.weights,
              "factory": f"{factory.__module__}:{getattr(factory, '__qualname__', factory)}"}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == ref and ep.dist is not None:
            record["distribution"] = f"{ep.dist.name} {ep.dist.version}"
    return record


def build_model(spec: Spec, model_cfg: ModelConfig, num_classes: int, strategy: str = "consistent",
                pretrained: bool = True):
    """The classifier for ``spec`` from the plugin ``model_cfg`` names (train, evaluate, calibrate, serve).

    pretrained: load ``model_cfg.weights`` (False when a checkpoint is rebuilt: it holds the weights).
    """
    ref = plugin_ref(model_cfg)
    factory, name = resolve(ref)
    ctx = ModelContext(spec, num_classes, strategy, name, model_cfg.weights if pretrained else "", model_cfg)
    args = dict(model_cfg.args)
    try:
        inspect.signature(factory).bind(ctx, **args)
    except TypeError as exc:
        raise ModelPluginError(f"model {ref!r}: model.args {args} do not fit its factory "
                               f"{factory.__module__}.{factory.__qualname__}{inspect.signature(factory)} "
                               f"({exc}); fix --set model.args.KEY=VALUE") from None
    except ValueError:  # a builtin or C callable without a signature: let the call say
        pass
    module = factory(ctx, **args)
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ModelPluginError(f"model {ref!r}: its factory returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _import_target(target: str, ref: str, what: str, install: str = "") -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ModelPluginError(f"model {ref!r}: expected PKG.MODULE:FACTORY, e.g. mylab.models:build_vit")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"; {install}" if install else " (is its package installed, or its folder on PYTHONPATH?)"
        raise ModelPluginError(f"model {ref!r}: {what} need the module {module_name!r}, which cannot be "
                               f"imported: {exc}{hint}") from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ModelPluginError(f"model {ref!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(factory):
        raise ModelPluginError(f"model {ref!r}: {module_name}:{attr} is a {type(factory).__name__}, not a factory "
                               f"function factory(ctx, **args) -> nn.Module")
    return factory


def _distribution(ep) -> str:
    return f"distribution {ep.dist.name} {ep.dist.version}" if ep.dist is not None else "an unknown distribution"


def _example(prefix: str) -> str:
    return {"timm": "timm:vit_tiny_patch16_224", "hf": "hf:/models/bert-base-uncased"}.get(prefix, f"{prefix}:NAME")
