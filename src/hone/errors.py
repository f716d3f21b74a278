"""User-facing errors: each one says what is wrong, where, and what to do."""


class HoneError(Exception):
    """An error caused by the user's input or environment; the CLI prints it without a traceback."""

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message
