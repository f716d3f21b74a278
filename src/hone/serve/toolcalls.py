"""A streamed reply split into its text and its tool calls, each call handed on whole as soon as it closes.

Replies are written in hone's default tool-call format (`hone.data.render`): `<tool_call>\\n{"name": ...,
"arguments": {...}}\\n</tool_call>`, one per line. Text that could still be the start of `<tool_call>` is held
back until it cannot; the line breaks between calls are not text. A call still open when the reply ends (cut by
max_tokens) is handed on as text, so nothing the model wrote is lost and every call handed on parses.
"""

from __future__ import annotations

from dataclasses import dataclass

from hone.data.render import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, parse_tool_call


@dataclass(frozen=True)
class Call:
    """One complete tool call: the function's name and its arguments as a JSON string."""

    name: str
    arguments: str


class ToolCallStream:
    """Text in as it is generated; out come text pieces (str) and complete `Call`s, in the order written."""

    def __init__(self):
        self.buffer = ""
        self.in_call = False
        self.calls = 0

    def feed(self, text: str) -> list[str | Call]:
        """What `text` completes: text that can no longer open a call, and calls whose closing tag arrived."""
        self.buffer += text
        out: list[str | Call] = []
        while True:
            if self.in_call:
                end = self.buffer.find(TOOL_CALL_CLOSE)
                if end < 0:
                    return out
                body, self.buffer = self.buffer[:end], self.buffer[end + len(TOOL_CALL_CLOSE):]
                self.in_call = False
                call = parse_tool_call(body.strip())
                if call is None:
                    out.append(f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}")
                else:
                    self.calls += 1
                    out.append(Call(*call))
                continue
            start = self.buffer.find(TOOL_CALL_OPEN)
            if start < 0:
                held = _opening_at_end(self.buffer)
                self._text(out, self.buffer[:len(self.buffer) - held])
                self.buffer = self.buffer[len(self.buffer) - held:]
                return out
            self._text(out, self.buffer[:start])
            self.buffer, self.in_call = self.buffer[start + len(TOOL_CALL_OPEN):], True

    def finish(self) -> list[str]:
        """The text still held back when the reply ends (an unclosed call comes back as the text it was)."""
        rest = f"{TOOL_CALL_OPEN}{self.buffer}" if self.in_call else self.buffer
        self.buffer, self.in_call = "", False
        return [rest] if rest.strip() or (rest and not self.calls) else []

    def _text(self, out: list[str | Call], text: str) -> None:
        if self.calls and not text.strip():
            return  # the line break between two calls
        if text:
            out.append(text)


def _opening_at_end(text: str) -> int:
    """How many characters at the end of `text` could begin `<tool_call>`."""
    for size in range(min(len(text), len(TOOL_CALL_OPEN) - 1), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-size:]):
            return size
    return 0
