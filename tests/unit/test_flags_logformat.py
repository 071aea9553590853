"""--log-format json: one JSON object per line with fixed keys."""

from __future__ import annotations

import json
import logging
import sys

from weft.observe.logformat import JsonFormatter


def record(msg: str, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("weft.daemon", logging.WARNING, __file__, 1, msg, ("x",), exc_info)


def test_a_record_is_one_json_line():
    line = JsonFormatter().format(record("renewal of %s failed\nsecond line"))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING" and entry["logger"] == "weft.daemon"
    assert entry["message"] == "renewal of x failed\nsecond line"
    assert entry["time"].endswith("+00:00") and "T" in entry["time"]
    assert "exception" not in entry


def test_exception_text_is_included():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        line = JsonFormatter().format(record("failed %s", sys.exc_info()))
    entry = json.loads(line)
    assert "Traceback" in entry["exception"] and "RuntimeError: boom" in entry["exception"]
