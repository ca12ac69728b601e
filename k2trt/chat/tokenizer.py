"""K2's tokenizer on tiktoken: ``tiktoken.model`` + ``tokenizer_config.json`` from a model directory.

Two encoders on purpose (kimi_formats.md §3.1): K2's own ``encode`` turns a literal ``<|im_end|>`` in user text into
the control token, which lets a user forge turns. Here ``encode`` always treats text as text, and only
``encode_with_specials`` — used for the markers the chat template itself writes — maps marker strings to their ids.

The vocabulary file is parsed directly (``vocab.load_ranks``, beside the writer of the same format) rather than
through ``tiktoken.load.load_tiktoken_bpe``, whose cache keys local files by *path*, so a different file at a reused
path would silently load stale ranks.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from k2trt.chat import vocab

# tiktoken's regex backtracks badly on very long runs of one character class (tiktoken issue #195); K2's
# tokenizer cuts runs at 25,000 characters, and so do we, so long inputs tokenise exactly as K2's does.
_MAX_RUN = 25_000
_MAX_CHUNK = 400_000
_LONG_RUN = re.compile(r"\s{%d,}|\S{%d,}" % (_MAX_RUN + 1, _MAX_RUN + 1))


class K2Tokenizer:
    """K2's BPE with its 256 reserved special tokens.

    Example:
        >>> tok = K2Tokenizer.from_dir("/models/Kimi-K2-Instruct")  # doctest: +SKIP
        >>> tok.encode("<|im_end|>") != [tok.im_end_id]              # doctest: +SKIP
        True
    """

    def __init__(self, ranks: dict[bytes, int], specials: dict[str, int], *,
                 model_max_length: int = vocab.DEFAULT_MODEL_MAX_LENGTH, name: str = "k2") -> None:
        import tiktoken

        self.n_ranks = len(ranks)
        self.max_token_bytes = max((len(b) for b in ranks), default=1)
        """UTF-8 bytes of the longest ordinary token: text of N bytes encodes to at least N / this many tokens."""
        self.special_tokens = dict(specials)
        self.model_max_length = model_max_length
        self._enc = tiktoken.Encoding(name, pat_str=vocab.PAT_STR, mergeable_ranks=ranks,
                                      special_tokens=self.special_tokens)
        self._special_set = frozenset(self.special_tokens)
        self._id_to_special = {i: t for t, i in self.special_tokens.items()}

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "K2Tokenizer":
        """Load ``tiktoken.model`` and ``tokenizer_config.json`` (real K2 or the tiny one).

        The special-token table follows K2's class: ids ``n_ranks … n_ranks+255`` take their names from
        ``added_tokens_decoder`` and are ``<|reserved_token_{id}|>`` otherwise.

        Raises:
            CheckpointError: a file is missing or malformed.
        """
        d = Path(model_dir)
        ranks, specials, mml = vocab.read_tokenizer_files(d)
        return cls(ranks, specials, model_max_length=mml, name=d.name or "k2")

    # --- ids -----------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """BPE ranks + 256 reserved ids (163,840 for K2)."""
        return self.n_ranks + vocab.NUM_RESERVED

    def token_id(self, token: str) -> int:
        """The id of a special token string such as ``"<|im_end|>"``."""
        try:
            return self.special_tokens[token]
        except KeyError:
            raise KeyError(f"{token!r} is not a special token of this tokenizer") from None

    @property
    def bos_id(self) -> int:
        return self.special_tokens[vocab.BOS]

    @property
    def eos_id(self) -> int:
        return self.special_tokens[vocab.EOS]

    @property
    def im_end_id(self) -> int:
        return self.special_tokens[vocab.IM_END]

    @property
    def pad_id(self) -> int:
        return self.special_tokens[vocab.PAD]

    @property
    def section_begin_id(self) -> int:
        return self.special_tokens[vocab.SECTION_BEGIN]

    @property
    def section_end_id(self) -> int:
        return self.special_tokens[vocab.SECTION_END]

    @property
    def call_begin_id(self) -> int:
        return self.special_tokens[vocab.CALL_BEGIN]

    @property
    def arg_begin_id(self) -> int:
        return self.special_tokens[vocab.ARG_BEGIN]

    @property
    def call_end_id(self) -> int:
        return self.special_tokens[vocab.CALL_END]

    @property
    def stop_ids(self) -> tuple[int, int]:
        """Stop on ``<|im_end|>`` (ends every turn) and ``[EOS]`` (config.json's eos), kimi_formats.md §1.4."""
        return (self.im_end_id, self.eos_id)

    def is_special(self, token_id: int) -> bool:
        """Whether ``token_id`` lies in the reserved range (a control or reserved token)."""
        return token_id >= self.n_ranks

    # --- encode / decode -----------------------------------------------------------------------------------
    def _chunks(self, text: str) -> Iterator[str]:
        for start in range(0, len(text), _MAX_CHUNK):
            chunk = text[start:start + _MAX_CHUNK]
            if _LONG_RUN.search(chunk) is None:
                yield chunk
            else:
                yield from _split_long_runs(chunk)

    def encode(self, text: str) -> list[int]:
        """Encode ``text`` as plain text: control strings like ``<|im_end|>`` become ordinary BPE pieces."""
        out: list[int] = []
        for chunk in self._chunks(text):
            out += self._enc.encode(chunk, allowed_special=set(), disallowed_special=())
        return out

    def encode_with_specials(self, text: str) -> list[int]:
        """Encode ``text`` mapping every special-token string to its id (for template-written markers only)."""
        out: list[int] = []
        for chunk in self._chunks(text):
            out += self._enc.encode(chunk, allowed_special=self._special_set, disallowed_special=())
        return out

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` for several texts."""
        return [self.encode(t) for t in texts]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of ``ids``; special tokens decode to their strings."""
        return self._enc.decode_bytes(list(ids))

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Decode ``ids`` to text (invalid UTF-8 becomes U+FFFD).

        With ``skip_special_tokens`` the ids flagged special in K2's config are dropped; the tool-call markers are
        flagged ``special: false`` and stay, as in K2's tokenizer.
        """
        ids = list(ids)
        if skip_special_tokens:
            skip = self._skippable()
            ids = [i for i in ids if i not in skip]
        return self._enc.decode(ids, errors="replace")

    def _skippable(self) -> frozenset[int]:
        keep = {vocab.SECTION_BEGIN, vocab.SECTION_END, vocab.CALL_BEGIN, vocab.ARG_BEGIN, vocab.CALL_END}
        return frozenset(i for t, i in self.special_tokens.items() if t not in keep)

    def id_to_piece(self, token_id: int) -> bytes:
        """The bytes of one token."""
        return self._enc.decode_single_token_bytes(token_id)

    def incremental_decoder(self, *, skip_special_tokens: bool = False) -> "IncrementalDecoder":
        """A fresh ``IncrementalDecoder`` for one output stream."""
        return IncrementalDecoder(self, skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return f"K2Tokenizer(n_ranks={self.n_ranks}, vocab_size={self.vocab_size})"


class IncrementalDecoder:
    """Decodes a token stream chunk by chunk without ever splitting a UTF-8 character across chunks.

    Bytes of an incomplete character are held until the token that completes them arrives; ``flush`` ends the
    stream (an incomplete trailing character becomes U+FFFD). Work is linear in the number of tokens.

    Example:
        >>> dec = tok.incremental_decoder()    # doctest: +SKIP
        >>> "".join(dec.feed([i]) for i in ids) + dec.flush() == tok.decode(ids)  # doctest: +SKIP
        True
    """

    def __init__(self, tokenizer: K2Tokenizer, *, skip_special_tokens: bool = False) -> None:
        self._tok = tokenizer
        self._skip = tokenizer._skippable() if skip_special_tokens else frozenset()
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, ids: Iterable[int]) -> str:
        """Add ``ids``; return the text now complete (possibly ``""``)."""
        ids = [i for i in ids if i not in self._skip] if self._skip else list(ids)
        return self._utf8.decode(self._tok.decode_bytes(ids)) if ids else ""

    def flush(self) -> str:
        """End of stream: return whatever is held (an incomplete character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)


def _split_long_runs(s: str) -> Iterator[str]:
    """Cut ``s`` so that no run of whitespace or of non-whitespace exceeds ``_MAX_RUN`` characters (K2's rule)."""
    start = 0
    run = 0
    in_space = s[0].isspace() if s else False
    for i, ch in enumerate(s):
        sp = ch.isspace()
        if sp != in_space:
            run, in_space = 1, sp
        else:
            run += 1
            if run > _MAX_RUN:
                yield s[start:i]
                start, run = i, 1
    yield s[start:]
