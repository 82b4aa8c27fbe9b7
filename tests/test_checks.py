"""The one positive-integer check (scratchvit/checks.py) used by the loaders, the settings and the CLIs."""
import numpy as np
import pytest

from scratchvit.checks import check_positive_int


def test_check_positive_int_is_the_one_argument_check():
    assert check_positive_int("batch_size", np.int64(3)) == 3 and check_positive_int("start_step", 0, 0) == 0
    for bad in (0, -1, 2.0, True, "4", None):
        with pytest.raises(ValueError, match=r"image_size must be a positive integer \(pixels\), got"):
            check_positive_int("image_size", bad, unit="pixels")
    with pytest.raises(ValueError, match=r"start_step must be an integer >= 0, got -1"):
        check_positive_int("start_step", -1, 0)
