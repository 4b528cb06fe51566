"""Tiny Hugging Face model folders for tests, written by transformers itself (random init, seeded): RoBERTa,
DistilBERT and a rotary RoFormer, each with its tokenizer, as ``save_pretrained`` leaves a real model."""

from __future__ import annotations

from pathlib import Path

TEXTS = ["The zebra ate the common grass.", "Don't stop the quick brown fox!", "A dog ran  quickly over the hill.",
         "the cat sat on the mat", "Colourless green ideas sleep furiously."] * 4
WORDS = sorted({w.strip(".!,'").lower() for t in TEXTS for w in t.split()} - {""})


def _bpe_tokenizer(folder: Path) -> int:
    """A byte-level BPE (RoBERTa's kind) trained on TEXTS, saved by RobertaTokenizer; returns its vocabulary size."""
    from tokenizers.implementations import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    raw = folder / "raw"
    raw.mkdir(parents=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    bpe.save_model(str(raw))
    tok = RobertaTokenizer.from_pretrained(str(raw))
    tok.save_pretrained(str(folder))
    return len(tok)


def _wordpiece_tokenizer(folder: Path) -> int:
    """A BERT WordPiece over WORDS (and their characters), saved by BertTokenizer; returns its vocabulary size."""
    from transformers import BertTokenizer

    chars = sorted({c for w in WORDS for c in w} | set(".!,'"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars), *WORDS]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tok = BertTokenizer.from_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return len(tok)


def roberta_folder(root: Path, max_positions: int = 40) -> Path:
    """Tiny RoBERTa (table rows start at padding_idx + 1 = 2) with its BPE tokenizer."""
    import torch
    from transformers import RobertaConfig, RobertaModel

    folder = root / "tiny-roberta"
    vocab = _bpe_tokenizer(folder)
    torch.manual_seed(0)
    RobertaModel(RobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=max_positions, pad_token_id=1)
                 ).save_pretrained(str(folder))
    return folder


def distilbert_folder(root: Path) -> Path:
    """Tiny DistilBERT (table rows from 0) with a WordPiece tokenizer."""
    import torch
    from transformers import DistilBertConfig, DistilBertModel

    folder = root / "tiny-distilbert"
    vocab = _wordpiece_tokenizer(folder)
    torch.manual_seed(0)
    DistilBertModel(DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                     max_position_embeddings=64)).save_pretrained(str(folder))
    return folder


def roformer_folder(root: Path) -> Path:
    """Tiny RoFormer: rotary positions, no position table (must be refused)."""
    import torch
    from transformers import RoFormerConfig, RoFormerModel

    folder = root / "tiny-roformer"
    vocab = _wordpiece_tokenizer(folder)
    torch.manual_seed(0)
    RoFormerModel(RoFormerConfig(vocab_size=vocab, hidden_size=32, embedding_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64)).save_pretrained(str(folder))
    return folder
