"""The agent's log: `var/log/tether/error.log` plus stderr in the foreground.

Lines carry a UTC timestamp, the level and the source; link messages carry
`ACLK`. On SIGHUP the file is reopened so logrotate can move it away.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

FORMAT = "%(asctime)s: tether %(levelname)s : %(name)s : %(message)s"
log = logging.getLogger("tether.agent")


class _Formatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.created)) + "Z"


class AgentLog:
    def __init__(self, path: Path, foreground: bool, level: int = logging.INFO) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.formatter = _Formatter(FORMAT)
        self.file_handler = logging.FileHandler(path, encoding="utf-8", delay=False)
        self.file_handler.setFormatter(self.formatter)
        root = logging.getLogger("tether")
        root.setLevel(level)
        root.propagate = False
        for h in list(root.handlers):
            root.removeHandler(h)
        root.addHandler(self.file_handler)
        if foreground:
            err = logging.StreamHandler(sys.stderr)
            err.setFormatter(self.formatter)
            root.addHandler(err)
        # uvicorn's own errors go to the same place.
        for name in ("uvicorn", "uvicorn.error"):
            lg = logging.getLogger(name)
            lg.handlers = list(root.handlers)
            lg.setLevel(logging.WARNING)
            lg.propagate = False

    def reopen(self) -> None:
        """Close and reopen the file (after logrotate renamed it)."""
        h = self.file_handler
        h.acquire()
        try:
            if h.stream:
                h.stream.close()
            h.stream = h._open()
        finally:
            h.release()
        log.info("log file %s reopened", self.path)
