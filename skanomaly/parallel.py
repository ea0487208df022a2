"""Scoring archives of radiograph files in bounded memory, in-process or on Dask.

:func:`score_files` reads, preprocesses and scores image files chunk by chunk and
writes one CSV row per file, in input order, as chunks complete. Without a client it
runs in this process; with a :class:`dask.distributed.Client` the chunks run on the
cluster's workers. Both paths call the same chunk function on the same chunks, so they
write the same file.

Grid search needs no code here: scikit-learn's ``n_jobs`` goes through joblib, and
``joblib.parallel_config(backend="dask")`` sends its tasks to a Dask cluster (see the
user guide, "Beyond one machine").

Dask is an optional dependency: ``pip install skanomaly[dask]``.
"""

from __future__ import annotations

import csv
import os
import tempfile
import uuid
import warnings
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from .datasets._io import _check_n_jobs, _check_size, _list_folder, read_image, resize_image

__all__ = ["FileScores", "score_files"]

_ON_ERROR = ("raise", "skip")


@dataclass
class FileScores:
    """What :func:`score_files` returns: one entry per input file, in input order.

    Attributes
    ----------
    paths : list of str
        The files as given (a folder's files sorted by name).
    scores : ndarray of float64, shape (n_files,)
        ``score_samples`` of each file (higher = more normal); NaN for skipped files.
    decisions : ndarray of float64, shape (n_files,)
        ``scores - offset_`` of the model's detector; NaN for skipped files.
    predictions : ndarray of int8, shape (n_files,)
        +1 inlier, -1 outlier; 0 for skipped files.
    skipped : list of (str, str)
        ``(path, reason)`` of every file that could not be read (``on_error="skip"``).
    out : pathlib.Path or None
        The CSV written, if any.
    """

    paths: list
    scores: np.ndarray
    decisions: np.ndarray
    predictions: np.ndarray
    skipped: list = field(default_factory=list)
    out: Path | None = None


def _final_estimator(model):
    return model.steps[-1][1] if hasattr(model, "steps") else model


def _check_model(model):
    """The fitted detector (last step) of ``model``; raises when unfitted or unsuitable."""
    final = _final_estimator(model)
    if not (hasattr(final, "score_samples") and hasattr(type(final), "fit")):
        raise ValueError(
            "score_files needs a fitted outlier detector, or a fitted Pipeline whose last "
            f"step is one (with score_samples and offset_); got {type(model).__name__}"
            + (f" ending in {type(final).__name__}." if final is not model else ".")
        )
    check_is_fitted(model)  # NotFittedError (a ValueError) names what to do
    check_is_fitted(final)
    if not hasattr(final, "offset_"):
        raise ValueError(
            f"{type(final).__name__} has no offset_: score_files writes decision = "
            "score - offset_ and the prediction from its sign, scikit-learn's outlier "
            "convention."
        )
    return final


def _resolve_paths(paths, recursive):
    if isinstance(paths, (str, os.PathLike)):
        path = Path(os.fspath(paths))
        # A folder is listed like load_images does; anything else is one file, and a
        # missing one is then handled by on_error like every other file.
        if path.is_dir():
            return [str(p) for p in _list_folder(path, recursive)]
        return [os.fspath(paths)]
    if isinstance(paths, np.ndarray) and paths.dtype.kind not in "USO":
        raise ValueError(
            "score_files takes file paths or a folder, not pixel data; got an array of "
            f"dtype {paths.dtype}. Score arrays with model.score_samples directly."
        )
    try:
        listed = [os.fspath(p) for p in paths]
    except TypeError as err:
        raise ValueError(
            "score_files takes a folder, one file path, or a list of file paths (str or "
            f"pathlib.Path); got {type(paths).__name__}: {err}"
        ) from err
    if not listed:
        raise ValueError("score_files got an empty list of paths: pass at least one file.")
    return [str(p) for p in listed]


def _positive_int(value):
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= 1


