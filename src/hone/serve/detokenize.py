"""A reply's text as its tokens arrive, each token decoded once instead of the whole reply again per token.

`IncrementalDecoder` keeps two offsets into the generated ids (the approach of vLLM's incremental
detokenizer and of HF's TextStreamer): `prefix` marks a few already-decoded tokens kept as context (a
SentencePiece word piece, for one, decodes with or without its leading space depending on what precedes
it) and `read` marks where the unsent tokens begin. Each step decodes `ids[prefix:]` and sends what it adds
to `ids[prefix:read]`. A window ending in U+FFFD ends with part of a multi-byte character: the text before
it is sent, the character once a later token completes it. The texts sent add up to
`tokenizer.decode(ids, skip_special_tokens=True)`, which is what `hone eval` scores.

`ReplyText` adds the request's stop strings: the text before the first one is sent and the stop string never
is, and the end of the text that could still become a stop string is held back until it cannot.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"  # what an incomplete UTF-8 sequence decodes to


class IncrementalDecoder:
    """Generated token ids in, new text out; `incremental=False` decodes the whole reply at every token (the
    ablation's baseline: quadratic in the reply's length)."""

    def __init__(self, tokenizer, incremental: bool = True):
        self.tokenizer = tokenizer
        self.incremental = incremental
        self.ids: list[int] = []
        self.prefix = self.read = 0
        self.prefix_text = ""  # ids[prefix:read] decoded
        self.partial = 0  # characters after prefix_text already sent while the window ended mid-character

    def add(self, token: int) -> str:
        """Append `token`; the text it completes (a character split across tokens comes with its last one)."""
        self.ids.append(token)
        window = self._decode(self.prefix)
        if window.endswith(REPLACEMENT):
            return self._complete_part(window.rstrip(REPLACEMENT))
        return self._advance(window)

    def flush(self) -> str:
        """The text still held back (an incomplete character at the end of the reply decodes as U+FFFD)."""
        return self._advance(self._decode(self.prefix)) if self.read < len(self.ids) else ""

    def _complete_part(self, complete: str) -> str:
        """The new text before an incomplete character; the offsets wait until the character is whole."""
        new = complete[len(self.prefix_text) + self.partial:]
        self.partial += len(new)
        return new

    def _advance(self, window: str) -> str:
        new = window[len(self.prefix_text) + self.partial:]
        self.partial = 0
        if self.incremental:
            self.prefix, self.read = self.read, len(self.ids)
            self.prefix_text = self._decode(self.prefix)
        else:
            self.read, self.prefix_text = len(self.ids), window
        return new

    def _decode(self, start: int) -> str:
        return self.tokenizer.decode(self.ids[start:], skip_special_tokens=True)


class ReplyText:
    """The text of one reply that may be sent so far, cut at the first of the request's stop strings."""

    def __init__(self, tokenizer, stops: tuple[str, ...] = (), incremental: bool = True):
        self.decoder = IncrementalDecoder(tokenizer, incremental)
        self.stops = tuple(stop for stop in stops if stop)
        self.held = ""  # decoded, not yet sent: it may be the start of a stop string
        self.stopped = False  # a stop string was reached: the reply is complete

    def add(self, token: int) -> str:
        """Append a generated token; the text now safe to send (check `stopped` afterwards)."""
        return self._release(self.decoder.add(token), final=False)

    def finish(self) -> str:
        """At the end of the reply (EOS or length): everything not yet sent, up to a stop string if one is there."""
        return self._release(self.decoder.flush(), final=True)

    def _release(self, new: str, final: bool) -> str:
        if self.stopped:
            return ""
        text = self.held + new
        at = first_stop(text, self.stops)
        if at is not None:
            self.stopped, self.held = True, ""
            return text[:at]
        keep = 0 if final else stop_prefix_length(text, self.stops)
        self.held = text[len(text) - keep:]
        return text[:len(text) - keep]


def first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the earliest stop string begins in `text`, or None."""
    found = [at for stop in stops if (at := text.find(stop)) != -1]
    return min(found) if found else None


def stop_prefix_length(text: str, stops: tuple[str, ...]) -> int:
    """The length of the longest end of `text` that is the beginning of a stop string (0 when none is)."""
    longest = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:length]):
                longest = length
                break
    return longest
