"""Progress of a training stage: iterations done of the total, elapsed, ETA, losses.

Every stage of every detector runs with :class:`StageProgress` when the detector's
``verbose`` is set (the command line sets it unless ``--quiet``): a tqdm bar on
stderr over the stage's training iterations (batches), whose total comes from the
net (epochs x batches per epoch, or :class:`~skanomaly.training.stages.MaxIter`'s
budget), with the latest recorded loss terms beside it. A stage whose projected
time is long on the CPU says so once, with the settings that train in minutes.
"""

import math
import sys
import time
import warnings

from skorch.callbacks import Callback

__all__ = ["StageProgress"]

# A stage projected to run longer than this on a CPU warns once.
LONG_STAGE_SECONDS = 3600.0


class StageProgress(Callback):
    """tqdm progress of one training stage, and a warning if it will take hours.

    Parameters
    ----------
    stage : str
        Shown before the bar, e.g. ``"f-AnoGAN GAN stage"``.
    hint : str or None, default=None
        What to do instead when the projection is long (smaller settings).
    disable : bool, default=False
        Draw nothing (the projection still warns).
    check_after_seconds : float, default=10.0
        How long to time the stage before projecting its duration.
    """

    def __init__(self, stage, hint=None, disable=False, check_after_seconds=10.0):
        self.stage = stage
        self.hint = hint
        self.disable = disable
        self.check_after_seconds = check_after_seconds

    def on_train_begin(self, net, X=None, **kwargs):
        from tqdm.auto import tqdm

        self.total_ = _total_iterations(net, X)
        self.done_ = 0
        self.start_ = time.perf_counter()
        self.warned_ = False
        self.bar_ = tqdm(total=self.total_, desc=self.stage, unit="it", disable=self.disable, file=sys.stderr,
                         dynamic_ncols=True)  # fmt: skip

    def on_batch_end(self, net, training=False, **kwargs):
        if not training:
            return
        self.done_ += 1
        self.bar_.update(1)
        batch = net.history[-1]["batches"][-1] if net.history[-1]["batches"] else {}
        terms = {k[len("train_"):]: v for k, v in batch.items() if k.startswith("train_") and k != "train_batch_size"}
        if terms:
            self.bar_.set_postfix({k: f"{v:.4g}" for k, v in terms.items()}, refresh=False)
        self._maybe_warn(net)

    def _maybe_warn(self, net):
        elapsed = time.perf_counter() - self.start_
        if self.warned_ or self.total_ is None or elapsed < self.check_after_seconds:
            return
        self.warned_ = True
        projected = elapsed / self.done_ * self.total_
        if projected < LONG_STAGE_SECONDS or str(net.device).split(":")[0] != "cpu":
            return
        warnings.warn(
            f"{self.stage}: {self.total_} iterations at {elapsed / self.done_:.2g} s each will take about "
            f"{projected / 3600:.1f} h on this CPU."
            + (f" {self.hint}" if self.hint else " Use smaller settings, or a GPU (device='cuda')."),
            UserWarning,
            stacklevel=2,
        )

    def on_train_end(self, net, **kwargs):
        bar = getattr(self, "bar_", None)
        if bar is not None:
            bar.close()
            self.bar_ = None

    def __getstate__(self):
        # A live bar holds a stream; a pickled detector carries no progress.
        state = dict(self.__dict__)
        state.pop("bar_", None)
        return state


def _total_iterations(net, dataset):
    """Training iterations the net will run: epochs x batches, or a MaxIter budget."""
    budgets = [cb.max_iter for _, cb in getattr(net, "callbacks_", []) if hasattr(cb, "max_iter")]
    try:
        n = len(dataset)
    except TypeError:
        return min(budgets) if budgets else None
    batch_size = net.get_params_for("iterator_train").get("batch_size", net.batch_size)
    batch_size = n if batch_size in (-1, None) else batch_size
    drop_last = net.get_params_for("iterator_train").get("drop_last", False)
    per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
    total = max(1, per_epoch) * net.max_epochs
    return min([total, *budgets])
