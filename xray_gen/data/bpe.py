"""CLIP's byte-level BPE tokenizer in plain Python (no `tokenizers`/`regex` dependency).

Pretrained CLIP text encoders (OpenAI CLIP, Stable Diffusion's `text_encoder/`) only understand
the ids of their own BPE, so prompts for them are tokenised here from the files that come with
the weights: `vocab.json` + `merges.txt` (SD's `tokenizer/` folder, openai/clip-vit-* snapshots),
or a `tokenizer.json` that embeds both under `model.vocab` / `model.merges`.

The steps are transformers' `CLIPTokenizer`'s:
1. text cleaning: Unicode NFC, every whitespace run -> one space, lower case (OpenAI's reference
   also runs ftfy and html.unescape, which only change mis-encoded or HTML-escaped text);
2. pre-tokenisation by CLIP's pattern `<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|
   \\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+` (whitespace dropped). Python's `re` has no \\p{..} classes, so
   `_pre_tokenize` scans with the same alternatives in the same order and classifies characters by
   `unicodedata.category` (L* letters, N* numbers): exact up to the Unicode version of Python's
   tables;
3. each piece's UTF-8 bytes mapped to printable characters (GPT-2's byte-to-unicode table), the
   last one marked with `</w>`, then merged pair by pair, lowest merge rank first;
4. pieces missing from the vocabulary become the unknown token (CLIP's: <|endoftext|>).

`__call__(texts)` -> ids int32 (B, max_length), mask float32 (B, max_length): <|startoftext|>
pieces <|endoftext|>, truncated keeping <|endoftext|> last, padded with the pad token (CLIP's is
<|endoftext|>, SD-2's "!"; from tokenizer_config.json / special_tokens_map.json when present);
the mask is 1 on real tokens. `encode_flat(text, L)` is one row, the `ReportTokenizer` API the
data pipeline calls.

`ByteLevelBPE` (vocabulary, merge loop `bpe_merge`, byte table, row layout) is shared with BART's
GPT-2 tokenizer (`xray_gen.data.bart_tokenizer`), which differs in pre-tokenisation and decoding.
"""

from __future__ import annotations

import json
import os
import unicodedata
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["ByteLevelBPE", "CLIPTokenizer", "TOKENIZER_FILES", "bpe_merge", "bytes_to_unicode", "clean_text",
           "read_vocab_and_merges", "special_token"]

BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
_SPECIALS = (BOS_TOKEN, EOS_TOKEN)
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
END_OF_WORD = "</w>"
#: Files a tokenizer folder may hold, in order of preference.
TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))


def bytes_to_unicode() -> Dict[int, str]:
    """byte -> a printable character: printable Latin-1 bytes map to themselves, the other 68 to
    chr(256), chr(257), ... in byte order, so no piece contains whitespace or control characters."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _kind(ch: str) -> str:
    if ch.isspace():
        return "space"
    category = unicodedata.category(ch)[0]
    return {"L": "letter", "N": "number"}.get(category, "other")


def _pre_tokenize(text: str) -> List[str]:
    """CLIP's pattern (module doc, step 2): at each position the first alternative that matches."""
    pieces, i, n = [], 0, len(text)
    while i < n:
        special = next((s for s in _SPECIALS + _CONTRACTIONS if text.startswith(s, i)), None)
        if special:
            pieces.append(special)
            i += len(special)
            continue
        kind = _kind(text[i])
        j = i + 1
        if kind in ("letter", "other", "space"):  # a number is one character
            while j < n and _kind(text[j]) == kind:
                j += 1
        if kind != "space":
            pieces.append(text[i:j])
        i = j
    return pieces


def clean_text(text: str) -> str:
    """NFC, whitespace runs -> one space, stripped, lower case (module doc, step 1)."""
    return " ".join(unicodedata.normalize("NFC", text).split()).lower()


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from e


