"""JSON as CNI means it, decoded without surprises: what a runtime, a delegate or our own saved
file hands us may be anything, and the plugin must answer with an error, not a traceback.

The standard decoder accepts NaN, Infinity and 1e400 (which become non-JSON floats that we would
pass on to a delegate), decodes bytes as UTF-16 or -32 when they look like it, and raises
RecursionError on deep nesting. Here all of those are a ValueError with a message, and nesting
is capped well below the recursion limit, so the deepcopy and json.dumps that follow are safe.
"""

from __future__ import annotations

import json
import math

# A CNI conf or result is a handful of levels deep (prevResult.interfaces[0].mac is 4). 64
# leaves room for any plugin's own keys and stays far below what recursive code can walk.
MAX_DEPTH = 64


def loads(data: bytes | str) -> object:
    """Decode UTF-8 JSON; ValueError (UnicodeDecodeError is one) says what is wrong."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    if _too_deep(value):
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _too_deep(value: object) -> bool:
    """Walked with a stack of our own: recursion here would fail on exactly these inputs."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False
