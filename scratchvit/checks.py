"""What the package's checks share (data loaders, settings, CLIs): "a positive whole number", and the
one error the command-line tools report as a line of bad input."""
from __future__ import annotations

import numpy as np


class InputError(Exception):
    """Bad user input to a command-line tool (predict, inspect, plot): a missing or unreadable file, a
    labels file of the wrong length, no matplotlib. The tool prints the message as one line on stderr
    and exits with code 2."""


def check_positive_int(name: str, value, minimum: int = 1, unit: str = "") -> int:
    """Check that ``value`` is an int (Python or NumPy, not bool) ``>= minimum``; return it as int.

    Args:
        name: the argument's name, used in the message (e.g. ``"image_size"`` or ``"--batch-size"``).
        value: the value to check.
        minimum: the smallest value allowed (1 for sizes and counts, 0 for a first step).
        unit: optional unit named in the message, e.g. ``"pixels"``.

    Returns:
        ``int(value)``.

    Raises:
        ValueError: ``value`` is not an int, is a bool, or is below ``minimum``; the message
            names ``name`` and the value received.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}{f' ({unit})' if unit else ''}, got {value!r}")
    return int(value)
