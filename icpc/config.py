"""Typed configs (model, training, evaluation) and the machinery every config shares: ``--set a.b=value``
overrides, all-at-once validation, saving and reloading. The compress config lives with the
pipeline (``icpc.pipeline.config``), which adds one section per registered modality."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any

from icpc.contract import STRATEGIES


@dataclass
class ModelConfig:
    """The model: a plugin reference (icpc.models) and, for the built-in transformer, its size.

    The default is this project's pre-norm encoder, mean-pooled, with a learned position table.
    """

    name: str = "transformer"         # plugin: transformer, timm:NAME, hf:PATH_OR_NAME, PKG.MODULE:FACTORY or an icpc.models entry point
    weights: str = ""                 # pretrained weights to start from: a .safetensors/.pth/.bin path or URL ("" = none)
    args: dict[str, Any] = field(default_factory=dict)  # plugin keyword arguments: --set model.args.KEY=JSON (e.g. depth=2)
    dim: int = 96                     # transformer: token width D
    depth: int = 4                    # transformer: encoder blocks
    heads: int = 4                    # transformer: attention heads (dim % heads == 0)
    mlp_ratio: float = 2.0            # transformer: MLP hidden width = mlp_ratio * dim
    dropout: float = 0.0              # transformer, hf: compression levels already regularise (ICPC's point)
    kind: str = "transformer"         # deprecated (use name): transformer, or minilm = --model hf:minilm (old configs, checkpoints)
    freeze_word_embeddings: bool = False  # hf: keep the pretrained word table fixed (MiniLM: 30522 x 384, half the weights)

    def validate(self) -> list[str]:
        errors = []
        if self.kind not in ("transformer", "minilm"):
            errors.append(f"model.kind={self.kind!r} is replaced by model.name: use --model {self.kind} or "
                          f"--set model.name={self.kind} (e.g. timm:vit_tiny_patch16_224, mylab.models:build)")
        ref = self.name.strip()
        prefix, sep, rest = ref.partition(":")
        if not ref or (sep and (not prefix or not rest)):
            errors.append(f"model.name={self.name!r}: expected transformer, timm:NAME, hf:PATH_OR_NAME, "
                          f"PKG.MODULE:FACTORY or an icpc.models entry-point name")
        if self.dim <= 0 or self.depth <= 0 or self.heads <= 0:
            errors.append(f"model dim/depth/heads ({self.dim}/{self.depth}/{self.heads}): must be positive")
        elif self.dim % self.heads:
            errors.append(f"model.dim={self.dim} is not divisible by model.heads={self.heads}")
        if not 0 <= self.dropout < 1:
            errors.append(f"model.dropout={self.dropout}: must be in [0, 1)")
        if self.freeze_word_embeddings and self.kind != "minilm" and not ref.startswith(("minilm", "hf:")):
            errors.append("model.freeze_word_embeddings=true needs a pretrained model, --model hf:PATH_OR_NAME (a "
                          "model trained from scratch must learn its token table)")
        return errors


@dataclass
class TrainConfig:
    """``icpc train``: DDP training on the shards, a fresh level per sample per epoch."""

    data: str = "runs/data"           # output folder of `icpc compress`
    output: str = "runs/train"        # checkpoints, metrics.csv, TensorBoard logs, config.json
    epochs: int = 5
    batch_size: int = 64              # samples per rank and micro-step
    batch_tokens: int = 0             # > 0: token-budget batches, as many samples per rank as fit this many tokens
    grad_accum: int = 1               # micro-steps per optimizer step
    lr: float = 3e-3                  # peak learning rate after warmup
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05     # of all optimizer steps
    seed: int = 0                     # drives level draws, shuffling and shard assignment
    baseline: bool = False            # always level 0 (the A/B reference)
    level_weights: list[float] = field(default_factory=list)  # relative draw probability per level; [] = uniform
    level_weights_end: list[float] = field(default_factory=list)  # weights of the last epoch, linear in between; [] = constant
    anneal_start: float = 0.0         # share of the epochs at level_weights before they start moving to level_weights_end
    final_level0_epochs: int = 0      # the last N epochs train level 0 only (a FixRes-style finish at full resolution)
    strategy: str = "consistent"      # position strategy: consistent, corner, renumber, interpolate
    shuffle_window: int = 16384       # samples shuffled together (whole shards); 0 = the whole split at once
    length_bucket: int = 8            # text: batch samples whose token counts agree // this (0 = off); grids unaffected
    threads: int = 0                  # torch intra-op threads per rank; 0 = cores / ranks
    loader_workers: int = -1          # DataLoader worker processes per rank; -1 = the rank's spare cores (0-8), 0 = none
    prefetch: int = 4                 # batches each loader worker prepares ahead
    read_merge_gap: int = 0           # bytes: payloads of one shard closer than this are fetched in one request
    collective_timeout_s: float = 300.0  # s a rank waits in a collective before it fails (a dead or stuck peer)
    resume: bool = False              # continue from output/last.pt (or resume_from), mid-epoch included
    resume_from: str = ""             # a checkpoint to resume from instead of output/last.pt
    checkpoint_every: int = 0         # also checkpoint every N optimizer steps (0 = at epoch ends only)
    keep_checkpoints: int = 2         # step checkpoints kept in output/checkpoints/ (0 = only last.pt)
    trace: bool = False               # each rank logs the rows it trained at every step (ranks/trace-R.jsonl)
    test_each_epoch: bool = False     # also report level-0 test accuracy after every epoch (time-to-accuracy curves)
    max_steps_per_epoch: int = 0      # cap steps per epoch (0 = a full pass); for smoke tests
    model: ModelConfig = field(default_factory=ModelConfig)

    def validate(self) -> list[str]:
        errors = self.model.validate()
        for name in ("epochs", "batch_size", "grad_accum", "prefetch"):
            if getattr(self, name) <= 0:
                errors.append(f"{name}={getattr(self, name)}: must be positive")
        for name in ("shuffle_window", "read_merge_gap", "batch_tokens"):
            if getattr(self, name) < 0:
                errors.append(f"{name}={getattr(self, name)}: must be >= 0")
        if self.loader_workers < -1:
            errors.append(f"loader_workers={self.loader_workers}: -1 (auto), 0 (in the training process) or more")
        for name in ("checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 0:
                errors.append(f"{name}={getattr(self, name)}: must be >= 0")
        if self.collective_timeout_s <= 0:
            errors.append(f"collective_timeout_s={self.collective_timeout_s}: must be positive")
        if self.lr <= 0:
            errors.append(f"lr={self.lr}: must be positive")
        if not 0 <= self.warmup_fraction < 1:
            errors.append(f"warmup_fraction={self.warmup_fraction}: must be in [0, 1)")
        if self.strategy not in STRATEGIES:
            errors.append(f"strategy={self.strategy!r}: choose one of {STRATEGIES}")
        for name in ("level_weights", "level_weights_end"):
            w = getattr(self, name)
            if any(x < 0 for x in w) or (w and not sum(w)):
                errors.append(f"{name}={w}: must be non-negative, not all zero")
        if not 0 <= self.anneal_start < 1:
            errors.append(f"anneal_start={self.anneal_start}: a share of the epochs in [0, 1)")
        if not 0 <= self.final_level0_epochs <= self.epochs:
            errors.append(f"final_level0_epochs={self.final_level0_epochs}: must be between 0 and epochs={self.epochs}")
        return errors


@dataclass
class EvalConfig:
    """``icpc evaluate``: accuracy and time per level, and the cascade over a threshold sweep."""

    checkpoint: str = "runs/train/last.pt"
    data: str = ""                    # dataset folder; "" = the one the checkpoint was trained on
    split: str = "test"
    output: str = ""                  # "" = <checkpoint folder>/eval
    batch_size: int = 256
    # shared thresholds of the sweep drawn as a curve in cascade.png (not a result: chosen on this split)
    thresholds: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99])
    calibrated: str = ""              # thresholds.json whose cascade is reported; "" = beside the checkpoint, if any
    strategy: str = ""                # "" = the strategy the checkpoint was trained with
    threads: int = 0                  # torch threads; 0 = all cores
    limit: int = 0                    # evaluate at most this many samples (0 = all)
    device: str = "auto"              # auto = cuda when torch sees a GPU, else cpu; or cpu, cuda, cuda:N
    precision: str = "auto"           # auto = bf16 autocast on a GPU (fp16 where it lacks bf16), fp32 on CPU

    def validate(self) -> list[str]:
        errors = []
        if self.split not in ("train", "val", "test"):
            errors.append(f"split={self.split!r}: choose train, val or test")
        if any(t < 0 for t in self.thresholds):
            errors.append(f"thresholds={self.thresholds}: must be >= 0 (above 1 = never confident)")
        if self.batch_size <= 0:
            errors.append(f"batch_size={self.batch_size}: must be positive")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            errors.append(f"precision={self.precision!r}: choose auto, fp32, bf16 or fp16")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            errors.append(f"device={self.device!r}: choose auto, cpu, cuda or cuda:N")
        if self.strategy and self.strategy not in STRATEGIES:
            errors.append(f"strategy={self.strategy!r}: choose one of {STRATEGIES} (or '' for the trained one)")
        return errors


class ConfigError(ValueError):
    """Every problem found in a config, reported together."""

    def __init__(self, errors: list[str]):
        super().__init__("invalid configuration:\n  " + "\n  ".join(errors))
        self.errors = errors


def apply_overrides(cfg: Any, overrides: list[str]) -> list[str]:
    """Apply ``a.b=value`` strings in place; returns the errors (unknown keys, bad values)."""
    errors = []
    for item in overrides:
        path, sep, text = item.partition("=")
        if not sep:
            errors.append(f"--set {item!r}: expected KEY=VALUE, e.g. --set model.dim=128")
            continue
        target = cfg
        names = path.strip().split(".")
        try:
            if _set_dict_item(cfg, names, text, path):
                continue
            for name in names[:-1]:
                target = _child(target, name, path)
            hints = typing.get_type_hints(type(target))
            if names[-1] not in hints:
                raise KeyError(f"--set {path}: unknown key {names[-1]!r}; known: {sorted(hints)}")
            if dataclasses.is_dataclass(hints[names[-1]]):
                raise ValueError(f"--set {path}: {path!r} is a section; set one of its fields, "
                                 f"e.g. {path}.{dataclasses.fields(hints[names[-1]])[0].name}=...")
            setattr(target, names[-1], _coerce(text, hints[names[-1]], path))
        except (KeyError, ValueError) as exc:
            errors.append(str(exc).strip('"'))
    return errors


def finalize(cfg: Any, overrides: list[str] = ()) -> Any:
    """Apply overrides and validate; raise one ConfigError listing every problem."""
    errors = apply_overrides(cfg, list(overrides)) + cfg.validate()
    if errors:
        raise ConfigError(errors)
    return cfg


def _set_dict_item(cfg: Any, names: list[str], text: str, path: str) -> bool:
    """``a.args.KEY=JSON`` into a dict field (``--set model.args.depth=2``); False when no dict field is on the path.

    The value is parsed as JSON (2, 0.1, true, [1, 2], {"a": 1}); text that is not JSON stays a string.
    """
    target = cfg
    for i, name in enumerate(names[:-1]):
        target = _child(target, name, path)
        hint = typing.get_type_hints(type(target)).get(names[i + 1]) if dataclasses.is_dataclass(target) else None
        if typing.get_origin(hint) is dict and i + 2 < len(names):
            if i + 3 != len(names):
                raise ValueError(f"--set {path}: one key below {'.'.join(names[: i + 2])}; give nested values as "
                                 f"JSON, e.g. --set {'.'.join(names[: i + 3])}='{{\"a\": 1}}'")
            getattr(target, names[i + 1])[names[-1]] = _json_or_text(text)
            return True
    return False


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _child(obj: Any, name: str, path: str) -> Any:
    if not dataclasses.is_dataclass(obj) or name not in {f.name for f in dataclasses.fields(obj)}:
        raise KeyError(f"--set {path}: unknown section {name!r}")
    return getattr(obj, name)


def _coerce(text: str, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    try:
        if origin is dict:
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError(text)
            return value
        if origin is list:
            value = json.loads(text) if text.strip().startswith("[") else [x for x in text.split(",") if x]
            return [args[0](v) for v in value]
        if hint is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if args and text.lower() in ("none", "null"):
            return None
        return (args[0] if args else hint)(text)
    except (TypeError, ValueError, json.JSONDecodeError):
        raise ValueError(f"--set {path}={text!r}: not a valid {getattr(hint, '__name__', hint)}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config saved with ``to_dict`` (nested dataclasses included)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            value = data[f.name]
            kwargs[f.name] = from_dict(hints[f.name], value) if dataclasses.is_dataclass(hints[f.name]) else value
    return cls(**kwargs)
