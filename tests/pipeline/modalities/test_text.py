"""Text compressor: importance order, keep counts, sub-token ownership, original positions, truncation, POS scorer, corpus pass."""

from __future__ import annotations

import json

import numpy as np
import pytest

from icpc.contract import Spec
from icpc.pipeline.modalities import text_tokens as text
from icpc.pipeline.modalities.text import MODALITY, TextConfig, build_spec
from icpc.pipeline.modalities.text_corpus import count_texts, count_texts_ray
from icpc.pipeline.modalities.text_tokenizer import CORPUS_SPECIALS, train_corpus_tokenizer

# One piece per word except zebra (zeb ##ra), so positions shift by one after it.
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "zeb", "##ra", "ate", "common", "grass", ".", "dog", "quickly",
         "a", "cat", "big"]
# document frequencies out of 100 texts: common > ate > grass > quickly > dog; zebra unseen (rarest)
DF = {"the": 100, "common": 90, "ate": 50, "grass": 10, "quickly": 5, "dog": 3}
SENTENCE = "The zebra ate the common grass."
ONE_WORD_LESS = [1.0, 0.86, 0.72, 0.58, 0.43, 0.29, 0.15]  # 7 words: 7, 6, 5, 4, 3, 2, 1 kept


def compress(payload: bytes, spec: Spec, levels=None):
    """Decode then compress, as the pipeline does (levels and meta)."""
    return MODALITY.compress_bytes(payload, spec, levels)


@pytest.fixture(scope="module")
def wordnet_texts() -> list[bytes]:
    """330 real WordNet noun glosses (Debian's wordnet-base)."""
    from icpc.demo.wordnet import read_glosses

    return [gloss.encode() for _, _, gloss in read_glosses()[:: 250]][:330]


