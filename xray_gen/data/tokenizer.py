"""SentencePiece tokenizer for radiology reports, with hierarchical (sentence x word) encoding.

Training data: `ReportTokenizer.train` and `train_on_studies` train on whatever they are given.
**The caller must pass training-split texts / studies only**; fitting the vocabulary on validation
or test reports leaks them into the model.

The model is trained in memory on cleaned sentences (`reports.clean_sentence`), deterministically
(one thread, no input sampling or shuffling, fixed seed), and stored as the plain SentencePiece
model proto (`save`/`load`; no pickle). Special ids are fixed: PAD=0, UNK=1, BOS=2, EOS=3.

Encodings:

* `encode(sentence)` -> piece ids of the cleaned sentence (no BOS/EOS);
* `encode_hierarchical(report, S, W)` -> ``ids`` int32 (S, W) and ``mask`` float32 (S, W): one row
  per sentence = tokens + EOS, truncated keeping EOS last, padded with PAD; sentence mask is
  ``mask.any(-1)``;
* `encode_flat(report, L)` -> ``ids`` int32 (L,), ``mask`` float32 (L,): BOS + sentences joined by
  " . " + EOS, truncated keeping EOS last.
"""

from __future__ import annotations

import io
import os
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from xray_gen.data import reports

__all__ = ["ReportTokenizer", "train_on_studies", "SENTENCE_SEPARATOR"]

#: What joins sentences in flat encodings.
SENTENCE_SEPARATOR = " . "

_MODEL_TYPES = ("unigram", "bpe", "word", "char")


