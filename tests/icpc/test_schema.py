"""The batch schema: the README's table is the one icpc.schema generates, and real batches (image with every
alias, text with padding) hold exactly the documented fields with the documented dtypes, shapes and polarity."""

from __future__ import annotations

import re

import pytest
import torch

import icpc
from icpc.schema import markdown_table
from tests.conftest import REPO

ENABLED_BY = {"always": "", "keys=True": "keys", 'aliases=["hf"]': "hf", 'aliases=["timm"]': "timm"}


def documented() -> list[dict[str, str]]:
    """The README's schema table, parsed from the Markdown (not from icpc.schema)."""
    text = (REPO / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \| ([^|]+) \| ([^|]+) \| [^|]+ \|$", text, flags=re.M)
    assert rows, "README.md has no batch schema table"
    return [{"name": n, "with": ENABLED_BY[w.strip()], "dtype": d.strip(), "shape": s.strip()} for n, w, d, s in rows]


def check_batch(batch: dict, spec, enabled: set[str]) -> None:
    """Every documented field that ``enabled`` turns on is there, as documented; nothing else is."""
    fields = [f for f in documented() if not f["with"] or f["with"] in enabled]
    fields = [f for f in fields if not (f["name"] == "input_ids" and spec.modality != "text")]  # "text only"
    assert set(batch) == {f["name"] for f in fields}
    sizes: dict[str, int] = {"D": spec.token_shape[0] if spec.token_shape else 0, "2": 2}
    for f in fields:
        value, dtype = batch[f["name"]], f["dtype"]
        if dtype == "int":
            assert isinstance(value, int), f["name"]
            continue
        if dtype.endswith(" or None") and value is None:
            continue
        dtype = dtype.removesuffix(" or None")
        symbols = f["shape"].strip("()").replace("[,D]", ",D" if spec.token_shape else "").split(",")
        symbols = [s for s in symbols if s]
        if dtype == "list[str]":
            assert all(isinstance(k, str) and k for k in value)
            shape = (len(value),)
        else:
            want = spec.token_dtype.name if dtype == "token" else dtype
            assert value.dtype == getattr(torch, want), (f["name"], value.dtype, want)
            shape = tuple(value.shape)
        assert len(shape) == len(symbols), (f["name"], shape, symbols)
        for symbol, n in zip(symbols, shape):
            assert sizes.setdefault(symbol, n) == n, (f["name"], symbol, n, sizes)


def test_the_readme_shows_the_generated_table():
    assert markdown_table() in (REPO / "README.md").read_text(), "regenerate with: python -m icpc.schema"


def test_image_batches_with_every_alias_match_the_documented_schema(compressed):
    ld = icpc.ICPCLoader(str(compressed), batch_size=8, rank=0, world_size=1, num_workers=0, aliases=["hf", "timm"],
                         keys=True, max_batches=6)
    for batch in ld:
        check_batch(batch, ld.spec, {"keys", "hf", "timm"})
        assert batch["patch_valid"].all() and batch["patches"].max() <= 1.0
        assert torch.equal(batch["patches"], batch["tokens"].float() / 255)


def test_text_batches_mark_padding_with_both_polarities(text_compressed):
    ld = icpc.ICPCLoader(str(text_compressed), batch_size=16, rank=0, world_size=1, num_workers=0, aliases=["hf"])
    padded = 0
    for batch in ld:
        check_batch(batch, ld.spec, {"hf"})
        assert torch.equal(batch["input_ids"], batch["tokens"].long())
        if batch["padding_mask"] is not None:
            padded += 1
            assert torch.equal(batch["attention_mask"], (~batch["padding_mask"]).long())  # 1 = keep
            assert (batch["tokens"][batch["padding_mask"]] == 0).all()                   # padding is 0
            assert (batch["tokens"][~batch["padding_mask"]] != 0).all()
    assert padded, "no text batch had padding: the check above never ran"


def test_timm_aliases_are_refused_for_text_naming_the_modality(text_compressed):
    with pytest.raises(ValueError, match="this dataset is text"):
        icpc.ICPCLoader(str(text_compressed), aliases=["timm"], rank=0, world_size=1)
