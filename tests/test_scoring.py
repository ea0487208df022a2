"""The one scoring loop takes any numpy layout and gives the same scores for it."""

import numpy as np
import pytest

from skanomaly.utils.scoring import score_in_batches


def _mean_over_roi(x, roi):
    roi_f = roi.to(x.dtype)
    return x * roi_f, (x * roi_f).flatten(1).sum(1) / roi_f.flatten(1).sum(1)


@pytest.mark.parametrize("layout", ["reversed", "fortran", "strided"])
def test_any_numpy_layout_scores_like_a_contiguous_copy(layout):
    samples = np.random.default_rng(0).random((7, 5, 6), dtype=np.float32)
    samples[:, 0, :] = np.nan
    view = {
        "reversed": samples[::-1],
        "fortran": np.asfortranarray(samples),
        "strided": samples.repeat(2, axis=2)[:, :, ::2],
    }[layout]
    expected, expected_maps = score_in_batches(
        np.ascontiguousarray(view), _mean_over_roi, batch_size=3, device="cpu", want_maps=True
    )
    scores, maps = score_in_batches(view, _mean_over_roi, batch_size=3, device="cpu", want_maps=True)
    np.testing.assert_array_equal(scores, expected)
    np.testing.assert_array_equal(maps, expected_maps)
    assert np.isnan(maps[:, 0, :]).all() and scores.dtype == np.float64
    np.testing.assert_allclose(scores, np.nanmean(view, axis=(1, 2)), rtol=1e-6)
