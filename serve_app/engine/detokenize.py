"""Incremental detokenization that equals `tokenizer.decode(all_ids, skip_special_tokens=True)` however the stream is
chunked, with stop strings.

Decoding each new token on its own is wrong for most tokenizers real checkpoints ship: SentencePiece-style decoders
(Llama-2, Mistral: `Replace("▁", " ") + ByteFallback + Fuse + Strip`) strip the leading space of whatever they decode
first, WordPiece joins pieces by their neighbours, and byte-level BPE splits multi-byte characters across tokens. So
text is decoded over a window with left context, as vLLM and TGI do: `ids[prefix:read]` were decoded last time and
their text is already out; decoding `ids[prefix:]` and dropping the text of `ids[prefix:read]` leaves exactly the new
text, with the decoder seeing the same left edge in both calls. The offsets move only when the window decodes to
complete characters (no trailing U+FFFD), so a window always starts on a character boundary. A ByteFallback decoder
reads a run of byte tokens (`<0x0A>`) as one UTF-8 string and turns the whole run into U+FFFDs if any byte in it is
bad, so a run's text can change until a non-byte token ends it: the window never ends inside a run.

transformers' `clean_up_tokenization_spaces` (WordPiece checkpoints turn it on) rewrites " ." to "." and the like over
the whole text; those rewrites all start at a space, so text from a space that could still begin one is held back.

Stop strings are matched on the text; the stop string and anything after it are never returned, and text that could be
the start of a stop string is held back until it is known not to be one.
"""

from __future__ import annotations

import re
import weakref

from tokenizers import Tokenizer

REPLACEMENT = "\ufffd"

# transformers' PreTrainedTokenizerBase.clean_up_tokenization, in its order (each a plain str.replace).
CLEANUP_RULES = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                 (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_byte_ids_cache: weakref.WeakKeyDictionary[Tokenizer, frozenset[int]] = weakref.WeakKeyDictionary()


def byte_fallback_ids(tokenizer: Tokenizer) -> frozenset[int]:
    """The ids of `<0xNN>` byte tokens when the decoder reads them as bytes (ByteFallback), else none. Cached per
    tokenizer: a vocabulary scan per request would cost more than the request's decoding."""
    ids = _byte_ids_cache.get(tokenizer)
    if ids is None:
        reads_bytes = "ByteFallback" in str(tokenizer.decoder)
        ids = frozenset(i for piece, i in tokenizer.get_vocab().items() if _BYTE_PIECE.fullmatch(piece)) \
            if reads_bytes else frozenset()
        _byte_ids_cache[tokenizer] = ids
    return ids


def clean_up_tokenization(text: str) -> str:
    for old, new in CLEANUP_RULES:
        text = text.replace(old, new)
    return text


class IncrementalDetokenizer:
    """Feed token ids, get the new text. `stopped` turns True when a stop string was found."""

    def __init__(self, tokenizer: Tokenizer, stop: list[str] | None = None, *, clean_up_spaces: bool = False,
                 min_tokens: int = 0):
        self._tok = tokenizer
        self._stop = [s for s in (stop or []) if s]
        self._min_tokens = min_tokens  # stop strings end nothing before this many tokens (vLLM's min_tokens)
        self._clean_up = clean_up_spaces
        self._byte_ids = byte_fallback_ids(tokenizer)
        self._ids: list[int] = []
        self._prefix = 0  # ids[prefix:read] is the left context: decoded last time, its text already taken
        self._read = 0
        self._raw = ""  # the decoder's text so far, before the clean-up rewrites
        self._cleaned = 0  # raw[:cleaned] has been cleaned into text
        self._text = ""  # all complete text so far
        self._sent = 0  # text[:sent] has been returned
        self.stopped = False

    def add(self, token_ids: list[int]) -> str:
        """Append tokens; return the text that may be released now (possibly "")."""
        if self.stopped:
            return ""
        self._ids.extend(token_ids)
        self._raw += self._new_text(final=False)
        self._clean(final=False)
        return self._release()

    def flush(self) -> str:
        """At the end of the stream: release the held-back text (it did not turn into a stop string). Bytes that never
        completed a character come out as U+FFFD, as in a full decode."""
        if self.stopped:
            return ""
        self._raw += self._new_text(final=True)
        self._clean(final=True)
        return self._release(hold_back=False)

    def _new_text(self, final: bool) -> str:
        if self._read == len(self._ids) or (not final and self._ids[-1] in self._byte_ids):
            return ""  # nothing new, or a run of byte tokens that a later byte could still turn into U+FFFDs
        seen = self._tok.decode(self._ids[self._prefix:self._read], skip_special_tokens=True)
        window = self._tok.decode(self._ids[self._prefix:], skip_special_tokens=True)
        if len(window) <= len(seen) or (window.endswith(REPLACEMENT) and not final):
            return ""  # nothing new yet, or an incomplete multi-byte character: wait for its remaining bytes
        self._prefix, self._read = self._read, len(self._ids)
        return window[len(seen):]

    def _clean(self, final: bool) -> None:
        if not self._clean_up:
            self._text += self._raw[self._cleaned:]
            self._cleaned = len(self._raw)
            return
        end = len(self._raw) if final else self._cleanup_safe_end()
        if end > self._cleaned:
            self._text += clean_up_tokenization(self._raw[self._cleaned:end])
            self._cleaned = end

    def _cleanup_safe_end(self) -> int:
        """The raw text up to the first space from which the tail could still grow into a clean-up pattern."""
        raw, end = self._raw, len(self._raw)
        start = max(self._cleaned, end - max(len(old) for old, _ in CLEANUP_RULES))
        for i in range(start, end):
            if raw[i] == " " and any(old.startswith(raw[i:]) and len(old) > end - i for old, _ in CLEANUP_RULES):
                return i
        return end

    def _release(self, hold_back: bool = True) -> str:
        start = self._sent
        hits = [i for i in (self._text.find(s, start) for s in self._stop) if i >= 0]
        if hits and len(self._ids) >= self._min_tokens:
            self.stopped = True
            self._sent = min(hits)
            return self._text[start:self._sent]
        end = len(self._text) - (self._held_back() if hold_back else 0)
        self._sent = max(end, start)
        return self._text[start:self._sent]

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of some stop string."""
        best = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(self._text) - self._sent), best, -1):
                if self._text.endswith(s[:k]):
                    best = k
                    break
        return best