class ReportTokenizer:
    """A SentencePiece model for cleaned report sentences plus hierarchical/flat encoders."""

    PAD, UNK, BOS, EOS = 0, 1, 2, 3

    def __init__(self, model_proto: bytes, name: str = "<memory>"):
        self._proto = bytes(model_proto)
        self._name = name
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        except Exception as e:  # sentencepiece raises RuntimeError / OSError on bad protos
            raise ValueError(f"{name}: not a valid SentencePiece model ({e})") from e
        specials = (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if specials != (self.PAD, self.UNK, self.BOS, self.EOS):
            raise ValueError(
                f"{name}: special ids (pad, unk, bos, eos) are {specials}, expected "
                f"{(self.PAD, self.UNK, self.BOS, self.EOS)}; was it trained by ReportTokenizer.train?"
            )

    # ---------------------------------------------------------------------------------- training
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 1000,
        model_type: str = "unigram",
        *,
        clean: bool = True,
        seed: int = 0,
        character_coverage: float = 1.0,
    ) -> "ReportTokenizer":
        """Train on an iterable of sentences (training split only; see module docstring).

        With ``clean=True`` each text is passed through `reports.clean_sentence` (texts are
        expected to be single sentences, e.g. from `reports.report_sentences`; pass whole reports
        through `split_sentences` first). ``vocab_size`` is a soft limit (``hard_vocab_limit=False``)
        so tiny corpora train to a smaller vocabulary instead of failing. Digits and "." are always
        in the vocabulary and numbers are split into digits, so unseen measurements never map to
        UNK. Raises ValueError for an empty corpus or an impossible configuration.
        """
        if model_type not in _MODEL_TYPES:
            raise ValueError(f"model_type must be one of {_MODEL_TYPES}, got {model_type!r}")
        sentences = []
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"training texts must be str, got {type(t).__name__}")
            t = reports.clean_sentence(t) if clean else " ".join(t.split())
            if t:
                sentences.append(t)
        if not sentences:
            raise ValueError("cannot train a ReportTokenizer on an empty corpus (no non-empty sentences)")
        writer = io.BytesIO()
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences),
                model_writer=writer,
                model_type=model_type,
                vocab_size=int(vocab_size),
                hard_vocab_limit=False,
                pad_id=cls.PAD,
                unk_id=cls.UNK,
                bos_id=cls.BOS,
                eos_id=cls.EOS,
                unk_surface="<unk>",
                user_defined_symbols=[reports.DEID_TOKEN],
                required_chars="0123456789.",
                split_digits=True,
                character_coverage=character_coverage,
                normalization_rule_name="identity",  # clean_sentence already normalised
                # determinism: every sentence, in order, one thread
                input_sentence_size=0,
                shuffle_input_sentence=False,
                num_threads=1,
                minloglevel=2,
            )
        except RuntimeError as e:
            raise ValueError(
                f"SentencePiece training failed for vocab_size={vocab_size}, model_type={model_type!r} "
                f"on {len(sentences)} sentences: {e}"
            ) from e
        return cls(writer.getvalue())

    # ------------------------------------------------------------------------------ persistence
    @property
    def model_proto(self) -> bytes:
        """The serialized SentencePiece model (what `save` writes)."""
        return self._proto

    def save(self, path: str | os.PathLike) -> None:
        """Write the SentencePiece model proto bytes to ``path`` (parent dirs created)."""
        path = os.fspath(path)
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(path, "wb") as f:
            f.write(self._proto)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ReportTokenizer":
        """Read a model written by `save`; errors name the file."""
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"tokenizer model file not found: {path}") from None
        except OSError as e:
            raise OSError(f"cannot read tokenizer model file {path}: {e}") from e
        if not data:
            raise ValueError(f"{path}: tokenizer model file is empty")
        return cls(data, name=path)

    # Make the tokenizer transportable to pipeline worker processes (state = model proto bytes).
    def __getstate__(self):
        return {"proto": self._proto, "name": self._name}

    def __setstate__(self, state):
        self.__init__(state["proto"], state["name"])

    def __repr__(self) -> str:
        return f"ReportTokenizer(vocab_size={self.vocab_size}, source={self._name!r})"

    # ------------------------------------------------------------------------------- vocabulary
    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def piece_to_id(self, piece: str) -> int:
        return int(self._sp.piece_to_id(piece))

    # ------------------------------------------------------------------------------- sentences
    def encode(self, sentence: str, *, clean: bool = True, add_eos: bool = False) -> list[int]:
        """Piece ids of one sentence (cleaned first unless ``clean=False``); unknown -> UNK."""
        text = reports.clean_sentence(sentence) if clean else sentence
        ids = list(self._sp.encode(text, out_type=int)) if text else []
        if add_eos:
            ids.append(self.EOS)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``: stops at the first EOS, skips PAD and BOS."""
        keep = []
        for i in np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1):
            i = int(i)
            if i == self.EOS:
                break
            if i in (self.PAD, self.BOS):
                continue
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} out of range for vocabulary of size {self.vocab_size}")
            keep.append(i)
        return self._sp.decode(keep).strip() if keep else ""

    # ----------------------------------------------------------------------------- hierarchical
    def _sentences(self, text_or_sentences: str | Sequence[str]) -> list[str]:
        if isinstance(text_or_sentences, str):
            raw = reports.split_sentences(text_or_sentences)
        else:
            raw = list(text_or_sentences)
        return [c for c in (reports.clean_sentence(s) for s in raw) if c]

    def encode_hierarchical(
        self, text_or_sentences: str | Sequence[str], max_sentences: int, max_words: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32 (max_sentences, max_words), mask float32 (max_sentences, max_words)).

        A str is split with `reports.split_sentences`; a sequence is taken as sentences as-is.
        Each sentence is cleaned and encoded as tokens + EOS; if longer than ``max_words`` it is cut
        to ``max_words - 1`` tokens + EOS. Sentences past ``max_sentences`` are dropped; empty rows
        are PAD with mask 0. ``mask`` is 1 exactly on real tokens (EOS included).
        """
        if max_sentences < 1 or max_words < 1:
            raise ValueError(f"need max_sentences >= 1 and max_words >= 1, got {max_sentences}, {max_words}")
        ids = np.full((max_sentences, max_words), self.PAD, np.int32)
        mask = np.zeros((max_sentences, max_words), np.float32)
        for row, sentence in enumerate(self._sentences(text_or_sentences)[:max_sentences]):
            toks = self.encode(sentence, clean=False)[: max_words - 1] + [self.EOS]
            ids[row, : len(toks)] = toks
            mask[row, : len(toks)] = 1.0
        return ids, mask

    def decode_hierarchical(self, ids, mask=None) -> list[str]:
        """Sentences from (S, W) ids; rows with no unmasked token, or decoding to "", are skipped."""
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"expected ids of shape (sentences, words), got {ids.shape}")
        if mask is not None:
            mask = np.asarray(mask).astype(bool)
            if mask.shape != ids.shape:
                raise ValueError(f"mask shape {mask.shape} != ids shape {ids.shape}")
            ids = np.where(mask, ids, self.PAD)
        out = []
        for row in ids:
            text = self.decode(row)
            if text:
                out.append(text)
        return out

    # ------------------------------------------------------------------------------------- flat
    def encode_flat(self, text: str | Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32 (max_len,), mask float32 (max_len,)): BOS, sentences joined by " . ", EOS.

        Truncation keeps BOS first and EOS last; PAD after EOS has mask 0.
        """
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 (BOS and EOS), got {max_len}")
        joined = SENTENCE_SEPARATOR.join(self._sentences(text))
        body = list(self._sp.encode(joined, out_type=int)) if joined else []
        toks = [self.BOS] + body[: max_len - 2] + [self.EOS]
        ids = np.full((max_len,), self.PAD, np.int32)
        mask = np.zeros((max_len,), np.float32)
        ids[: len(toks)] = toks
        mask[: len(toks)] = 1.0
        return ids, mask

    def decode_flat(self, ids) -> list[str]:
        """Sentences from a flat encoding (inverse of `encode_flat` up to truncation)."""
        text = self.decode(ids)
        return [s.strip() for s in f" {text} ".split(SENTENCE_SEPARATOR) if s.strip()]


def train_on_studies(studies: Iterable, vocab_size: int = 1000, model_type: str = "unigram", **kwargs) -> ReportTokenizer:
    """Train on the cleaned findings + impression sentences of ``studies``.

    The caller is responsible for passing **training-split** `Study` objects only.
    """
    sentences: list[str] = []
    for study in studies:
        findings, impression = reports.report_sentences(study.findings, study.impression)
        sentences.extend(findings)
        sentences.extend(impression)
    if not sentences:
        raise ValueError("train_on_studies: the studies have no report sentences to train on")
    # Already cleaned; cleaning again is idempotent but wasteful.
    return ReportTokenizer.train(sentences, vocab_size=vocab_size, model_type=model_type, clean=False, **kwargs)
