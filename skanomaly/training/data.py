"""Training samples as a dataset that copies nothing until a batch is drawn.

A fit used to hold several copies of its training data: the present patches of the
bags, the samples padded to the networks' side, and each stage's training and
validation splits. :class:`SampleSet` keeps one reference to the validated array and
an index of the rows it stands for; a split is another index into the same array,
and each batch is gathered (and padded) on its own when the data loader asks for it,
so the only full-size array in host memory besides the caller's is the validated
float32 one (and that one only where the caller's dtype or layout needed converting).
"""

import numpy as np
import torch
from torch.utils.data import Dataset

from .nets import pad_to_side

__all__ = ["SampleSet"]


class SampleSet(Dataset):
    """Rows ``indices`` of ``array`` ``(N, H, W)``, as ``(1, side, side)`` samples.

    Parameters
    ----------
    array : ndarray of float32, shape (N, H, W)
        NaN outside the region of interest. Held by reference, never copied.
    indices : ndarray of int, shape (M,), or None, default=None
        The rows this set stands for, in order; ``None`` is every row.
    side : int or None, default=None
        Pad each sample at the bottom and right with NaN (outside the region of
        interest) to ``side x side``; ``None`` keeps ``H x W``.

    Batches come from :meth:`__getitems__`, which torch's ``DataLoader`` calls with
    the batch's indices: one gather per batch instead of one Python call and one
    stacking copy per sample. Pass :meth:`collate` as the loader's ``collate_fn``.
    """

    def __init__(self, array, indices=None, side=None):
        if array.ndim != 3:
            raise ValueError(f"SampleSet takes samples of shape (N, H, W), got {array.shape}.")
        self.array = array
        self.indices = np.arange(array.shape[0]) if indices is None else np.asarray(indices, dtype=np.intp)
        self.side = side

    def __len__(self):
        return len(self.indices)

    @property
    def sample_shape(self):
        """``(H, W)`` of a sample as the networks get it (after padding)."""
        return (self.side, self.side) if self.side is not None else tuple(self.array.shape[1:])

    def subset(self, positions):
        """The samples at ``positions`` of this set, as a set over the same array."""
        return SampleSet(self.array, self.indices[np.asarray(positions, dtype=np.intp)], self.side)

    def batch(self, positions):
        """Samples at ``positions`` as a float32 tensor ``(B, 1, side, side)``."""
        # Fancy indexing gathers into a new C-contiguous array, whatever the strides
        # of the caller's array (torch refuses negative ones).
        rows = np.take(self.array, self.indices[np.asarray(positions, dtype=np.intp)], axis=0)
        x = torch.from_numpy(rows)[:, None]
        return x if self.side is None else pad_to_side(x, self.side, float("nan"))

    def __getitems__(self, positions):
        # skorch's (X, y) batch; these detectors learn without targets.
        return self.batch(positions), torch.zeros(len(positions))

    def __getitem__(self, position):
        x, y = self.__getitems__([position])
        return x[0], y[0]

    @staticmethod
    def collate(batch):
        """The loader's ``collate_fn``: a batch from :meth:`__getitems__` is ready."""
        return batch

    def to_array(self):
        """Every sample as one ``(M, 1, side, side)`` array (a copy: for small sets)."""
        return self.batch(np.arange(len(self))).numpy()
