"""Incremental detokenization with stop strings.

Byte-level BPE splits multi-byte characters across tokens: decoding a prefix of such a character gives U+FFFD, so
text is released only once the pending tokens decode to complete characters. Stop strings are matched on the text;
the stop string and anything after it are never returned, and text that could be the start of a stop string is held
back until it is known not to be one.
"""

from __future__ import annotations

from tokenizers import Tokenizer

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Feed token ids, get the new text. `stopped` turns True when a stop string was found."""

    def __init__(self, tokenizer: Tokenizer, stop: list[str] | None = None):
        self._tok = tokenizer
        self._stop = [s for s in (stop or []) if s]
        self._ids: list[int] = []
        self._prefix = 0  # ids[:prefix] are fully released; decoding restarts from here so merges stay right
        self._text = ""  # all complete text so far
        self._sent = 0  # text[:sent] has been returned
        self.stopped = False

    def add(self, token_ids: list[int]) -> str:
        """Append tokens; return the text that may be released now (possibly "")."""
        if self.stopped:
            return ""
        self._ids.extend(token_ids)
        pending = self._tok.decode(self._ids[self._prefix:], skip_special_tokens=True)
        if pending.endswith(REPLACEMENT):
            return ""  # an incomplete multi-byte character: wait for its remaining bytes
        self._text += pending
        self._prefix = len(self._ids)
        return self._release()

    def flush(self) -> str:
        """At the end of the stream: release the held-back text (it did not turn into a stop string)."""
        if self.stopped:
            return ""
        if self._prefix < len(self._ids):  # bytes that never completed a character: release them as U+FFFD
            self._text += self._tok.decode(self._ids[self._prefix:], skip_special_tokens=True)
            self._prefix = len(self._ids)
        out = self._release(hold_back=False)
        return out

    def _release(self, hold_back: bool = True) -> str:
        start = self._sent
        hits = [i for i in (self._text.find(s, start) for s in self._stop) if i >= 0]
        if hits:
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
