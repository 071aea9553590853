"""CNI errors: the spec's well-known codes and the error JSON a plugin prints on failure."""

from __future__ import annotations

import json

# The spec's well-known error codes (0-99 are reserved for them).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11


class CniError(Exception):
    """A failure to report as CNI error JSON: code, a message that says what to fix, details."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def __reduce__(self):  # picklable with its code (the lab ships errors out of namespaces)
        return (type(self), (self.code, self.msg, self.details))

    def to_json(self, cni_version: str) -> dict:
        out: dict = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    @classmethod
    def from_json(cls, text: str, fallback: str) -> CniError:
        """A delegate's error output, kept as is (its code too); `fallback` if it is not JSON."""
        try:
            data = json.loads(text)
            return cls(int(data["code"]), str(data.get("msg", "")), str(data.get("details", "")))
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls(IO_FAILURE, fallback, text.strip()[-2000:])