def _check_params(chunk_size, on_error, progress, out):
    if not _positive_int(chunk_size):
        raise ValueError(f"chunk_size must be a positive int (files per task); got {chunk_size!r}.")
    if on_error not in _ON_ERROR:
        raise ValueError(
            f"on_error must be 'raise' (stop, write nothing) or 'skip' (record the file's "
            f"error in the CSV and go on); got {on_error!r}."
        )
    if not isinstance(progress, (bool, np.bool_)):
        raise ValueError(f"progress must be True or False; got {progress!r}.")
    if out is None:
        return None
    out = Path(os.fspath(out))
    if out.is_dir():
        raise ValueError(f"out='{out}' is a folder; give the path of the CSV file to write.")
    if not out.parent.is_dir():
        raise ValueError(f"The folder of out='{out}' does not exist; create it first.")
    return out


# ----------------------------------------------------------------------- the work
def _read_one(path, size):
    image = read_image(path)
    return image if size is None else resize_image(image, size)


def _score_chunk(model, paths, size, on_error, n_jobs):
    """Read and score one chunk of files; runs in-process or on a Dask worker.

    Returns small arrays only (never images): ``scores``, ``decisions``,
    ``predictions`` and ``errors`` (``[(position, message)]``). Images of different
    sizes (``size=None``) are scored in groups of equal size, in file order: a
    detector's scores do not depend on which images share a batch.
    """
    n = len(paths)

    def read(i):
        try:
            return _read_one(paths[i], size)
        except (ValueError, OSError) as err:
            if on_error == "raise":
                raise ValueError(f"score_files could not read '{paths[i]}': {err}") from err
            return f"{type(err).__name__}: {err}"

    if n_jobs is None or n_jobs == 1 or n == 1:
        images = [read(i) for i in range(n)]
    else:
        images = Parallel(n_jobs=n_jobs, prefer="threads")(delayed(read)(i) for i in range(n))
    errors = [(i, image) for i, image in enumerate(images) if isinstance(image, str)]
    scores = np.full(n, np.nan)
    groups = {}
    for i, image in enumerate(images):
        if not isinstance(image, str):
            groups.setdefault(image.shape, []).append(i)
    for index in groups.values():
        batch = np.stack([images[i] for i in index])
        for i in index:
            images[i] = None  # let each image go as soon as it is in the batch
        scores[index] = model.score_samples(batch)
        del batch
    decisions = scores - _final_estimator(model).offset_
    predictions = np.where(np.isnan(decisions), 0, np.where(decisions < 0, -1, 1)).astype(np.int8)
    return {"scores": scores, "decisions": decisions, "predictions": predictions, "errors": errors}


