"""CNI errors: the spec's well-known codes and the error JSON a plugin prints on failure."""

from __future__ import annotations

from weft.cni import safejson

# The spec's well-known error codes (0-99 are reserved for them).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
# libcni's ErrInternal: the plugin failed in a way it does not know (a bug); never bad input.
INTERNAL_ERROR = 999


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
    def from_json(cls, text: bytes | str, fallback: str) -> CniError:
        """A delegate's error output, kept as is (its code too); `fallback` if it is not error
        JSON (then the output goes into details)."""
        try:
            data = safejson.loads(text)
            if not isinstance(data, dict):
                raise TypeError("not an object")
            code = int(data["code"])
        except (ValueError, TypeError, KeyError, OverflowError):
            shown = text.decode(errors="replace") if isinstance(text, bytes) else text
            return cls(IO_FAILURE, fallback, shown.strip()[-2000:])
        # An empty msg would tell the user nothing: say at least who failed.
        return cls(code, str(data.get("msg") or "") or fallback, str(data.get("details") or ""))


def shown(value: object, limit: int = 64) -> str:
    """`value` for an error message, cut short: the input being reported may be huge."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."