def _tokenizer():
    """A BERT-style WordPiece over VOCAB (Hugging Face ``tokenizers``), as a model's tokenizer.json would hold."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tk = Tokenizer(models.WordPiece({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tk.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    return tk


def _spec(**kw) -> Spec:
    cfg = TextConfig(**{"keep": ONE_WORD_LESS, "min_words": 1, "max_len": 32, **kw})
    assert not cfg.validate(), cfg.validate()
    return build_spec(cfg, _tokenizer(), DF, 100)


def _words(tokens: np.ndarray) -> str:
    return " ".join(VOCAB[t] for t in tokens[1:-1]).replace(" ##", "")


def test_sub_tokens_belong_to_the_word_they_start_in():
    #        [CLS]  "the"  " "  "zeb"  "ra"  "."   [SEP]      words: the (0-3), zebra (4-9), . (9-10)
    starts = np.array([0, 0, 3, 4, 7, 9, 0])
    special = np.array([1, 0, 0, 0, 0, 0, 1], dtype=bool)
    owner = text.word_owners(starts, special, np.array([3, 9, 10]))
    assert owner.tolist() == [-1, 0, 1, 1, 1, 2, -1]    # a space token joins the next word (byte-level BPE)
    tokens, positions = text.assemble(np.arange(10, 17), owner, np.array([1]))
    assert tokens.tolist() == [10, 12, 13, 14, 16] and positions.tolist() == [0, 2, 3, 4, 6]


def test_truncation_keeps_specials_and_whole_words():
    ids, owner = np.arange(8), np.array([-1, 0, 1, 1, 2, 2, 2, -1])
    cut_ids, cut_owner, cut = text.truncate_tokens(ids, owner, 6)        # room for 4: word 2 (3 tokens) goes
    assert cut and cut_ids.tolist() == [0, 1, 2, 3, 7] and cut_owner.tolist() == [-1, 0, 1, 1, -1]
    assert text.truncate_tokens(ids, owner, 8)[2] is False
    long_word = np.array([-1, 0, 0, 0, 0, -1])
    assert text.truncate_tokens(np.arange(6), long_word, 4)[0].tolist() == [0, 1, 2, 5]   # a first word is itself cut
    with pytest.raises(ValueError, match="no tokens"):
        text.truncate_tokens(np.arange(2), np.array([-1, -1]), 8)


def test_importance_order_punctuation_then_stop_words_then_common_words():
    levels = compress(SENTENCE.encode(), _spec())
    assert [_words(t) for t, _ in levels.levels] == [
        "the zebra ate the common grass .",
        "the zebra ate the common grass",   # punctuation first
        "the zebra ate common grass",       # stop words next; of two equal words the later goes first
        "zebra ate common grass",
        "zebra ate grass",                  # then the most common content word (highest df)
        "zebra grass",
        "zebra",                            # the rarest word (unseen in the corpus) stays longest
    ]
    assert levels.meta == {"words": 7, "truncated": False}


def test_positions_are_original_subword_indices():
    levels = compress(SENTENCE.encode(), _spec())
    tokens0, pos0 = levels.levels[0]
    # [CLS] the zeb ##ra ate the common grass . [SEP]
    assert tokens0.tolist() == [2, 4, 5, 6, 7, 4, 8, 9, 10, 3] and pos0.tolist() == list(range(10))
    assert levels.levels[-1][0].tolist() == [2, 5, 6, 3] and levels.levels[-1][1].tolist() == [0, 2, 3, 9]
    assert levels.levels[4][1].tolist() == [0, 2, 3, 4, 7, 9]  # zebra ate grass
    for tokens, pos in levels.levels:
        assert tokens.dtype == np.int32 and pos.dtype == np.int32
        assert np.all(np.diff(pos) > 0) and pos[0] == 0 and pos[-1] == 9
        assert np.array_equal(tokens0[pos], tokens)  # every kept token is the original token at its position


def test_keep_counts_and_min_words():
    assert [text.keep_count(10, k, 3) for k in (1.0, 0.85, 0.7, 0.55, 0.4, 0.25)] == [10, 9, 7, 6, 4, 3]
    assert text.keep_count(2, 0.4, 3) == 2           # never more than the text has
    assert text.keep_count(5, 0.5, 1) == 3           # 2.5 rounds half up
    spec = build_spec(TextConfig(max_len=32), _tokenizer(), DF, 100)
    counts = [len(t) - 2 for t, _ in compress(b"the dog ate the grass quickly", spec).levels]
    assert counts == [6, 5, 4, 3, 3]                  # 6 words at keep 1, .85, .7, .55, .4 with min_words 3
    assert [len(t) for t, _ in compress(b"dog", spec).levels] == [3] * 5  # a one-word text is never emptied


def test_truncation_to_max_len_before_pruning():
    spec = _spec(max_len=8)
    levels = compress(b"the zebra ate the common grass and the dog ate the cat", spec)
    assert levels.meta["truncated"] and levels.meta["words"] == 5   # 5 words = 6 pieces + [CLS] + [SEP] = 8
    assert len(levels.levels[0][0]) == 8 and levels.levels[0][1][-1] == 7
    assert _words(levels.levels[0][0]) == "the zebra ate the common"
    assert not compress(b"the zebra", spec).meta["truncated"]


def test_levels_argument_computes_only_those():
    spec = _spec()
    all_levels = compress(SENTENCE.encode(), spec)
    some = compress(SENTENCE.encode(), spec, levels=[6, 2])
    assert [t.tolist() for t, _ in some.levels] == [all_levels.levels[6][0].tolist(), all_levels.levels[2][0].tolist()]


@pytest.mark.parametrize("payload, reason", [(b"caf\xe9 au lait", "not valid UTF-8"), (b"", "empty"),
                                             (b"  \n\t ", "whitespace only")])
def test_bad_text_is_refused_with_the_reason(payload, reason):
    with pytest.raises(ValueError, match=reason):
        compress(payload, _spec())


def test_tokenizer_is_checked_against_its_hash():
    spec = _spec()
    tampered = Spec.from_json(json.loads(json.dumps(spec.to_json())))
    tampered.tokenization["tokenizer_json"] = tampered.tokenization["tokenizer_json"].replace('"big"', '"small"')
    with pytest.raises(ValueError, match="does not match its recorded sha256"):
        compress(SENTENCE.encode(), tampered)


def test_config_errors_are_reported_together():
    errors = TextConfig(keep=[0.9, 1.0], min_words=0, max_len=2, scorer="pos", tokenizer="no/such/folder").validate()
    joined = "\n".join(errors)
    for part in ("keep[0] = 1.0", "not increase", "min_words", "max_len", "spacy_model", "text.tokenizer='no/such"):
        assert part in joined, part


def test_document_frequencies_by_hand():
    df, docs = count_texts([b"A cat. A dog!", b"the cat", b"\xff bad", b"   "])
    assert docs == 2                                   # undecodable and blank texts are not counted
    assert df == {"a": 1, "cat": 2, ".": 1, "dog": 1, "!": 1, "the": 1}


def test_corpus_tokenizer_is_a_wordpiece_of_the_training_split():
    texts = ["a cat sat on the mat", "the cat ate", "a dog"] * 3 + ["zebu"]
    tk = train_corpus_tokenizer(texts, 200, 2)
    vocab = tk.get_vocab()
    assert [vocab[s] for s in CORPUS_SPECIALS] == [0, 1, 2, 3]    # collate pads with 0 = [PAD]
    assert "cat" in vocab and "zebu" not in vocab                # seen once < min_count
    assert tk.encode("Zebu cat").tokens == ["[CLS]", "z", "##e", "##b", "##u", "cat", "[SEP]"]  # characters, no [UNK]
    again = train_corpus_tokenizer(texts, 200, 2)
    assert again.to_str() == tk.to_str()                          # deterministic: the spec's sha256 is reproducible


def test_idf_from_ray_tasks_equals_one_process(ray_local, wordnet_texts):
    payloads = wordnet_texts + [b"\xffnot utf-8", b"", b"   "]
    single = count_texts(payloads)
    distributed = count_texts_ray(payloads, texts_per_task=37)   # 9 tasks, summed in the driver
    assert distributed == single
    assert single[1] == len(wordnet_texts) and sum(single[0].values()) > len(wordnet_texts)


def test_pos_scorer_with_a_trained_pipeline(tmp_path):
    import spacy
    from spacy.training import Example

    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("morphologizer")
    data = [("the dog runs quickly", ["DET", "NOUN", "VERB", "ADV"]), ("a cat sleeps", ["DET", "NOUN", "VERB"]),
            ("dogs bark loudly", ["NOUN", "VERB", "ADV"]),
            ("the big zebra ate grass quickly .", ["DET", "ADJ", "NOUN", "VERB", "NOUN", "ADV", "PUNCT"])]
    examples = [Example.from_dict(nlp.make_doc(t), {"pos": p}) for t, p in data]
    nlp.initialize(lambda: examples)
    for _ in range(30):
        nlp.update(examples)
    nlp.to_disk(tmp_path / "tagger")
    sentence = "the big zebra ate grass quickly ."
    assert [t.pos_ for t in spacy.load(tmp_path / "tagger")(sentence)] == data[-1][1]  # it did learn

    keep = [1.0, 0.8, 0.6, 0.4]                        # 7 words: 7, 6, 4, 3 kept
    by_idf = compress(sentence.encode(), _spec(keep=keep))
    by_pos = compress(sentence.encode(), _spec(keep=keep, scorer="pos", spacy_model=str(tmp_path / "tagger")))
    # IDF alone: "quickly" (df 5) outranks "grass" (df 10) and the unseen "big"
    assert _words(by_idf.levels[3][0]) == "big zebra quickly"
    # POS first: the adverb goes before the nouns, the verb and the adjective, whatever its IDF
    assert _words(by_pos.levels[2][0]) == "big zebra ate grass" and _words(by_pos.levels[3][0]) == "big zebra grass"
    assert by_pos.meta["words"] == 7


def test_real_glosses_keep_original_positions_at_every_level(wordnet_texts):
    df, docs = count_texts(wordnet_texts)
    cfg = TextConfig(max_len=48, vocab_size=600)
    tokenizer = train_corpus_tokenizer([t.decode() for t in wordnet_texts], cfg.vocab_size, cfg.min_count)
    spec = build_spec(cfg, tokenizer, {w: n for w, n in df.items() if n >= 2}, docs)
    specials = spec.tokenization["special_ids"]
    truncated = 0
    for payload in wordnet_texts:
        levels = compress(payload, spec)
        tokens0, pos0 = levels.levels[0]
        assert pos0.tolist() == list(range(len(tokens0))) and len(tokens0) <= 48
        assert tokens0[0] == specials["[CLS]"] and tokens0[-1] == specials["[SEP]"]
        assert tokens0.tolist() == tokenizer.encode(payload.decode()).ids[: len(tokens0) - 1] + [specials["[SEP]"]]
        truncated += levels.meta["truncated"]
        n = levels.meta["words"]
        for keep, (tokens, pos) in zip(cfg.keep, levels.levels):
            assert np.all(np.diff(pos) > 0) and pos[0] == 0 and pos[-1] == pos0[-1]
            assert np.array_equal(tokens0[pos], tokens)
            assert len(tokens) <= len(tokens0)
        assert [len(t) for t, _ in levels.levels] == sorted((len(t) for t, _ in levels.levels), reverse=True)
        assert n >= 1
    assert 0 < truncated < len(wordnet_texts) // 2     # some long glosses are cut at 48 tokens, most are not
