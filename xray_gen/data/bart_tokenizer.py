"""BART's tokenizer (GPT-2's byte-level BPE) in plain Python, from the files beside BART weights.

Pretrained BART weights only understand the ids of their own vocabulary, so reports for a language
model started from them (`cxr_irgen.language.pretrained`) are tokenised here from `vocab.json` +
`merges.txt` (or a `tokenizer.json` embedding both). The steps are GPT-2's, as transformers'
`BartTokenizer` (= `RobertaTokenizer`, add_prefix_space=False) takes them:
1. no normalisation: case, accents and whitespace are kept;
2. pre-tokenisation by GPT-2's pattern `'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+|
   ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`: a piece carries the one space before it; of a whitespace
   run before a word, the last space goes with the word. `pre_tokenize` scans the same
   alternatives in the same order (Python's `re` has no \\p{..}): letters and numbers by
   `unicodedata.category`, whitespace = Unicode White_Space (what the Rust tokenizers' \\s is;
   `str.isspace` also takes U+001C-U+001F);
3. each piece's UTF-8 bytes as printable characters (`bpe.bytes_to_unicode`: a space is "Ġ"),
   merged lowest rank first (`bpe.bpe_merge`, shared with CLIP's; no end-of-word marker);
4. specials from the vocabulary: <s> (bos), </s> (eos), <pad>, <unk> (or the names in
   tokenizer_config.json / special_tokens_map.json); a piece missing from the vocabulary -> <unk>
   (real BART vocabularies hold all 256 byte characters, so this never happens with them).
Special-token strings inside the text ("<s>", "<mask>") are encoded as plain text, not as specials.

The `ReportTokenizer` API the language stage uses: `encode_flat(report, L)` -> ids int32 (L,),
mask float32 (L,) = <s> tokens </s>, truncated keeping </s> last, padded with <pad> (the report's
whitespace runs collapsed to one space first: reports carry line breaks BART's prose never had);
`decode(ids)` stops at the first </s> and is the exact inverse of `encode`; `decode_flat(ids)` is
the decoded report split into sentences; `pad_id`, `bos_id`, `eos_id`, `vocab_size`.
"""

from __future__ import annotations

import os
import unicodedata
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from xray_gen.data import reports
from xray_gen.data.bpe import ByteLevelBPE, special_token

__all__ = ["BartTokenizer", "pre_tokenize"]

_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
_CONTROL_SPACES = frozenset("\t\n\x0b\x0c\r\x85")


def _kind(ch: str) -> str:
    """space (Unicode White_Space), letter (L*), number (N*) or other."""
    category = unicodedata.category(ch)
    if ch in _CONTROL_SPACES or category in ("Zs", "Zl", "Zp"):
        return "space"
    return {"L": "letter", "N": "number"}.get(category[0], "other")


def pre_tokenize(text: str) -> List[str]:
    """GPT-2's pattern (module doc, step 2): at each position the first alternative that matches.
    The pieces concatenate back to `text`."""
    pieces, i, n = [], 0, len(text)
    while i < n:
        contraction = next((c for c in _CONTRACTIONS if text.startswith(c, i)), None)
        if contraction:
            pieces.append(contraction)
            i += len(contraction)
            continue
        start = i + 1 if text[i] == " " and i + 1 < n and _kind(text[i + 1]) != "space" else i
        kind = _kind(text[start])
        j = start + 1
        if kind != "space":  # ' ?\p{L}+', ' ?\p{N}+' or ' ?[^\s\p{L}\p{N}]+'
            while j < n and _kind(text[j]) == kind:
                j += 1
        else:
            while j < n and _kind(text[j]) == "space":
                j += 1
            if j < n and j - i > 1:  # '\s+(?!\S)': the run's last character goes with what follows
                j -= 1
        pieces.append(text[i:j])
        i = j
    return pieces


class BartTokenizer(ByteLevelBPE):
    """BART's byte-level BPE from vocab.json + merges.txt or a tokenizer.json (see the module doc)."""

    kind = "BART (GPT-2 byte-level BPE)"

    def __init__(self, path: Union[str, os.PathLike], max_length: int = 1024):
        super().__init__(path, max_length)
        token = lambda name, default: special_token(self.folder, name, default)
        self.bos_id = self._id(token("bos_token", "<s>"), "bos")
        self.eos_id = self._id(token("eos_token", "</s>"), "eos")
        self.pad_id = self._id(token("pad_token", "<pad>"), "pad")
        self.unk_id = self._id(token("unk_token", "<unk>"), "unk")
        mask = self.encoder.get(token("mask_token", "<mask>"))
        self._skipped = {self.bos_id, self.pad_id, self.unk_id} | ({mask} if mask is not None else set())

    def _pieces(self, text: str) -> List[str]:
        return ["".join(self.byte_encoder[b] for b in piece.encode("utf-8")) for piece in pre_tokenize(text)]

    def _symbols(self, piece: str) -> List[str]:
        return list(piece)

    def encode_flat(self, text: Union[str, Sequence[str]],
                    max_len: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """ids int32 (L,), mask float32 (L,): <s> report </s> padded with <pad>; `text` may be a
        list of sentences (joined by spaces); whitespace runs become one space first."""
        if not isinstance(text, str):
            text = " ".join(text)
        return super().encode_flat(" ".join(text.split()), max_len)

    def decode(self, ids) -> str:
        """Text up to the first </s>, without <s>, <pad>, <unk> and <mask>; ids outside the
        vocabulary (a model's padded embedding rows) are skipped. Invalid UTF-8 -> U+FFFD."""
        tokens = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i == self.eos_id:
                break
            if i not in self._skipped:
                tokens.append(self.decoder.get(i, ""))
        return self._bytes_text("".join(tokens))

    def decode_flat(self, ids) -> List[str]:
        """The decoded report's sentences (`reports.split_sentences`), as `ReportTokenizer.decode_flat`."""
        return reports.split_sentences(self.decode(ids))
