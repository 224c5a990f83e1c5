"""What every script's ``main()`` does: parse its options, run, and turn expected failures into one error line."""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from utils.data.config import DataConfigError
from utils.options import parse_options
from utils.weights.checkpoints import CheckpointError

# Failures a user can fix (a path, a value, a file): reported as one line, exit code 1.
USER_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, RuntimeError, CheckpointError, DataConfigError)


def script_main(options: type, run: Callable[[Any], Any], argv: list[str] | None = None,
                description: str | None = None, errors: tuple[type[BaseException], ...] = (),
                done: Callable[[Any], str | None] | None = None) -> int:
    """``run(parse_options(options, argv))``; 0 on success, 1 with ``error: ...`` on stderr on a user error."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opts = parse_options(options, argv, description)
    try:
        out = run(opts)
    except (*USER_ERRORS, *errors) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C: one line (where the work stands), not a traceback
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
        return 130
    message = done(out) if done else None
    if message:
        print(message)
    return 0
