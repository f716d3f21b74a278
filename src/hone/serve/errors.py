"""The model server's refusals beyond a bad request (`hone.errors.RequestError`) or an unknown model
(`NotFoundError`): each carries the HTTP status `hone.api` answers it with."""

from __future__ import annotations

from hone.errors import RequestError


class ServerBusy(RequestError):
    """Already answering `limits.max_concurrent_requests` requests; retry in a moment."""

    status = 429


class GenerationFailed(RequestError):
    """The engine failed while generating (or is shutting down); not the request's fault."""

    status = 500


class GenerationTimeout(RequestError):
    """The request was still generating after `limits.request_timeout_s`."""

    status = 504