def _chunks(n, chunk_size):
    return [(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]


def _run_local(model, worker_paths, chunks, args):
    for start, stop in chunks:
        yield start, stop, _score_chunk(model, worker_paths[start:stop], *args)


def _run_dask(client, model, worker_paths, chunks, args, max_in_flight):
    """Chunk results as they complete, at most ``max_in_flight`` tasks at a time.

    The model is scattered once to every worker (one copy per worker, not one per
    task); only paths go out and small score arrays come back. A bounded window of
    submitted tasks keeps the scheduler's and the client's memory independent of the
    archive's size.
    """
    from distributed import as_completed

    model_future = client.scatter(model, broadcast=True, hash=False)
    run = uuid.uuid4().hex[:8]
    todo = iter(chunks)
    bounds = {}

    def submit():
        chunk = next(todo, None)
        if chunk is None:
            return None
        start, stop = chunk
        future = client.submit(
            _score_chunk, model_future, worker_paths[start:stop], *args,
            key=f"score_files-{run}-{start}", pure=False,
        )
        bounds[future.key] = chunk
        return future

    in_flight = [f for f in (submit() for _ in range(max_in_flight)) if f is not None]
    pending = as_completed(in_flight)
    try:
        for future in pending:
            result = future.result()  # re-raises a worker's error here
            start, stop = bounds.pop(future.key)
            future.release()
            following = submit()
            if following is not None:
                pending.add(following)
            yield start, stop, result
    finally:
        for future in list(pending.futures):
            future.cancel()
        model_future.release()


def score_files(
    model,
    paths,
    *,
    client=None,
    chunk_size=128,
    out=None,
    size=None,
    on_error="raise",
    progress=True,
    recursive=False,
    n_jobs=None,
    max_in_flight=None,
):
    """Read, preprocess and score image files in chunks; write one CSV row per file.

    Memory is bounded by the chunk size, not by the number of files: each task reads
    ``chunk_size`` files, scores them and returns only their scores. Without a
    ``client`` the chunks run one after another in this process; with a Dask client
    they run on its workers, and the CSV is the same.

    Parameters
    ----------
    model : fitted detector or fitted Pipeline ending in a detector
        Called as ``model.score_samples(images)`` on ``(n, H, W)`` float images in
        [0, 1] (as :func:`skanomaly.datasets.load_images` reads them), so a pipeline's
        preprocessing runs on the workers too. The decision is ``score - offset_`` of
        the last step and the prediction its sign (+1 normal, -1 abnormal), as
        ``decision_function`` and ``predict`` compute them, without running the model
        three times.
    paths : str, path-like or list of them
        A folder (its image files sorted by name, as :func:`~skanomaly.datasets.load_images`
        lists them), one file, or a list of files, scored and written in the given
        order. With a client, every worker must see the files at these paths
        (relative paths are made absolute here).
    client : dask.distributed.Client or None, default=None
        Where to run. ``None``: in this process.
    chunk_size : int, default=128
        Files per task. A task holds its ``chunk_size`` images at once (float32,
        ``chunk_size x H x W x 4`` bytes at the read size, plus what the model's
        preprocessing makes of them), per worker thread; its scores are written as
        soon as every earlier chunk is written.
    out : str, path-like or None, default=None
        CSV to write: columns ``path, score, decision, prediction`` (and ``error``
        with ``on_error="skip"``), one row per file in input order, floats written
        so that they read back exactly. Rows go to a temporary file next to ``out``
        as chunks complete; it is renamed to ``out`` when every file is scored, and
        removed on failure, so ``out`` is never half-written.
    size : None, int or (H, W), default=None
        Resize every image on reading, as ``load_images(size=...)`` does; pass the
        size the model was trained at unless its pipeline resizes. ``None`` keeps
        each file's size (images of different sizes are scored in separate batches).
    on_error : {"raise", "skip"}, default="raise"
        A file that is missing or cannot be decoded: ``"raise"`` stops with a
        ``ValueError`` naming it and writes nothing; ``"skip"`` records it (empty
        score, decision and prediction, and the reason in the ``error`` column and
        in ``FileScores.skipped``), warns once at the end, and goes on. Errors of the
        model itself (an image of the wrong size, say) always raise.
    progress : bool, default=True
        Show a tqdm progress bar of files scored (also with a client; the Dask
        dashboard shows the workers' side).
    recursive : bool, default=False
        With a folder, also score the images in its subfolders.
    n_jobs : int or None, default=None
        Threads that decode the files of one chunk (in this process, or in each
        task on a worker); ``None`` means 1.
    max_in_flight : int or None, default=None
        With a client: most chunks submitted at once (the rest wait on the
        client); ``None`` means twice the cluster's worker threads.

    Returns
    -------
    result : FileScores
        ``paths``, ``scores``, ``decisions``, ``predictions`` (arrays in input
        order), ``skipped`` and ``out``.

    Raises
    ------
    ValueError
        Empty input, a bad parameter, an unfitted model (``NotFittedError``), or an
        unreadable file with ``on_error="raise"``.

    Notes
    -----
    The model reaches the workers once: it is pickled and scattered to every worker
    before the first task (detectors pickle exactly, also GPU ones onto CPU
    workers), and each task refers to that copy. Scores do not depend on
    ``chunk_size`` (detectors score each image independently of its batch), up to
    the last bits of float arithmetic where a different batch takes a different
    kernel.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skanomaly.datasets import make_chest_phantoms
    >>> from skanomaly.detectors import CAEDetector
    >>> from skanomaly.parallel import score_files
    >>> phantoms = make_chest_phantoms(12, image_size=16, anomaly_fraction=0, random_state=0)
    >>> det = CAEDetector(channels=(4, 8), max_epochs=1, augment=None, random_state=0)
    >>> det = det.fit(phantoms.images)
    >>> folder = tempfile.mkdtemp()
    >>> for i, image in enumerate(phantoms.images[:5]):
    ...     Image.fromarray((image * 255).round().astype(np.uint8)).save(f"{folder}/{i}.png")
    >>> result = score_files(det, folder, chunk_size=2, out=f"{folder}/scores.csv", progress=False)
    >>> result.scores.shape, open(f"{folder}/scores.csv").readline().strip()
    ((5,), 'path,score,decision,prediction')
    """
    out = _check_params(chunk_size, on_error, progress, out)
    size = _check_size(size)
    _check_n_jobs(n_jobs)
    if not isinstance(recursive, (bool, np.bool_)):
        raise ValueError(f"recursive must be True or False; got {recursive!r}.")
    _check_model(model)
    paths = _resolve_paths(paths, recursive)
    n = len(paths)
    chunks = _chunks(n, chunk_size)
    args = (size, on_error, n_jobs)
    # Absolute paths for the workers (and in-process alike, so that error messages
    # agree); the CSV keeps the paths as given.
    worker_paths = [os.path.abspath(p) for p in paths]
    if client is None:
        results = _run_local(model, worker_paths, chunks, args)
    else:
        if not (hasattr(client, "submit") and hasattr(client, "scatter")):
            raise ValueError(
                f"client must be a dask.distributed.Client or None; got {type(client).__name__}."
            )
        if max_in_flight is None:
            max_in_flight = 2 * max(1, sum(client.nthreads().values()))
        if not _positive_int(max_in_flight):
            raise ValueError(
                f"max_in_flight must be a positive int or None; got {max_in_flight!r}."
            )
        results = _run_dask(client, model, worker_paths, chunks, args, int(max_in_flight))

    scores = np.full(n, np.nan)
    decisions = np.full(n, np.nan)
    predictions = np.zeros(n, dtype=np.int8)
    errors = {}
    done = {}
    next_start = 0
    writer = tmp = handle = None
    bar = tqdm(total=n, unit="image", desc="score_files", disable=not progress)
    try:
        if out is not None:
            fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
            handle = os.fdopen(fd, "w", newline="", encoding="utf-8")
            writer = csv.writer(handle, lineterminator="\n")
            header = ["path", "score", "decision", "prediction"]
            writer.writerow(header + (["error"] if on_error == "skip" else []))
        for start, stop, result in results:
            scores[start:stop] = result["scores"]
            decisions[start:stop] = result["decisions"]
            predictions[start:stop] = result["predictions"]
            for position, message in result["errors"]:
                errors[start + position] = message
            done[start] = stop
            bar.update(stop - start)
            # Rows go out in input order: a chunk waits until every earlier one is written.
            while next_start in done:
                stop_ = done.pop(next_start)
                if writer is not None:
                    _write_rows(
                        writer, paths, scores, decisions, predictions, errors,
                        next_start, stop_, on_error,
                    )
                    handle.flush()
                next_start = stop_
        if handle is not None:
            handle.close()
            handle = None
            os.replace(tmp, out)
            tmp = None
    finally:
        bar.close()
        if handle is not None:
            handle.close()
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        results.close()
    skipped = [(paths[i], errors[i]) for i in sorted(errors)]
    if skipped:
        first_path, first_reason = skipped[0]
        warnings.warn(
            f"score_files skipped {len(skipped)} of {n} files that could not be read "
            f"(first: '{first_path}': {first_reason}); their rows have no score"
            + (f" and give the reason in the error column of '{out}'." if out is not None else "."),
            UserWarning,
            stacklevel=2,
        )
    return FileScores(paths, scores, decisions, predictions, skipped, out)


def _write_rows(writer, paths, scores, decisions, predictions, errors, start, stop, on_error):
    for i in range(start, stop):
        if i in errors:
            writer.writerow([paths[i], "", "", "", errors[i]])
            continue
        # repr: the shortest text that reads back as the same float64.
        row = [paths[i], repr(float(scores[i])), repr(float(decisions[i])), int(predictions[i])]
        writer.writerow(row + ([""] if on_error == "skip" else []))
