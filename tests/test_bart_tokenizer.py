"""BART's GPT-2 byte-level BPE in plain Python (xray_gen.data.bart_tokenizer) on tiny hand-written
vocabularies. transformers' own BartTokenizer is compared in test_bart_conformance.py (skipped
without it)."""

import json
import pickle

import numpy as np
import pytest

from xray_gen.data import bart_tokenizer, bpe
from xray_gen.data.bart_tokenizer import BartTokenizer

#: " chest" -> Ġchest; "chest" -> c he st; " ray" -> Ġ ray; " x" -> Ġx
CHEST = [("Ġ", "c"), ("h", "e"), ("Ġc", "he"), ("s", "t"), ("Ġche", "st"), ("r", "a"), ("ra", "y"), ("Ġ", "x")]


def write_bart_tokenizer(folder, merges=CHEST, chars=None, config=None, fmt="files"):
    """A BART tokenizer folder, laid out as facebook/bart-*'s: <s>=0 <pad>=1 </s>=2 <unk>=3, the
    byte characters (all 256, or those of `chars`' UTF-8 bytes), the merge results, <mask> last."""
    table = bpe.bytes_to_unicode()
    symbols = table.values() if chars is None else [table[b] for b in sorted(set(chars.encode("utf-8")))]
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for token in [*symbols, *(a + b for a, b in merges), "<mask>"]:
        vocab.setdefault(token, len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "files":
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    else:
        (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab,
                                                                     "merges": [[a, b] for a, b in merges]}}))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return vocab


def test_merges_lowest_rank_first_with_the_space_marker(tmp_path):
    vocab = write_bart_tokenizer(tmp_path)
    tok = BartTokenizer(tmp_path)
    assert tok.tokenize("chest x ray") == ["c", "he", "st", "Ġx", "Ġ", "ray"]
    assert tok.tokenize(" chest") == ["Ġchest"]  # the space before a word is part of it
    assert tok.tokenize("Chest") == ["C", "he", "st"]  # no lower-casing
    assert tok.encode("a chest") == [vocab["a"], vocab["Ġchest"]]
    swapped = tmp_path / "swapped"
    write_bart_tokenizer(swapped, [("t", "h"), ("h", "e"), ("th", "e")])
    assert BartTokenizer(swapped).tokenize("the") == ["the"]
    write_bart_tokenizer(tmp_path / "he_first", [("h", "e"), ("t", "h"), ("th", "e")])
    assert BartTokenizer(tmp_path / "he_first").tokenize("the") == ["t", "he"]  # "t he" is no merge


def test_pre_tokenisation_is_gpt2s_pattern():
    pre = bart_tokenizer.pre_tokenize
    text = "  The X-ray's 12.5cm  opacity!!'s \u00e9t\u00e9 \u00bd\n\nNext\tline "
    pieces = pre(text)
    assert "".join(pieces) == text
    assert pieces == [" ", " The", " X", "-", "ray", "'s", " 12", ".", "5", "cm", " ", " opacity", "!!'", "s",
                      " \u00e9t\u00e9", " \u00bd", "\n", "\n", "Next", "\t", "line", " "]
    assert pre("it's 'S") == ["it", "'s", " '", "S"]  # contractions are lower case only
    assert pre("a\u3000b \u00a0c") == ["a", "\u3000", "b", " ", "\u00a0", "c"]  # Unicode spaces
    assert pre("a\x1cb") == ["a", "\x1c", "b"]  # not White_Space (str.isspace says it is)


def test_encode_flat_layout_truncation_and_whitespace(tmp_path):
    vocab = write_bart_tokenizer(tmp_path)
    tok = BartTokenizer(tmp_path, max_length=6)
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    ids, mask = tok.encode_flat("x ray", 6)
    assert ids.dtype == np.int32 and mask.dtype == np.float32
    assert ids.tolist() == [0, vocab["x"], vocab["Ġ"], vocab["ray"], 2, 1] and mask.tolist() == [1, 1, 1, 1, 1, 0]
    ids, mask = tok.encode_flat("x ray chest", 4)
    assert ids.tolist() == [0, vocab["x"], vocab["Ġ"], 2] and mask.all()  # </s> kept last
    np.testing.assert_array_equal(tok.encode_flat("  x\n ray ")[0], tok.encode_flat("x ray")[0])
    np.testing.assert_array_equal(tok.encode_flat(["x", "ray"])[0], tok.encode_flat("x ray")[0])  # sentences
    empty, empty_mask = tok.encode_flat("")
    assert empty.tolist() == [0, 2, 1, 1, 1, 1] and empty_mask.sum() == 2
    batch, batch_mask = tok(["x", "x ray"])
    assert batch.shape == batch_mask.shape == (2, 6)
    with pytest.raises(ValueError, match="no room"):
        tok.encode_flat("x", 1)


def test_decode_is_the_inverse_and_stops_at_the_end(tmp_path):
    vocab = write_bart_tokenizer(tmp_path)
    tok = BartTokenizer(tmp_path)
    text = "Heart size: normal. No effusion, caf\u00e9 12.5 cm!\n  Stable."
    assert tok.decode(tok.encode(text)) == text  # byte-level: lossless, case and spaces kept
    ids, _ = tok.encode_flat("The heart is normal. No effusion.", 64)
    assert tok.decode(ids) == "The heart is normal. No effusion."
    assert tok.decode_flat(ids) == ["The heart is normal.", "No effusion."]
    tail = [vocab["x"], 2, vocab["ray"], 1]
    assert tok.decode([0, vocab["Ġchest"], 3, vocab["<mask>"], len(vocab) + 5] + tail) == " chestx"  # stops at </s>
    assert tok.decode([vocab["Ã"]]) == "\ufffd"  # half of a UTF-8 sequence


def test_unknown_pieces_special_names_pickle_and_tokenizer_json(tmp_path):
    vocab = write_bart_tokenizer(tmp_path / "small", chars="chest xray")
    tok = BartTokenizer(tmp_path / "small")
    assert tok.encode("chest \u00e9") == [vocab["c"], vocab["he"], vocab["st"], vocab["Ġ"], 3, 3]  # é: 2 bytes
    again = pickle.loads(pickle.dumps(tok))  # grain workers receive it pickled
    np.testing.assert_array_equal(again.encode_flat("x ray", 8)[0], tok.encode_flat("x ray", 8)[0])
    assert tok.vocab_size == len(vocab)

    write_bart_tokenizer(tmp_path / "files")
    write_bart_tokenizer(tmp_path / "json", fmt="json")
    texts = ["a chest x ray", "Chest, the chest!"]
    np.testing.assert_array_equal(BartTokenizer(tmp_path / "json", 12)(texts)[0],
                                  BartTokenizer(tmp_path / "files", 12)(texts)[0])

    named = tmp_path / "named"
    vocab = write_bart_tokenizer(named, config={"pad_token": {"content": "<mask>"}, "bos_token": "<s>"})
    assert BartTokenizer(named).pad_id == vocab["<mask>"]


def test_errors_name_the_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="vocab.json \\+ merges.txt or tokenizer.json"):
        BartTokenizer(empty)
    (empty / "vocab.json").write_text(json.dumps({"a": 0}))
    (empty / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match="vocab.json: the bos token '<s>' is not in the vocabulary; is this a BART"):
        BartTokenizer(empty)