def _parse_merges(lines, source: str) -> List[Tuple[str, str]]:
    merges = []
    for k, line in enumerate(lines):
        if isinstance(line, str):
            if line.startswith("#version") or not line.strip():
                continue
            line = line.split()
        if len(line) != 2:
            raise ValueError(f"{source}: merge {k} is {line!r}, expected two pieces")
        merges.append((line[0], line[1]))
    return merges


def read_vocab_and_merges(path: Union[str, os.PathLike]) -> Tuple[Dict[str, int], List[Tuple[str, str]], str]:
    """(vocab, merges, description) from a folder (vocab.json + merges.txt, else tokenizer.json)
    or a tokenizer.json file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        vocab_file, merges_file = (os.path.join(path, f) for f in TOKENIZER_FILES[0])
        if os.path.exists(vocab_file) and os.path.exists(merges_file):
            with open(merges_file, encoding="utf-8") as f:
                merges = _parse_merges(f.read().split("\n"), merges_file)
            return _read_json(vocab_file), merges, vocab_file
        json_file = os.path.join(path, TOKENIZER_FILES[1][0])
        if not os.path.exists(json_file):
            raise FileNotFoundError(f"{path}: no vocab.json + merges.txt or tokenizer.json "
                                    f"(found {sorted(os.listdir(path))}); a BPE tokenizer needs them")
        path = json_file
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such tokenizer file or folder")
    model = _read_json(path).get("model") or {}
    if model.get("type", "BPE") != "BPE" or "vocab" not in model or "merges" not in model:
        raise ValueError(f"{path}: no BPE model with 'model.vocab' and 'model.merges'")
    return dict(model["vocab"]), _parse_merges(model["merges"], path), path


def special_token(folder: Optional[str], name: str, default: str) -> str:
    """A special token from tokenizer_config.json or special_tokens_map.json beside the vocabulary."""
    for file in ("tokenizer_config.json", "special_tokens_map.json"):
        path = os.path.join(folder, file) if folder else ""
        if path and os.path.exists(path):
            value = _read_json(path).get(name)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                return value
    return default


def bpe_merge(symbols: Sequence[str], ranks: Mapping[Tuple[str, str], int]) -> Tuple[str, ...]:
    """BPE on one piece: repeatedly merge the adjacent pair of lowest rank (every occurrence, left
    to right) until no adjacent pair is a merge. CLIP's and GPT-2's reference loop."""
    word = list(symbols)
    while len(word) > 1:
        best = min(zip(word, word[1:]), key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(word):
            if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                merged.append(word[i] + word[i + 1])
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = merged
    return tuple(word)


class ByteLevelBPE:
    """What CLIP's and GPT-2/BART's byte-level BPEs share: the vocabulary and merge ranks, the
    byte table, the cached merge loop, unknown pieces -> the unknown id, and rows
    `bos pieces eos` padded with the pad id. Subclasses give the pre-tokenisation (`_pieces`: the
    text's pieces as byte characters, `specials` kept whole), a piece's first symbols
    (`_symbols`), the special tokens and `decode`. Picklable (grain workers hold one)."""

    kind = "BPE"
    specials: Tuple[str, ...] = ()

    def __init__(self, path: Union[str, os.PathLike], max_length: int):
        vocab, merges, self.source = read_vocab_and_merges(path)
        self.folder = os.fspath(path) if os.path.isdir(path) else os.path.dirname(os.fspath(path))
        self.encoder = {str(k): int(v) for k, v in vocab.items()}
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.max_length = int(max_length)
        if self.max_length < 2:
            raise ValueError(f"{type(self).__name__} max_length={max_length} leaves no room for the start and end "
                             "tokens")
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self._cache: Dict[str, Tuple[str, ...]] = {}

    def _id(self, token: str, role: str) -> int:
        if token not in self.encoder:
            raise ValueError(f"{self.source}: the {role} token {token!r} is not in the vocabulary; "
                             f"is this a {self.kind} tokenizer?")
        return self.encoder[token]

    def _pieces(self, text: str) -> List[str]:
        raise NotImplementedError

    def _symbols(self, piece: str) -> List[str]:
        raise NotImplementedError

    def _bytes_text(self, chars: str) -> str:
        """Byte characters -> text (invalid UTF-8 becomes U+FFFD, as transformers decodes)."""
        return bytes(self.byte_decoder[c] for c in chars if c in self.byte_decoder).decode("utf-8", errors="replace")

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def bpe(self, piece: str) -> Tuple[str, ...]:
        """One pre-tokenised piece (byte characters) -> its BPE tokens."""
        if piece in self.specials:
            return (piece,)
        if piece not in self._cache:
            self._cache[piece] = bpe_merge(self._symbols(piece), self.ranks)
        return self._cache[piece]

    def tokenize(self, text: str) -> List[str]:
        """The BPE tokens of `text` (no start/end tokens added)."""
        return [token for piece in self._pieces(text) for token in self.bpe(piece)]

    def encode(self, text: str) -> List[int]:
        """Token ids of `text` without start/end tokens; unknown tokens -> the unknown id."""
        return [self.encoder.get(t, self.unk_id) for t in self.tokenize(text)]

    def encode_flat(self, text: str, max_len: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """ids int32 (L,), mask float32 (L,): bos tokens eos, truncated keeping eos last, padded
        with the pad id (mask 0); L = `max_len` or `max_length`."""
        n = int(max_len or self.max_length)
        if n < 2:
            raise ValueError(f"{type(self).__name__}: length {n} leaves no room for the start and end tokens")
        row = [self.bos_id] + self.encode(text)[: n - 2] + [self.eos_id]
        ids = np.full((n,), self.pad_id, np.int32)
        mask = np.zeros((n,), np.float32)
        ids[: len(row)], mask[: len(row)] = row, 1.0
        return ids, mask

    def __call__(self, texts: Union[str, Sequence[str]]) -> Tuple[np.ndarray, np.ndarray]:
        """ids int32 (B, max_length), mask float32 (B, max_length) (see `encode_flat`)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        rows = [self.encode_flat(t) for t in texts]
        if not rows:
            return np.zeros((0, self.max_length), np.int32), np.zeros((0, self.max_length), np.float32)
        return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, vocab_size={self.vocab_size}, max_length={self.max_length})"


