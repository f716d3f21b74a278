"""Object ids in OpenAI's shapes (`file-...`, `ftjob-...`, `ftevent-...`, `ftckpt_...`) and list pages."""

from __future__ import annotations

import secrets
import string

from hone.errors import RequestError

ALPHABET = string.ascii_letters + string.digits
MAX_PAGE = 100  # the most objects one list call returns, as in OpenAI's API


def new_id(prefix: str, length: int = 24) -> str:
    """A random id such as `ftjob-AbC...`; 24 characters of 62 make collisions practically impossible."""
    return prefix + "".join(secrets.choice(ALPHABET) for _ in range(length))


def page_limit(limit: int | None, default: int = 20, most: int = MAX_PAGE) -> int:
    """The page size a list call asked for, within 1..`most`."""
    if limit is None:
        return default
    if not 1 <= limit <= most:
        raise RequestError(f"limit {limit} is out of range; ask for 1 to {most} objects per page", param="limit",
                           code="invalid_value")
    return limit
