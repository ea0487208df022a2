"""Rescale's container_bits: 12-bit values read from 16-bit files (divided by 65535)
come out exactly as the integers divided by 4095."""

import numpy as np
import pytest

from skanomaly.preprocessing import Rescale


def test_values_read_from_16_bit_files_equal_the_integers_rescaled():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 4096, (5, 9, 7)).astype(np.uint16)
    as_read = raw.astype(np.float32) / np.float32(65535)  # what read_image returns
    as_read[0, 0, 0] = np.nan  # outside the region of interest
    expected = Rescale(bits_stored=12).fit_transform(raw.astype(np.float32))
    expected[0, 0, 0] = np.nan
    out = Rescale(bits_stored=12, container_bits=16).fit_transform(as_read)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.float32


def test_container_bits_needs_bits_stored_and_values_that_fit():
    with pytest.raises(ValueError, match="needs bits_stored"):
        Rescale(container_bits=16).fit_transform(np.zeros((1, 4, 4), np.float32))
    too_bright = np.full((1, 4, 4), 5000 / 65535, np.float32)  # above 4095
    with pytest.raises(ValueError, match=r"expects values in \[0, 4095\]"):
        Rescale(bits_stored=12, container_bits=16).fit_transform(too_bright)