class CLIPTokenizer(ByteLevelBPE):
    """CLIP's BPE from vocab.json + merges.txt or a tokenizer.json (see the module doc).

    `pad_token` None: the folder's (tokenizer_config.json / special_tokens_map.json), else
    <|endoftext|>.
    """

    kind = "CLIP"
    specials = _SPECIALS

    def __init__(self, path: Union[str, os.PathLike], max_length: int = 77, pad_token: Optional[str] = None):
        super().__init__(path, max_length)
        self.bos_id, self.eos_id = self._id(BOS_TOKEN, "bos"), self._id(EOS_TOKEN, "eos")
        self.unk_id = self._id(special_token(self.folder, "unk_token", EOS_TOKEN), "unk")
        self.pad_id = self._id(pad_token or special_token(self.folder, "pad_token", EOS_TOKEN), "pad")

    def _pieces(self, text: str) -> List[str]:
        """Cleaned and pre-tokenised (module doc, steps 1-2), each piece as byte characters."""
        return [p if p in _SPECIALS else "".join(self.byte_encoder[b] for b in p.encode("utf-8"))
                for p in _pre_tokenize(clean_text(text))]

    def _symbols(self, piece: str) -> List[str]:
        return list(piece[:-1]) + [piece[-1] + END_OF_WORD]  # the last symbol ends the word

    def decode(self, ids) -> str:
        """Text of `ids` without the special and pad tokens; words rejoined by single spaces (the
        cleaning in `tokenize` is not undone)."""
        specials = {self.bos_id, self.eos_id, self.pad_id}
        tokens = "".join(self.decoder.get(int(i), "") for i in ids if int(i) not in specials)
        return " ".join(w for w in (self._bytes_text(w) for w in tokens.split(END_OF_WORD)) if w)
