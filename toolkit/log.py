"""Progress and diagnostics through `logging`, on stderr.

Library code logs to `toolkit.log.logger` (INFO for progress a user follows, DEBUG for detail);
the CLI decides how much shows: `-v` adds DEBUG, `--json` and `--quiet` keep INFO quiet so
stdout stays one JSON object and stderr only carries warnings and errors.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("dlkit")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of each message (test runners and
    progress bars swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Send dlkit's log to stderr: warnings only when `quiet`, INFO by default, DEBUG with
    `verbose`. Calling it again replaces the earlier setting."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(
        logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s")
    )
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
