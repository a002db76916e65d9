"""CLIP's byte-level BPE in plain Python (xray_gen.data.bpe) on tiny hand-written vocabularies.

transformers' own tokenizer is compared in test_clip_conformance.py (skipped without it).
"""

import json
import pickle

import numpy as np
import pytest

from xray_gen.data import bpe
from xray_gen.data.bpe import CLIPTokenizer


def write_tokenizer(folder, words="chest the x ray", merges=(), extra=(), fmt="files", config=None):
    """A CLIP tokenizer folder: every character of `words` alone and with `</w>`, the `merges`
    results, `extra` tokens, then <|startoftext|> and <|endoftext|> (CLIP's order: specials last)."""
    vocab = {}
    for ch in sorted(set(words) - {" "}):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for token in (*extra, "<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(token, len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "files":
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    else:  # tokenizer.json, merges as "a b" strings (older files) or [a, b] pairs (newer)
        listed = [f"{a} {b}" for a, b in merges] if fmt == "json_strings" else [[a, b] for a, b in merges]
        (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": listed}}))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return vocab


CHEST = [("c", "h"), ("e", "s"), ("ch", "es"), ("ches", "t</w>")]


def test_merges_apply_lowest_rank_first(tmp_path):
    vocab = write_tokenizer(tmp_path, "chest chess the", CHEST + [("h", "e</w>"), ("t", "h")])
    tok = CLIPTokenizer(tmp_path)
    # chest: c h e s t</w> -> ch e s t</w> -> ch es t</w> -> ches t</w> -> chest</w>
    assert tok.tokenize("chest") == ["chest</w>"]
    assert tok.tokenize("chess") == ["ches", "s</w>"]  # no merge makes ches + s</w>
    # "h e</w>" ranks before "t h": the -> t he</w>, and "t he</w>" is no merge
    assert tok.tokenize("the") == ["t", "he</w>"]
    swapped = tmp_path / "swapped"
    write_tokenizer(swapped, "the", [("t", "h"), ("h", "e</w>"), ("th", "e</w>")])
    assert CLIPTokenizer(swapped).tokenize("the") == ["the</w>"]
    assert tok.encode("chest the") == [vocab["chest</w>"], vocab["t"], vocab["he</w>"]]


def test_unknown_characters_map_to_the_unknown_token(tmp_path):
    vocab = write_tokenizer(tmp_path, "chest", CHEST)
    tok = CLIPTokenizer(tmp_path)
    unk = vocab["<|endoftext|>"]  # CLIP's unknown token
    # é is two UTF-8 bytes -> two byte characters, neither in this vocabulary; 7 is not either
    assert tok.tokenize("é") == ["Ã", "©</w>"]
    assert tok.encode("chest é 7") == [vocab["chest</w>"], unk, unk, unk]


def test_pre_tokenisation_splits_digits_punctuation_and_contractions():
    text = bpe.clean_text("  The X-ray's 12.5cm  opacity!!'s <|endoftext|> héllo ")
    assert bpe._pre_tokenize(text) == ["the", "x", "-", "ray", "'s", "1", "2", ".", "5", "cm", "opacity", "!!'", "s",
                                       "<|endoftext|>", "héllo"]
    assert bpe.bytes_to_unicode()[ord(" ")] == "Ġ" and len(set(bpe.bytes_to_unicode().values())) == 256


def test_case_and_whitespace_are_normalised(tmp_path):
    write_tokenizer(tmp_path, "chest the", CHEST)
    tok = CLIPTokenizer(tmp_path)
    assert tok.encode("  CHEST\t\n the  ") == tok.encode("chest the")
    assert tok.encode("Che\u0301st") != tok.encode("chest")  # an accent is kept (no accent stripping)


def test_truncation_keeps_end_of_text_last_and_padding_has_a_mask(tmp_path):
    vocab = write_tokenizer(tmp_path, "chest the x ray", CHEST)
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    tok = CLIPTokenizer(tmp_path, max_length=6)
    ids, mask = tok(["x ray the chest", "x"])
    assert ids.dtype == np.int32 and mask.dtype == np.float32 and ids.shape == mask.shape == (2, 6)
    assert ids[0].tolist() == [bos, vocab["x</w>"], vocab["r"], vocab["a"], vocab["y</w>"], eos]
    assert mask[0].tolist() == [1] * 6
    assert ids[1].tolist() == [bos, vocab["x</w>"], eos, eos, eos, eos]  # CLIP pads with <|endoftext|>
    assert mask[1].tolist() == [1, 1, 1, 0, 0, 0]
    flat_ids, flat_mask = tok.encode_flat("x", 4)
    assert flat_ids.tolist() == [bos, vocab["x</w>"], eos, eos] and flat_mask.tolist() == [1, 1, 1, 0]
    empty, empty_mask = tok.encode_flat("")
    assert empty[:2].tolist() == [bos, eos] and empty_mask.sum() == 2


def test_pad_token_from_the_folder_or_the_argument(tmp_path):
    vocab = write_tokenizer(tmp_path, "x", extra=("!",), config={"pad_token": {"content": "!"}, "model_max_length": 77})
    ids, mask = CLIPTokenizer(tmp_path, max_length=5)(["x"])
    assert ids[0, 3:].tolist() == [vocab["!"]] * 2 and mask[0].tolist() == [1, 1, 1, 0, 0]  # SD-2's pad "!"
    ids, _ = CLIPTokenizer(tmp_path, max_length=5, pad_token="<|endoftext|>")(["x"])
    assert ids[0, 3:].tolist() == [vocab["<|endoftext|>"]] * 2


@pytest.mark.parametrize("fmt", ["json_strings", "json_pairs"])
def test_tokenizer_json_matches_vocab_and_merges_files(tmp_path, fmt):
    write_tokenizer(tmp_path / "files", "chest the", CHEST)
    write_tokenizer(tmp_path / "json", "chest the", CHEST, fmt=fmt)
    text = ["the chest", "Chest, the chest!"]
    expected = CLIPTokenizer(tmp_path / "files", max_length=10)(text)
    for path in (tmp_path / "json", tmp_path / "json" / "tokenizer.json"):
        got = CLIPTokenizer(path, max_length=10)(text)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])


def test_decode_pickle_and_errors(tmp_path):
    write_tokenizer(tmp_path, "chest the x ray", CHEST)
    tok = CLIPTokenizer(tmp_path, max_length=12)
    ids, _ = tok.encode_flat("The  chest X ray")
    assert tok.decode(ids) == "the chest x ray"
    again = pickle.loads(pickle.dumps(tok))  # grain workers receive it pickled
    np.testing.assert_array_equal(again.encode_flat("x ray")[0], tok.encode_flat("x ray")[0])
    assert tok.vocab_size == len(json.loads((tmp_path / "vocab.json").read_text()))

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "vocab.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="vocab.json \\+ merges.txt or tokenizer.json"):
        CLIPTokenizer(empty)
    (empty / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match="'<\\|startoftext\\|>' is not in the vocabulary"):
        CLIPTokenizer(empty)
    (empty / "merges.txt").write_text("a b c\n")
    with pytest.raises(ValueError, match="merges.txt: merge 0"):
        CLIPTokenizer(empty)
