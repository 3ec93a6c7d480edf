"""Silence third-party messages a tttgraph user can neither act on nor avoid, one call site at a time.

Python warnings are filtered with ``warnings.catch_warnings`` at the call that causes them; this
module does the same for messages that libraries send through ``logging`` (torch.onnx, onnx_ir),
which ``warnings`` filters do not reach. Each filter matches one message, so anything else the
library says still gets through.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager


class _DropMatching(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


@contextmanager
def muted_log(logger: str, pattern: str) -> Iterator[None]:
    """Within the block, drop the records of ``logger`` whose message matches ``pattern`` (``re.match``)."""
    log = logging.getLogger(logger)
    drop = _DropMatching(pattern)
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)
