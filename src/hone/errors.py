"""User-facing errors: each one says what is wrong, where, and what to do."""


class HoneError(Exception):
    """An error caused by the user's input or environment; the CLI prints it without a traceback."""

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class RequestError(HoneError):
    """A request that cannot be carried out as asked; `param` names the field at fault (HTTP 400)."""

    status = 400

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.param = param
        self.code = code


class NotFoundError(RequestError):
    """The object a request names does not exist, or belongs to another project (HTTP 404)."""

    status = 404


class ForbiddenError(RequestError):
    """The caller may see the object but not do this to it, for the reason given (HTTP 403)."""

    status = 403


class ConflictError(RequestError):
    """The request clashes with the object's current state or a rule it must pass (HTTP 409)."""

    status = 409
