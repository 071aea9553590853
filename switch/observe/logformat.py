"""How `weft` writes its log: text lines for people, or JSON lines for log shippers.

`--log-format json` writes one JSON object per line with fixed keys (time, level, logger,
message; exception when a traceback was logged), so a shipper (journald's JSON export, Fluent
Bit, Vector) needs no parsing rules for weft.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped by json)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(log_format: str = "text", debug: bool = False) -> None:
    """Log to stderr at INFO; `debug` lowers the "weft" logger tree only (pyroute2 and grpc
    would drown it)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    if debug:
        logging.getLogger("weft").setLevel(logging.DEBUG)
