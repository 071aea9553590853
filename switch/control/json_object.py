"""Decoding a JSON object that comes from outside (etcd, an operator): bad input is a typed error.

The network config and lease values share these rules; each caller keeps its own error type and
words, which tests and operators rely on.
"""

from __future__ import annotations

import json
from typing import Any


def json_object(text: str | bytes, error: type[ValueError], not_json: str,
                not_object: str) -> dict[str, Any]:
    """`text` decoded as a JSON object; else `error("<not_json>: <why>")` or `error(not_object)`."""
    try:
        raw = json.loads(text)
    # ValueError covers bad JSON and bad UTF-8, and also an integer over Python's digit limit;
    # RecursionError is nesting deeper than the parser goes. Either is the input's fault, not a
    # bug of ours: anyone with write access to etcd may put anything there.
    except (ValueError, RecursionError) as exc:
        raise error(f"{not_json}: {str(exc)[:200]}") from None
    if not isinstance(raw, dict):
        raise error(not_object)
    return raw
