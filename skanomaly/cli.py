"""Command line of skanomaly: train, score and evaluate detectors on folders of images.

    skanomaly fit --detector VAEDetector --param max_epochs=20 --train normals/ --out model.skan
    skanomaly calibrate model.skan --data site_b_normals/
    skanomaly score model.skan new_images/ --out scores.csv --maps maps/ --alpha 0.05
    skanomaly evaluate model.skan --data test/ --report report/
    skanomaly demo

Every bad value is an error with exit code 2 and one line on stderr; outputs are
written to temporary names and moved into place at the end, so a failed command leaves
nothing behind.
"""

import argparse
import ast
import csv
import json
import os
import re
import shutil
import sys
import time
import uuid
from pathlib import Path

# Class folders and CSV labels: a class named NORMAL (any case) is label 0, every other
# class (ABNORMAL, PNEUMONIA, NODULE, ...) is label 1.
NORMAL_CLASS = "NORMAL"
# What `fit` trains without --detector or --config: the recipe of the package that held
# on films of another acquisition and on a random split alike (issue 19's benchmarks,
# five seeds each; chosen on validation films, not on the held-out ones): the lung
# fields only (LungMasker, after any --step), opacities as the synthetic anomalies. On
# whole films with both kinds the same detector spread over seeds (one in five failed);
# the reconstruction detectors fall below the exposure baseline there.
DEFAULT_DETECTOR = "SyntheticAnomalyDetector"
DEFAULT_PARAMS = {"anomaly_kinds": "opacity"}
DEFAULT_STEPS = ("LungMasker",)
# Subfolder names that say "these are classes" when no normal class folder is among
# them: such a folder is refused rather than pooled into one training set.
_CLASS_LIKE_NAMES = {
    "ABNORMAL", "ANOMALY", "ANOMALOUS", "BACTERIA", "CONTROL", "COVID", "COVID19", "COVID-19",
    "DISEASE", "DISEASED", "GOOD", "HEALTHY", "LESION", "NEGATIVE", "NODULE", "NODULES",
    "NON-NODULE", "NORMAL", "OPACITY", "PATHOLOGY", "PNEUMONIA", "POSITIVE", "SICK",
    "TB", "TUBERCULOSIS", "TUMOR", "TUMOUR", "VIRUS",
}
_PATH_COLUMNS = ("path", "file", "filename", "image")
_LABEL_COLUMN = "label"
# Steps that take something other than (n, H, W) images cannot be named on the command
# line (MaskApplier needs images and masks stacked as (n, 2, H, W)).
_EXCLUDED_STEPS = frozenset({"MaskApplier"})
# Parameters that are not plain data, or that the command line sets itself.
_EXCLUDED_PARAMS = frozenset({"callbacks"})
_CONFIG_KEYS = ("steps", "detector", "size")
_MAX_VALUE_LENGTH = 2000


class UsageError(Exception):
    """A bad value on the command line or in an input file: exit code 2, one line."""


# ---------------------------------------------------------------------- argparse
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors raised as :class:`UsageError` (main prints them)."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')", self.prog)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def _threshold_options(parser):
    rule = parser.add_mutually_exclusive_group()
    rule.add_argument(
        "--alpha", type=_fraction, metavar="A",
        help="calibrated models: flag images whose conformal p-value is at most A (at "
        "most an A share of normal images like the calibration images are flagged); "
        "default: the model's alpha",
    )
    rule.add_argument(
        "--fdr", type=_fraction, metavar="Q",
        help="calibrated models: flag by Benjamini-Hochberg over all images of the run, "
        "so that at most a Q share of the flagged images are expected to be normal",
    )


def _int(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _common_options():
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument(
        "--device",
        help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N' or 'mps'; default: "
        "the detector's (fit) or the saved model's (score, evaluate)",
    )
    group.add_argument(
        "--batch-size", type=_positive_int, help="images per batch (training and scoring)"
    )
    group.add_argument(
        "--seed", type=_int, default=None,
        help="random seed of training (fit, demo; default 0); scoring is deterministic",
    )
    loud = group.add_mutually_exclusive_group()
    loud.add_argument(
        "-v", "--verbose", dest="verbosity", action="store_const", const=2, default=1,
        help="more detail (parameters, timings; tracebacks on errors)",
    )
    loud.add_argument(
        "-q", "--quiet", dest="verbosity", action="store_const", const=0,
        help="no progress bars or messages; only results and errors",
    )
    return common


def _choices():
    from . import detectors, preprocessing

    dets = {name: getattr(detectors, name) for name in detectors.__all__}
    steps = {
        name: getattr(preprocessing, name)
        for name in preprocessing.__all__
        if name not in _EXCLUDED_STEPS
    }
    return dets, steps


def build_parser():
    """The ``skanomaly`` argument parser (exposed for documentation and tests)."""
    dets, steps = _choices()
    common = _common_options()
    parser = _Parser(
        prog="skanomaly",
        description="Deep anomaly detection for radiographs: train on folders of normal "
        "images, score new images, evaluate on labelled folders.",
        epilog="Labels: in a folder that has a NORMAL/ subfolder, every subfolder is a class; "
        "NORMAL (any case) is 0 = normal and any other class folder (ABNORMAL, PNEUMONIA, "
        "...) is 1 = abnormal. A CSV needs a 'path' column and may have a 'label' column "
        "(0/1, or class names by the same rule); relative paths are read from the CSV's "
        "folder. Errors exit with code 2.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"skanomaly {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = sub.add_parser(
        "fit", parents=[common], help="train a detector (and preprocessing) on normal images",
        description="Train a detector, optionally behind preprocessing steps, on normal "
        "images and write a safe model file (skanomaly.io.save_model). Labelled input "
        "(NORMAL/ + class folders, or a CSV with a label column) trains on the normal "
        "images only.",
    )
    what = fit.add_mutually_exclusive_group()
    what.add_argument(
        "--config", metavar="FILE",
        help="JSON (or YAML, with pyyaml) pipeline: {\"steps\": [{\"Resize\": {\"size\": 64}}, "
        "\"CLAHE\"], \"detector\": {\"VAEDetector\": {\"max_epochs\": 20}}, \"size\": 64}",
    )
    # Any case, with or without the "Detector" suffix: --detector vae.
    canonical = {name.lower(): name for name in dets}
    canonical.update({name.lower().removesuffix("detector"): name for name in dets})
    what.add_argument(
        "--detector", choices=sorted(dets), type=lambda t: canonical.get(t.lower(), t),
        help="detector class (any case; 'vae' for VAEDetector); default: "
        f"{DEFAULT_DETECTOR} with {', '.join(f'{k}={v}' for k, v in DEFAULT_PARAMS.items())} "
        f"behind {', '.join(DEFAULT_STEPS)} (after any --step), the recipe that holds up on "
        "films from another acquisition (benchmarks/README.md, acquisition shift); a "
        "--detector given is trained with its own defaults",
    )
    fit.add_argument(
        "--param", action="append", default=[], metavar="K=V",
        help="detector parameter, repeatable; V is a number, true/false/null, a tuple "
        "such as 16,32,64 or ('topk', 5), else a string (never evaluated as code)",
    )
    fit.add_argument(
        "--step", action="append", default=[], metavar="NAME[:K=V,...]",
        help=f"preprocessing step before the detector, repeatable, in order; NAME in "
        f"{{{', '.join(sorted(steps))}}}, e.g. --step Resize:size=64 --step CLAHE:clip_limit=0.02",
    )
    fit.add_argument(
        "--train", required=True, metavar="DIR_OR_CSV",
        help="training images: a folder (searched recursively), a NORMAL/-class layout or a CSV",
    )
    fit.add_argument(
        "--unlabelled", metavar="DIR_OR_CSV",
        help="a semi-supervised detector's (HealthyGAN's) second training set: an unlabelled "
        "mix of normal and abnormal images, never the test images (any labels it has are "
        "not used); --train then holds the known-normal images",
    )
    fit.add_argument("--out", required=True, metavar="MODEL", help="model file to write")
    fit.add_argument(
        "--normal-class", default=NORMAL_CLASS, metavar="NAME",
        help="the class folder (or CSV label) of normal images, any case (default: NORMAL); "
        "every other class is abnormal",
    )
    fit.add_argument(
        "--size", type=_positive_int, metavar="N",
        help="resize every image to NxN when reading (needed when files differ in size)",
    )
    fit.add_argument(
        "--bits-stored", type=_positive_int, metavar="N",
        help="the images are N-bit data in 16-bit files (e.g. 12): scale by 2**N - 1, not "
        "65535; puts Rescale(bits_stored=N, container_bits=16) first in the model, so "
        "score and evaluate need no option",
    )
    fit.add_argument(
        "--calibration", type=_fraction, metavar="FRACTION",
        help="hold out this share of the training images (e.g. 0.2) to calibrate "
        "conformal p-values: 'score --alpha' then has a guaranteed false-alarm rate on "
        "new normal images like these (see 'skanomaly calibrate')",
    )
    fit.add_argument(
        "--alpha", type=_fraction, default=None, metavar="A",
        help="with --calibration: the false-alarm rate the model flags at (default 0.05)",
    )
    fit.add_argument("--key-file", metavar="FILE", help="sign the model with the secret in FILE")

    calibrate = sub.add_parser(
        "calibrate", parents=[common],
        help="calibrate a model on normal images: conformal p-values, a guaranteed false-alarm rate",
        description="Score normal images the model never trained on and keep their scores: "
        "'score' and 'evaluate' then give each image a conformal p-value and flag those at "
        "most --alpha, which flags at most an alpha share of new normal images like these "
        "(same site, scanner and protocol). Recalibrate on a few dozen normal films of each "
        "new site or acquisition period: the guarantee does not carry over a shift. The "
        "model keeps its networks; only the calibration is replaced.",
    )
    calibrate.add_argument("model", help="model file written by 'skanomaly fit'")
    calibrate.add_argument(
        "--data", required=True, metavar="DIR_OR_CSV",
        help="normal images not used in training: a folder, a NORMAL/-class layout (its "
        "normal class is used) or a CSV",
    )
    calibrate.add_argument(
        "--out", metavar="MODEL", help="model file to write (default: replace MODEL)"
    )
    calibrate.add_argument(
        "--alpha", type=_fraction, default=None, metavar="A",
        help="the false-alarm rate to flag at (default: the model's, else 0.05)",
    )
    calibrate.add_argument(
        "--normal-class", default=NORMAL_CLASS, metavar="NAME",
        help="the class folder (or CSV label) of normal images, any case (default: NORMAL)",
    )
    calibrate.add_argument(
        "--key-file", metavar="FILE",
        help="refuse a model not signed with the secret in FILE, and sign the output with it",
    )

    score = sub.add_parser(
        "score", parents=[common], help="score image files with a model, write a CSV",
        description="Score images with a model file: one CSV row per file (path, score, "
        "decision, prediction); score is higher for more normal images, decision = score "
        "- offset_, prediction is 1 (normal) or -1 (flagged abnormal).",
    )
    score.add_argument("model", help="model file written by 'skanomaly fit'")
    score.add_argument(
        "images", nargs="+", metavar="IMAGES_OR_DIRS",
        help="image files, folders (searched recursively) or CSV files with a 'path' column",
    )
    score.add_argument("--out", required=True, metavar="CSV", help="CSV file to write")
    score.add_argument(
        "--maps", metavar="DIR",
        help="also write one anomaly-map overlay PNG per image into DIR, at the image file's "
        "own size, with a colour bar (one colour scale for all images of the run)",
    )
    score.add_argument(
        "--chunk-size", type=_positive_int, metavar="N",
        help="read and score N files at a time (memory bounded by N, for large archives; "
        "skanomaly.parallel.score_files); not with --maps or --fdr, and without the "
        "pvalue column (predictions of a calibrated model are still at its alpha)",
    )
    score.add_argument(
        "--key-file", metavar="FILE", help="refuse a model not signed with this secret"
    )
    _threshold_options(score)

    evaluate = sub.add_parser(
        "evaluate", parents=[common],
        help="ROC AUC, AP, sensitivity/specificity on labelled images",
        description="Evaluate a model on labelled images: prints ROC AUC, average precision "
        "and the sensitivity / specificity of predict() at the model's threshold (offset_); "
        "with --report, writes report.json, report.png (ROC curve, score histograms per "
        "class, anomaly maps of the lowest-scored images) and scores.csv.",
    )
    evaluate.add_argument("model", help="model file written by 'skanomaly fit'")
    evaluate.add_argument(
        "--data", required=True, metavar="DIR_OR_CSV",
        help="a NORMAL/ + class-folder layout, or a CSV with path and label columns",
    )
    evaluate.add_argument("--report", metavar="DIR", help="folder to write the report into")
    evaluate.add_argument(
        "--normal-class", default=NORMAL_CLASS, metavar="NAME",
        help="the class folder (or CSV label) of normal images, any case (default: NORMAL); "
        "every other class is abnormal",
    )
    evaluate.add_argument(
        "--key-file", metavar="FILE", help="refuse a model not signed with this secret"
    )
    _threshold_options(evaluate)

    demo = sub.add_parser(
        "demo", parents=[common],
        help="train a CAE on synthetic chest phantoms, print ROC AUC, write model + PNG",
    )
    demo.add_argument("--out", default="skanomaly-demo", help="output folder")
    demo.add_argument("--image-size", type=_positive_int, default=32)
    demo.add_argument("--n-train", type=_positive_int, default=300)
    demo.add_argument("--n-test", type=_positive_int, default=200)
    demo.add_argument("--epochs", type=_positive_int, default=12)
    demo.add_argument("--topk", type=_positive_int, default=5, help="k of the top-k error score")
    return parser


# --------------------------------------------------------------- output staging
class _Staging:
    """Outputs written under temporary names next to their targets, moved into place
    by :meth:`commit`; removed if the command fails, so nothing is half-written."""

    def __init__(self):
        self._items = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False

    @staticmethod
    def _tmp_name(final):
        return final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"

    def file(self, final, what):
        final = Path(final)
        _check_output_parent(final, what)
        if final.is_dir():
            raise UsageError(f"{what} '{final}' is a folder; give a file name")
        tmp = self._tmp_name(final)
        self._items.append(("file", tmp, final))
        return tmp

    def folder(self, final, what):
        final = Path(final)
        _check_output_parent(final, what)
        if final.exists() and not final.is_dir():
            raise UsageError(f"{what} '{final}' exists and is not a folder")
        tmp = self._tmp_name(final)
        tmp.mkdir()
        self._items.append(("folder", tmp, final))
        return tmp

    def commit(self):
        umask = os.umask(0)
        os.umask(umask)
        for kind, tmp, final in self._items:
            if kind == "file":
                if tmp.exists():
                    # Temporary files are private (0600); outputs get the usual mode.
                    os.chmod(tmp, 0o666 & ~umask)
                    os.replace(tmp, final)
            elif not final.exists():
                os.rename(tmp, final)
            else:  # an existing folder keeps its other files; ours replace same names
                for entry in sorted(tmp.iterdir()):
                    target = final / entry.name
                    if target.is_dir():
                        shutil.rmtree(target)
                    os.replace(entry, target)
                tmp.rmdir()
        self._items = []

    def abort(self):
        for kind, tmp, _ in self._items:
            if kind == "file":
                tmp.unlink(missing_ok=True)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        self._items = []


def _check_output_parent(final, what):
    parent = final.parent
    if not parent.is_dir():
        raise UsageError(f"{what} '{final}': folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{what} '{final}': folder '{parent}' is not writable")


# ----------------------------------------------------------- values and pipelines
def parse_value(text):
    """A command-line or config value: a Python/JSON literal, else the string itself.

    Numbers, ``true``/``false``/``null`` (and ``True``/``False``/``None``), quoted
    strings, tuples (``16,32,64`` or ``('topk', 5)``) and lists are read with
    :func:`ast.literal_eval` / :func:`json.loads`, which evaluate no code; lists become
    tuples (scikit-learn parameters such as ``channels`` are tuples). Anything else is
    taken as a plain string (``mse``, ``auto``).
    """
    text = text.strip()
    if len(text) > _MAX_VALUE_LENGTH:
        raise UsageError(f"value of {len(text)} characters is too long")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        try:
            value = json.loads(text)
        except ValueError:
            value = text
    return _plain(value, text)


def _plain(value, text):
    """Check that a parsed value is plain data; lists become tuples."""
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v, text) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise UsageError(f"value {text!r} is a {type(value).__name__}; use numbers, strings or tuples")


def _param_names(cls):
    import inspect

    names = [
        n for n, p in inspect.signature(cls.__init__).parameters.items()
        if n != "self" and p.kind is not p.VAR_KEYWORD and p.kind is not p.VAR_POSITIONAL
    ]
    return [n for n in names if n not in _EXCLUDED_PARAMS]


def _split_assignments(text):
    """``"a=1,b=(2,3)"`` -> ``["a=1", "b=(2,3)"]``: split at commas before ``name=``."""
    return [part for part in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", text) if part.strip()]


def _parse_assignment(text, where):
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise UsageError(f"{where}: expected K=V, got {text!r}")
    return name, parse_value(value)


def _check_params(cls, params, where):
    valid = _param_names(cls)
    for name in params:
        if name not in valid:
            raise UsageError(
                f"{where}: {cls.__name__} has no parameter {name!r} (choose from "
                f"{', '.join(valid)})"
            )
    return params


def _lookup(name, table, what):
    by_lower = {key.lower(): key for key in table}
    key = by_lower.get(str(name).lower())
    if key is None:
        raise UsageError(
            f"unknown {what} {name!r} (choose from {', '.join(sorted(table))})"
        )
    return key


def _read_config(path):
    """The ``{"steps": [...], "detector": {...}, "size": N}`` mapping of a config file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file '{path}' does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UsageError(
                f"config '{path}' is YAML, which needs pyyaml: pip install pyyaml (or "
                "write the config as JSON)"
            ) from None
        try:
            config = yaml.safe_load(text)  # safe_load builds plain data only
        except yaml.YAMLError as err:
            raise UsageError(f"config '{path}' is not valid YAML: {_one_line(err)}") from None
    else:
        try:
            config = json.loads(text)
        except ValueError as err:
            raise UsageError(f"config '{path}' is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise UsageError(f"config '{path}' must be a mapping with keys {', '.join(_CONFIG_KEYS)}")
    unknown = sorted(set(config) - set(_CONFIG_KEYS))
    if unknown:
        raise UsageError(
            f"config '{path}' has unknown keys {unknown} (choose from {', '.join(_CONFIG_KEYS)})"
        )
    if "detector" not in config:
        raise UsageError(f"config '{path}' names no detector ('detector': {{NAME: {{...}}}})")
    return config


def _named_entry(entry, where):
    """``"CLAHE"`` or ``{"CLAHE": {...}}`` -> ``("CLAHE", {...})``."""
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and len(entry) == 1:
        ((name, params),) = entry.items()
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise UsageError(f"{where}: parameters of {name!r} must be a mapping")
        return name, {str(k): _plain(v, repr(v)) for k, v in params.items()}
    raise UsageError(f"{where}: expected NAME or {{NAME: {{parameters}}}}, got {entry!r}")


def _build_spec(args):
    """``(steps, detector, size)`` from the command line or the config, validated.

    ``steps`` is a list of ``(class, params)``, ``detector`` one ``(class, params)``.
    """
    dets, step_table = _choices()
    size = args.size
    if args.config:
        if args.step:
            raise UsageError("give the steps in --config or with --step, not both")
        config = _read_config(args.config)
        det_name, det_params = _named_entry(config["detector"], f"config '{args.config}' detector")
        raw_steps = config.get("steps") or []
        if not isinstance(raw_steps, list):
            raise UsageError(f"config '{args.config}': 'steps' must be a list")
        steps = [_named_entry(s, f"config '{args.config}' steps") for s in raw_steps]
        if size is None and config.get("size") is not None:
            size = config["size"]
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                raise UsageError(f"config '{args.config}': size must be a positive integer")
    else:
        det_name, det_params = args.detector or DEFAULT_DETECTOR, {}
        steps = []
        for text in args.step:
            name, _, rest = text.partition(":")
            params = dict(_parse_assignment(a, f"--step {text}") for a in _split_assignments(rest))
            steps.append((name.strip(), params))
        if args.detector is None:
            det_params.update(DEFAULT_PARAMS)
            named = {name.lower() for name, _ in steps}
            steps += [(name, {}) for name in DEFAULT_STEPS if name.lower() not in named]
    for text in args.param:
        name, value = _parse_assignment(text, f"--param {text}")
        det_params[name] = value

    det_cls = dets[_lookup(det_name, dets, "detector")]
    _check_params(det_cls, det_params, "detector")
    built_steps = []
    for name, params in steps:
        cls = step_table[_lookup(name, step_table, "step")]
        _check_params(cls, params, f"step {cls.__name__}")
        built_steps.append((cls, params))
    if getattr(args, "bits_stored", None) is not None:
        from .preprocessing import Rescale

        if args.bits_stored > 16:
            raise UsageError(f"--bits-stored {args.bits_stored}: image files hold at most 16 bits")
        built_steps.insert(0, (Rescale, {"bits_stored": args.bits_stored, "container_bits": 16}))
    return built_steps, (det_cls, det_params), size


def _instantiate(cls, params, where):
    try:
        estimator = cls(**params)
    except TypeError as err:  # a required parameter is missing (Resize needs size=)
        missing = re.findall(r"'(\w+)'", str(err))
        if "required" in str(err) and missing:
            raise UsageError(
                f"{where} needs {', '.join(m + '=...' for m in missing)} (e.g. "
                f"--step {cls.__name__}:{missing[0]}=64)"
            ) from None
        raise UsageError(f"{where}: {_one_line(err)}") from None
    try:
        if hasattr(estimator, "_check_scoring_params"):
            estimator._check_scoring_params()
        else:
            estimator._validate_params()
    except (ValueError, TypeError) as err:
        raise UsageError(f"{where}: {_one_line(err)}") from None
    return estimator


def _is_calibrated(estimator):
    return hasattr(estimator, "calibration_scores_")


def _scoring_model(model):
    """What transforms and scores: the model, or the model a ConformalDetector wraps."""
    return model.estimator_ if _is_calibrated(model) else model


def _conformal_of(model):
    """The model's ConformalDetector (at its root or as its last step), or None."""
    if _is_calibrated(model):
        return model
    last = model.steps[-1][1] if hasattr(model, "steps") else None
    return last if _is_calibrated(last) else None


def _detector_of(model):
    model = _scoring_model(model)
    det = model.steps[-1][1] if hasattr(model, "steps") else model
    return det.estimator_ if _is_calibrated(det) else det


def _transform(model, X):
    """Run ``X`` through every step before the detector (samplers do nothing here)."""
    model = _scoring_model(model)
    if not hasattr(model, "steps"):
        return X
    for _, step in model.steps[:-1]:
        if step is None or step == "passthrough":
            continue
        if hasattr(step, "fit_resample") and not hasattr(step, "transform"):
            continue
        X = step.transform(X)
    return X


def _input_shape(model):
    """``(H, W)`` the model was fitted on: that of its first step."""
    model = _scoring_model(model)
    first = model.steps[0][1] if hasattr(model, "steps") else model
    for _, step in getattr(model, "steps", [(None, model)]):
        if hasattr(step, "image_shape_"):
            first = step
            break
    shape = getattr(first, "image_shape_", None)
    if shape is None or len(shape) != 2:
        return None
    return tuple(int(s) for s in shape)


# --------------------------------------------------------------- reading inputs
def _label_of(value, where, normal_class=NORMAL_CLASS):
    text = str(value).strip()
    if text in ("0", "1"):
        return int(text)
    if not text:
        raise UsageError(f"{where}: empty label")
    try:
        number = float(text)
    except ValueError:
        return 0 if text.upper() == normal_class.upper() else 1
    if number in (0.0, 1.0):
        return int(number)
    raise UsageError(f"{where}: label {text!r} is neither 0, 1 nor a class name")


def _read_csv(path, normal_class=NORMAL_CLASS):
    """``(paths, labels or None)`` of a CSV with a path column and an optional label one."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            fields = [(f or "").strip().lower() for f in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UsageError(f"cannot read CSV '{path}': {_one_line(err)}") from None
    column = next((c for c in _PATH_COLUMNS if c in fields), None)
    if column is None:
        raise UsageError(
            f"CSV '{path}' has no path column (name one of {', '.join(_PATH_COLUMNS)}; "
            f"found {', '.join(fields) or 'no header'})"
        )
    if not rows:
        raise UsageError(f"CSV '{path}' lists no files")
    rows = [{(k or "").strip().lower(): (v or "") for k, v in row.items()} for row in rows]
    paths, labels = [], []
    for i, row in enumerate(rows, start=2):
        text = row[column].strip()
        if not text:
            raise UsageError(f"CSV '{path}' line {i}: empty {column}")
        file = Path(text)
        paths.append(file if file.is_absolute() else path.parent / file)
        if _LABEL_COLUMN in fields:
            labels.append(_label_of(row[_LABEL_COLUMN], f"CSV '{path}' line {i}", normal_class))
    for file in paths:
        if not file.is_file():
            raise UsageError(f"CSV '{path}' lists '{file}', which does not exist")
    return paths, (labels if _LABEL_COLUMN in fields else None)


def _list_images(folder):
    from .datasets._io import _list_folder

    try:
        return _list_folder(folder, True)
    except ValueError as err:
        raise UsageError(_one_line(err)) from None


def _class_folders(folder, normal_class, what):
    """The class subfolders of ``folder``, or None where it is a plain image tree.

    A folder whose subfolders look like classes (HEALTHY/ + PNEUMONIA/, ...) but
    hold no ``normal_class`` folder is refused: reading it as a plain tree would pool
    normal and abnormal images into one training set without a word."""
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if any(d.name.upper() == normal_class.upper() for d in subdirs):
        return subdirs
    class_like = [d.name for d in subdirs if d.name.upper() in _CLASS_LIKE_NAMES]
    if class_like:
        names = ", ".join(d.name + "/" for d in subdirs)
        raise UsageError(
            f"{what} '{folder}' has class folders ({names}) but none named "
            f"{normal_class}/: its images would be pooled whatever their class. Name the "
            f"folder of normal images with --normal-class (e.g. --normal-class "
            f"{class_like[0]} if {class_like[0]}/ holds the normal images), rename it "
            f"{NORMAL_CLASS}/, or point {what} at the normal folder itself"
        )
    return None


def _read_labelled_folder(folder, subdirs, normal_class=NORMAL_CLASS):
    from .datasets._io import IMAGE_EXTENSIONS

    loose = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if loose:
        raise UsageError(
            f"'{folder}' has class folders ({', '.join(d.name for d in subdirs)}) but also "
            f"images outside them (e.g. '{loose[0].name}'); move them into a class folder"
        )
    paths, labels = [], []
    for d in subdirs:
        try:
            files = _list_images(d)
        except UsageError:
            continue  # an empty class folder adds nothing
        paths += files
        labels += [0 if d.name.upper() == normal_class.upper() else 1] * len(files)
    return paths, labels


def _gather(spec, what, normal_class=NORMAL_CLASS):
    """``(paths, labels or None)`` from a folder, a class-folder layout or a CSV."""
    spec = Path(spec)
    if spec.is_dir():
        subdirs = _class_folders(spec, normal_class, what)
        if subdirs is not None:
            return _read_labelled_folder(spec, subdirs, normal_class)
        return _list_images(spec), None
    if spec.is_file() and spec.suffix.lower() == ".csv":
        return _read_csv(spec, normal_class)
    if spec.exists():
        raise UsageError(f"{what} '{spec}' is neither a folder nor a .csv file")
    raise UsageError(f"{what} '{spec}' does not exist")


def _load(paths, size, args, model=None, *, fitting=False):
    import warnings

    from .datasets import load_images

    if args.verbosity:
        _info(args, f"Reading {_count(len(paths), 'image')} ...")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            images = load_images(paths, size=size)
        except ValueError as err:
            message = _one_line(err)
            if "differ in size" in message:
                message = message.split(" Pass size=")[0] + " Pass --size N to resize them."
            raise UsageError(message) from None
    low_bit = [w for w in caught if "looks like 10- or 12-bit data" in str(w.message)]
    if low_bit and args.verbosity and not _rescales_low_bit_data(model):
        largest = max(int(re.search(r"largest value is (\d+)", str(w.message)).group(1)) for w in low_bit)
        bits = max(8, int(largest).bit_length())
        advice = (
            f"refit with --bits-stored {bits} (scales by {2**bits - 1}, kept in the model) or "
            "--step Rescale (min-max per image)"
            if not fitting
            else f"pass --bits-stored {bits} (scales by {2**bits - 1}, kept in the model) or "
            "--step Rescale (min-max per image)"
        )
        _info(
            args,
            f"Warning: {_count(len(low_bit), 'file')} of {len(paths)} hold 16-bit pixels no "
            f"larger than {largest} (first: {_first_path(low_bit[0])}): {bits}-bit data, which "
            f"divided by 65535 uses {100 * largest / 65535:.1f} % of [0, 1]; {advice}.",
        )
    for warning in caught:
        if warning not in low_bit and args.verbosity:
            _info(args, f"Warning: {_one_line(warning.message)}")
    return images


def _first_path(warning):
    found = re.search(r"Image file '([^']*)'", str(warning.message))
    return found.group(1) if found else "?"


def _rescales_low_bit_data(model):
    """Whether the model starts by undoing the 16-bit scaling of low-bit files."""
    if model is None:
        return False
    model = _scoring_model(model)
    steps = [s for _, s in getattr(model, "steps", [])]
    return bool(steps) and getattr(steps[0], "container_bits", None) is not None


def _read_key(path):
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"key file '{path}' does not exist")
    key = path.read_bytes().rstrip(b"\r\n")
    if not key:
        raise UsageError(f"key file '{path}' is empty")
    return key


def _check_device(device):
    if device is None:
        return
    from .base import resolve_device

    try:
        resolve_device(device)
    except ValueError as err:
        raise UsageError(_one_line(err)) from None


def _load_model(args):
    import warnings

    from .io import load_model

    _check_device(args.device)
    key = _read_key(args.key_file)
    with warnings.catch_warnings():
        if not args.verbosity:
            warnings.simplefilter("ignore")
        try:
            model = load_model(args.model, device=args.device, key=key)
        except ValueError as err:
            raise UsageError(_one_line(err)) from None  # the message names the file
    det = _detector_of(model)
    if args.batch_size is not None:
        det.set_params(batch_size=args.batch_size)
    # The detector's own tqdm bar over scoring batches doubles as the progress bar.
    det.set_params(verbose=1 if args.verbosity else 0)
    return model


# ----------------------------------------------------------------- messages
def _count(n, noun):
    """``"1 image"``, ``"3 images"``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _one_line(err):
    return " ".join(str(err).split())


def _info(args, message, level=1):
    if args.verbosity >= level:
        print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------- commands
def _fit(args):
    import numpy as np
    from sklearn.pipeline import make_pipeline

    from .io import save_model
    from .utils.tags import get_detector_tags

    steps, (det_cls, det_params), size = _build_spec(args)
    _check_device(args.device)
    key = _read_key(args.key_file)
    if args.device is not None:
        det_params["device"] = args.device
    if args.batch_size is not None:
        det_params["batch_size"] = args.batch_size
    if args.seed is not None or "random_state" not in det_params:
        det_params["random_state"] = 0 if args.seed is None else args.seed
    det_params["verbose"] = 0
    detector = _instantiate(det_cls, det_params, det_cls.__name__)
    transformers = [_instantiate(cls, p, f"step {cls.__name__}") for cls, p in steps]
    model = make_pipeline(*transformers, detector) if transformers else detector
    if args.alpha is not None and args.calibration is None:
        raise UsageError("--alpha needs --calibration (the share of images to calibrate on)")
    if args.calibration is not None:
        from .conformal import ConformalDetector

        model = ConformalDetector(
            model, calibration=args.calibration, alpha=args.alpha or 0.05,
            random_state=det_params["random_state"],
        )

    semi_supervised = get_detector_tags(detector).labels == "semi-supervised"
    if args.unlabelled is not None and not semi_supervised:
        raise UsageError(
            f"--unlabelled is for detectors that train on an unlabelled mix (HealthyGAN); "
            f"{det_cls.__name__} trains on normal images only: leave --unlabelled out"
        )
    if semi_supervised and args.unlabelled is None:
        raise UsageError(
            f"{det_cls.__name__} trains on two sets: --train (known-normal images) and "
            "--unlabelled DIR_OR_CSV (an unlabelled mix of normal and abnormal images, "
            "never the test images); pass both"
        )
    if semi_supervised and args.calibration is not None:
        raise UsageError(
            "--calibration holds out training images of a one-class detector; calibrate a "
            f"{det_cls.__name__} model afterwards on normal images it never saw: "
            "'skanomaly calibrate MODEL DIR'"
        )

    with _Staging() as staging:
        tmp_model = staging.file(args.out, "--out")
        paths, labels = _gather(args.train, "--train", args.normal_class)
        if labels is not None:
            normal = [p for p, y in zip(paths, labels) if y == 0]
            if not normal:
                raise UsageError(
                    f"--train '{args.train}' has labels but no normal (label 0) images"
                )
            left_out = len(paths) - len(normal)
            rest = f", leaving out {left_out} abnormal ones." if left_out else "."
            _info(
                args,
                f"--train {args.train} is labelled: training on its {len(normal)} normal "
                f"images (label 0){rest}",
            )
            paths = normal
        X = _load(paths, size, args, getattr(model, "estimator", model), fitting=True)
        if X.shape[0] < 2:
            raise UsageError(f"--train '{args.train}' has {X.shape[0]} image; need at least 2")
        y = None
        if args.unlabelled is not None:
            mixed_paths, _ = _gather(args.unlabelled, "--unlabelled", args.normal_class)
            mixed = _load(mixed_paths, size, args, getattr(model, "estimator", model), fitting=True)
            if mixed.shape[1:] != X.shape[1:]:
                raise UsageError(
                    f"--unlabelled images are {mixed.shape[1]}x{mixed.shape[2]} px and --train "
                    f"images {X.shape[1]}x{X.shape[2]}: pass --size N to resize both"
                )
            _info(args, f"Unlabelled mix: {len(mixed_paths)} images from {args.unlabelled}")
            y = np.r_[np.zeros(X.shape[0], dtype=int), -np.ones(mixed.shape[0], dtype=int)]
            X = np.concatenate([X, mixed])
        _info(args, f"Model: {model}", level=2)
        # Every training stage shows its progress (iterations of the total, elapsed,
        # ETA, loss terms) through the detector's own verbose output.
        verbose_param = detector.verbose
        detector.set_params(verbose=max(int(verbose_param), 1) if args.verbosity else 0)
        held_out = ""
        if args.calibration is not None:
            n_cal = _calibration_count(args.calibration, X.shape[0])
            held_out = f", holding out {n_cal} to calibrate"
        _info(
            args,
            f"Training {det_cls.__name__} on {X.shape[0]} images of {X.shape[1]}x{X.shape[2]} "
            f"px{' behind ' + ', '.join(c.__name__ for c, _ in steps) if steps else ''}"
            f"{held_out} ...",
        )
        start = time.perf_counter()
        try:
            model.fit(X, y)
        except ValueError as err:
            raise UsageError(f"training failed: {_one_line(err)}") from None
        seconds = time.perf_counter() - start
        if args.calibration is not None:
            # The fitted clone is what is saved; the given detector was never trained.
            detector = _detector_of(model)
        # Progress only shapes the output; the saved file holds the given parameters.
        detector.set_params(verbose=verbose_param)
        try:
            save_model(model, tmp_model, key=key)
        except (ValueError, TypeError) as err:
            raise UsageError(f"cannot save the model: {_one_line(err)}") from None
    threshold = (
        _operating_point(model) if args.calibration is not None
        else f"threshold offset_ = {detector.offset_:.6g}"
    )
    _info(args, f"Trained in {seconds:.1f} s; {threshold}. Wrote {args.out}")
    return 0


def _calibration_count(calibration, n):
    """Images ShuffleSplit holds out for a fraction ``calibration`` of ``n``."""
    import math

    return math.ceil(calibration * n)


def _operating_point(conformal):
    """One line: the calibrated rule the model flags by."""
    n = conformal.n_calibration_
    if conformal.fdr is not None:
        return (
            f"flags by Benjamini-Hochberg at FDR {conformal.fdr:g} over each run's images "
            f"(conformal p-values from {_count(n, 'calibration image')})"
        )
    cut = conformal.offset_
    rule = f"score below {cut:.6g}" if cut > float("-inf") else "no image (alpha below 1/(n+1))"
    return (
        f"flags p-value <= alpha = {conformal.alpha:g} ({rule}; "
        f"{_count(n, 'calibration image')}, smallest p-value 1/{n + 1})"
    )


def _apply_threshold_options(args, model):
    """Set --alpha / --fdr on the model's ConformalDetector; refuse them without one."""
    conformal = _conformal_of(model)
    if conformal is None:
        if args.alpha is not None or args.fdr is not None:
            option = "--alpha" if args.alpha is not None else "--fdr"
            raise UsageError(
                f"{option} needs a calibrated model, and '{args.model}' has no calibration: run "
                f"'skanomaly calibrate {args.model} --data NORMAL_IMAGES' first (normal "
                "images the model did not train on), or fit with --calibration 0.2"
            )
        return None
    if args.alpha is not None:
        conformal.set_params(alpha=args.alpha, fdr=None)
    elif args.fdr is not None:
        conformal.set_params(fdr=args.fdr)
    if conformal.fdr is None:
        conformal._warn_if_alpha_unreachable()
    return conformal


def _calibrate(args):
    from .conformal import ConformalDetector
    from .io import save_model

    model = _load_model(args)
    key = _read_key(args.key_file)
    inner = _scoring_model(model)
    previous = _conformal_of(model)
    if previous is not None and previous is not model:
        raise UsageError(
            f"'{args.model}' ends in a ConformalDetector inside its pipeline; calibrate it "
            "with ConformalDetector.calibrate in Python"
        )
    alpha = args.alpha or (previous.alpha if previous is not None else 0.05)
    with _Staging() as staging:
        tmp_model = staging.file(args.out or args.model, "--out")
        paths, labels = _gather(args.data, "--data", args.normal_class)
        if labels is not None:
            normal = [p for p, y in zip(paths, labels) if y == 0]
            if not normal:
                raise UsageError(f"--data '{args.data}' has labels but no normal (label 0) images")
            if len(normal) < len(paths):
                _info(
                    args,
                    f"--data {args.data} is labelled: calibrating on its {len(normal)} normal "
                    f"images, leaving out {len(paths) - len(normal)} abnormal ones.",
                )
            paths = normal
        X = _load(paths, _input_shape(model), args, model)
        start = time.perf_counter()
        conformal = ConformalDetector(inner, calibration="prefit", alpha=alpha)
        try:
            conformal.fit(X)
        except ValueError as err:
            raise UsageError(f"calibration failed: {_one_line(err)}") from None
        seconds = time.perf_counter() - start
        try:
            save_model(conformal, tmp_model, key=key)
        except (ValueError, TypeError) as err:
            raise UsageError(f"cannot save the model: {_one_line(err)}") from None
    _info(
        args,
        f"Calibrated on {_count(X.shape[0], 'normal image')} in {seconds:.1f} s; the model "
        f"{_operating_point(conformal)}. Wrote {args.out or args.model}",
    )
    return 0


def _score_table(model, X, want_maps):
    """Scores, decisions, predictions, conformal p-values (None for an uncalibrated
    model) and maps, with one pass through the steps."""
    import numpy as np

    det = _detector_of(model)
    Xt = _transform(model, X)
    scores = det.score_samples(Xt)
    conformal = _conformal_of(model)
    if conformal is None:
        decision = scores - det.offset_
        prediction = np.where(decision < 0, -1, 1)
        pvalues = None
    else:
        decision = scores - conformal.offset_
        prediction = conformal.predict_from_scores(scores)
        pvalues = conformal.pvalues_of_scores(scores)
    maps = _maps_for(model, Xt, X.shape[1:]) if want_maps else None
    return scores, decision, prediction, pvalues, maps


def _maps_for(model, Xt, image_shape):
    """Anomaly maps of transformed images, brought back to ``image_shape``."""
    import numpy as np

    det = _detector_of(model)
    if not hasattr(det, "anomaly_map"):
        raise UsageError(f"{type(det).__name__} gives no anomaly maps; leave out --maps")
    maps = det.anomaly_map(Xt)
    if maps.ndim == 4:  # patch maps: stitch with the pipeline's PatchExtractor
        extractor = next(
            (s for _, s in getattr(model, "steps", []) if hasattr(s, "n_patches_")), None
        )
        if extractor is None:
            maps = maps.reshape(maps.shape[0], -1, *maps.shape[-2:])[:, 0]
        else:
            maps = extractor.inverse_transform(maps)
    if maps.shape[1:] != tuple(image_shape):
        maps = np.stack([_resize_map(m, image_shape) for m in maps])
    return maps


def _resize_map(amap, shape):
    """An anomaly map at ``shape`` (H, W): bilinear, NaN where it was mostly NaN."""
    import cv2
    import numpy as np

    if amap.shape == tuple(shape):
        return amap
    h, w = shape
    linear = cv2.INTER_LINEAR
    valid = cv2.resize(np.isfinite(amap).astype(np.float32), (w, h), interpolation=linear)
    values = cv2.resize(np.nan_to_num(amap).astype(np.float32), (w, h), interpolation=linear)
    return np.where(valid > 0.5, values / np.maximum(valid, 1e-6), np.nan).astype(np.float32)


def _map_range(maps):
    import numpy as np

    finite = maps[np.isfinite(maps)]
    if not finite.size:
        return 0.0, 1.0
    low, high = np.percentile(finite, [1, 99.5])
    return float(low), float(high)


def _write_maps(folder, names, paths, maps):
    """One overlay per file, at the file's own size, with a colour bar; one colour
    range for all files of the run, so that their colours compare."""
    import warnings

    from PIL import Image

    from .datasets import read_image
    from .plotting import add_colour_bar, overlay_anomaly_map

    vmin, vmax = _map_range(maps)
    for name, path, amap in zip(names, paths, maps):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reading the files again: said when loading
            source = read_image(path)
        overlay = overlay_anomaly_map(source, _resize_map(amap, source.shape), vmin=vmin, vmax=vmax)
        Image.fromarray(add_colour_bar(overlay, vmin, vmax)).save(folder / name)


def _map_names(paths):
    width = max(5, len(str(len(paths))))
    return [f"{i:0{width}d}_{Path(p).stem}.png" for i, p in enumerate(paths)]


def _write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _score_paths(specs):
    paths, seen = [], set()
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = _list_images(p)
        elif p.is_file() and p.suffix.lower() == ".csv":
            found = _read_csv(p)[0]
        elif p.is_file():
            found = [p]
        else:
            raise UsageError(f"'{spec}' does not exist")
        for f in found:
            if f not in seen:
                seen.add(f)
                paths.append(f)
    return paths


def _score(args):
    model = _load_model(args)
    conformal = _apply_threshold_options(args, model)
    with _Staging() as staging:
        tmp_csv = staging.file(args.out, "--out")
        tmp_maps = staging.folder(args.maps, "--maps") if args.maps else None
        paths = _score_paths(args.images)
        if args.chunk_size is not None:
            if conformal is not None and conformal.fdr is not None:
                raise UsageError(
                    "--chunk-size scores a chunk at a time, but Benjamini-Hochberg (--fdr, or "
                    "the model's fdr) ranks all images together: use --alpha, or leave out "
                    "--chunk-size"
                )
            return _score_in_chunks(args, model, paths, tmp_csv)
        X = _load(paths, _input_shape(model), args, model)
        start = time.perf_counter()
        try:
            scores, decision, prediction, pvalues, maps = _score_table(
                model, X, tmp_maps is not None
            )
        except ValueError as err:
            raise UsageError(f"scoring failed: {_one_line(err)}") from None
        seconds = time.perf_counter() - start
        header = ["path", "score", "decision", "prediction"]
        columns = [[str(p) for p in paths], scores.tolist(), decision.tolist(), prediction.tolist()]
        if pvalues is not None:
            header.append("pvalue")
            columns.append(pvalues.tolist())
        if maps is not None:
            names = _map_names(paths)
            _write_maps(tmp_maps, names, paths, maps)
            header.append("map")
            columns.append(names)
        _write_csv(tmp_csv, header, zip(*columns))
    flagged = int((prediction == -1).sum())
    if conformal is not None:
        _info(args, f"The model {_operating_point(conformal)}.")
    _info(
        args,
        f"Scored {_count(len(paths), 'image')} in {seconds:.1f} s; {flagged} flagged abnormal "
        f"(prediction -1). Wrote {args.out}"
        + (f" and {len(paths)} maps in {args.maps}" if args.maps else ""),
    )
    return 0


def _score_in_chunks(args, model, paths, tmp_csv):
    """Bounded-memory scoring through :func:`skanomaly.parallel.score_files`."""
    if args.maps:
        raise UsageError("--chunk-size writes scores only; leave out --maps")
    try:
        from .parallel import score_files
    except ImportError as err:
        raise UsageError(f"--chunk-size needs skanomaly.parallel: {_one_line(err)}") from None
    start = time.perf_counter()
    try:
        result = score_files(
            model, [str(p) for p in paths], chunk_size=args.chunk_size, out=tmp_csv,
            size=_input_shape(model), progress=bool(args.verbosity),
        )
    except ValueError as err:
        raise UsageError(f"scoring failed: {_one_line(err)}") from None
    flagged = int((result.predictions == -1).sum())
    _info(
        args,
        f"Scored {_count(len(paths), 'image')} in {time.perf_counter() - start:.1f} s, "
        f"{args.chunk_size} at a time; {flagged} flagged abnormal. Wrote {args.out}",
    )
    return 0


def _evaluate(args):
    import numpy as np
    from sklearn.metrics import average_precision_score

    from .metrics import anomaly_roc_auc, intensity_baseline_scores

    model = _load_model(args)
    conformal = _apply_threshold_options(args, model)
    with _Staging() as staging:
        tmp_report = staging.folder(args.report, "--report") if args.report else None
        paths, labels = _gather(args.data, "--data", args.normal_class)
        if labels is None:
            raise UsageError(
                f"--data '{args.data}' has no labels: use a folder with NORMAL/ and class "
                "subfolders, or a CSV with a 'label' column"
            )
        y = np.asarray(labels, dtype=int)
        if y.min() == y.max():
            which = "normal" if y[0] == 0 else "abnormal"
            raise UsageError(f"--data '{args.data}' holds only {which} images; need both classes")
        X = _load(paths, _input_shape(model), args, model)
        start = time.perf_counter()
        try:
            scores, decision, prediction, pvalues, _ = _score_table(model, X, False)
        except ValueError as err:
            raise UsageError(f"scoring failed: {_one_line(err)}") from None
        seconds = time.perf_counter() - start
        flagged = prediction == -1
        baseline = _exposure_baseline(X, y, intensity_baseline_scores)
        det = _detector_of(model)
        threshold = float(det.offset_ if conformal is None else conformal.offset_)
        report = {
            "model": str(args.model),
            "data": str(args.data),
            "n_images": int(y.size),
            "n_normal": int((y == 0).sum()),
            "n_abnormal": int((y == 1).sum()),
            "roc_auc": anomaly_roc_auc(y, scores),
            "average_precision": float(average_precision_score(y, -scores)),
            "exposure_baseline_roc_auc": None if baseline is None else anomaly_roc_auc(y, baseline),
            "exposure_baseline": "minus the Mahalanobis distance of each film's mean and standard "
            "deviation of intensity from the normal films of --data (each normal film left out of "
            "its own fit); it sees exposure and contrast only",
            "threshold": threshold,
            "sensitivity": float(flagged[y == 1].mean()),
            "specificity": float(1 - flagged[y == 0].mean()),
            "true_positives": int((flagged & (y == 1)).sum()),
            "false_positives": int((flagged & (y == 0)).sum()),
            "true_negatives": int((~flagged & (y == 0)).sum()),
            "false_negatives": int((~flagged & (y == 1)).sum()),
            "score_seconds": seconds,
            "labels": f"folder {NORMAL_CLASS} (any case) or label 0 = normal; any other "
            "class = abnormal",
        }
        if conformal is not None:
            report["operating_point"] = _conformal_report(conformal, y, flagged)
        if tmp_report is not None:
            (tmp_report / "report.json").write_text(json.dumps(report, indent=2))
            header = ["path", "label", "score", "decision", "prediction"]
            columns = [
                [str(p) for p in paths], y.tolist(), scores.tolist(), decision.tolist(),
                prediction.tolist(),
            ]
            if pvalues is not None:
                header.append("pvalue")
                columns.append(pvalues.tolist())
            _write_csv(tmp_report / "scores.csv", header, zip(*columns))
            _report_figure(
                tmp_report / "report.png", model, X, y, scores, threshold, flagged, paths,
                title=f"{Path(args.model).name} on {Path(args.data).name}", baseline=baseline,
            )
    print(
        f"ROC AUC {report['roc_auc']:.4f}  average precision {report['average_precision']:.4f}  "
        f"({report['n_normal']} normal, {report['n_abnormal']} abnormal)"
    )
    if baseline is not None:
        margin = report["roc_auc"] - report["exposure_baseline_roc_auc"]
        verdict = (
            "the model sees more than exposure" if margin > 0.05
            else "the model is not clearly above it: it may have learned exposure, not anatomy"
        )
        print(
            f"Exposure baseline (each film's mean and std only): ROC AUC "
            f"{report['exposure_baseline_roc_auc']:.4f}; {verdict}"
        )
    if conformal is None:
        print(
            f"At the model's threshold (offset_ = {report['threshold']:.6g}): sensitivity "
            f"{report['sensitivity']:.3f}, specificity {report['specificity']:.3f}"
        )
    else:
        point = report["operating_point"]
        low, high = point["false_alarm_rate_95ci"]
        target = (
            f"FDR {point['fdr']:g}: false-discovery proportion "
            f"{point['false_discovery_proportion']:.3f}"
            if point["rule"] == "benjamini-hochberg"
            else f"alpha = {point['alpha']:g}"
        )
        print(
            f"Calibrated ({_count(point['n_calibration'], 'calibration image')}), {target}: "
            f"false-alarm rate {point['false_alarm_rate']:.3f} on "
            f"{_count(report['n_normal'], 'normal image')} (95% CI {low:.3f}-{high:.3f}), "
            f"sensitivity {report['sensitivity']:.3f}"
        )
        if point["rule"] == "alpha" and low > point["alpha"]:
            print(
                f"The false-alarm rate is above alpha beyond chance: these normal images are "
                f"not like the calibration images (another site, scanner or period?). "
                f"Recalibrate on normal images of this data: 'skanomaly calibrate "
                f"{args.model} --data NORMAL_IMAGES'."
            )
    if args.report:
        _info(args, f"Wrote {Path(args.report) / 'report.json'}, report.png and scores.csv")
    return 0


def _exposure_baseline(X, y, baseline_scores):
    """Scores of the exposure baseline on the evaluated films, fitted on their normal
    films (each normal film scored leaving itself out); None with under 3 normal films.

    Fitted on the same acquisition as the films it scores, it is at an advantage over a
    model trained elsewhere: a model above it has learned more than exposure."""
    import numpy as np

    normal = np.flatnonzero(y == 0)
    if normal.size < 3 or X.ndim != 3:
        return None
    scores = np.empty(len(y))
    scores[normal] = baseline_scores(X[normal])
    scores[y != 0] = baseline_scores(X[normal], X[y != 0])
    return scores


def _conformal_report(conformal, y, flagged):
    """The calibrated operating point and what it did on labelled images."""
    from scipy.stats import binomtest

    normal_flagged = int((flagged & (y == 0)).sum())
    n_normal = int((y == 0).sum())
    interval = binomtest(normal_flagged, n_normal).proportion_ci(confidence_level=0.95)
    n_flagged = int(flagged.sum())
    return {
        "rule": "alpha" if conformal.fdr is None else "benjamini-hochberg",
        "alpha": float(conformal.alpha),
        "fdr": None if conformal.fdr is None else float(conformal.fdr),
        "n_calibration": int(conformal.n_calibration_),
        "smallest_pvalue": 1.0 / (conformal.n_calibration_ + 1),
        "false_alarm_rate": normal_flagged / n_normal,
        "false_alarm_rate_95ci": [float(interval.low), float(interval.high)],
        "false_discovery_proportion": (
            float((flagged & (y == 0)).sum() / n_flagged) if n_flagged else 0.0
        ),
        "guarantee": "at most alpha of normal images flagged, in expectation over the "
        "calibration set, for normal images exchangeable with the calibration images (same "
        "site, scanner, protocol); with fdr, Benjamini-Hochberg over this run's images",
    }


def _report_figure(path, model, X, y, scores, offset, flagged, paths, *, title, n_worst=8, baseline=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import roc_auc_score, roc_curve

    from .plotting import overlay_anomaly_map

    worst = np.argsort(scores, kind="stable")[:n_worst]
    maps = _maps_for(model, _transform(model, X[worst]), X.shape[1:])
    vmin, vmax = _map_range(maps)
    ncols = max(4, (len(worst) + 1) // 2)
    fig = plt.figure(figsize=(2.4 * ncols, 8.5))
    grid = fig.add_gridspec(3, ncols, height_ratios=[1.4, 1, 1])
    half = ncols // 2
    ax = fig.add_subplot(grid[0, :half])
    fpr, tpr, _ = roc_curve(y, -scores)
    ax.plot(fpr, tpr, color="C0", label=f"AUC {roc_auc_score(y, -scores):.3f}")
    if baseline is not None:
        fpr_b, tpr_b, _ = roc_curve(y, -baseline)
        ax.plot(fpr_b, tpr_b, color="gray", lw=1,
                label=f"exposure baseline {roc_auc_score(y, -baseline):.3f}")  # fmt: skip
    ax.plot(
        flagged[y == 0].mean(), flagged[y == 1].mean(), "o", color="C3", label="model threshold"
    )
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set(
        xlabel="false-positive rate (1 - specificity)", ylabel="sensitivity",
        title="ROC, abnormal = positive",
    )
    ax.legend(loc="lower right", fontsize=8)
    ax = fig.add_subplot(grid[0, half:])
    bins = np.histogram_bin_edges(scores, bins=30)
    ax.hist(scores[y == 0], bins=bins, alpha=0.6, label=f"normal ({(y == 0).sum()})", color="C0")
    ax.hist(scores[y == 1], bins=bins, alpha=0.6, label=f"abnormal ({(y == 1).sum()})", color="C3")
    ax.axvline(offset, color="k", ls="--", lw=1, label="offset_")
    ax.set(xlabel="score (higher = more normal)", ylabel="images", title="Scores per class")
    ax.legend(fontsize=8)
    for k, i in enumerate(worst):
        ax = fig.add_subplot(grid[1 + k // ncols, k % ncols])
        ax.imshow(overlay_anomaly_map(X[i], maps[k], vmin=vmin, vmax=vmax))
        ax.axis("off")
        ax.set_title(
            f"{'abnormal' if y[i] else 'normal'}  {scores[i]:.4g}\n{Path(paths[i]).name[:28]}",
            fontsize=7,
        )
    fig.suptitle(
        f"{title}: ROC, scores per class, and the "
        f"{len(worst)} lowest-scored (most anomalous) images with their anomaly maps",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _demo(args):
    import joblib
    import matplotlib
    from skorch.callbacks import LRScheduler
    from torch.optim.lr_scheduler import CosineAnnealingLR

    matplotlib.use("Agg")
    import numpy as np

    from .datasets import make_chest_phantoms
    from .detectors import CAEDetector
    from .io import save_model
    from .metrics import anomaly_roc_auc
    from .plotting import plot_anomaly_overlays

    _check_device(args.device)
    seed = 0 if args.seed is None else args.seed
    out = Path(args.out)
    with _Staging() as staging:
        # Everything goes into a temporary folder that becomes --out at the end.
        tmp = staging.folder(out, "--out")
        train = make_chest_phantoms(
            args.n_train, image_size=args.image_size, anomaly_fraction=0.0, random_state=seed
        )
        test = make_chest_phantoms(
            args.n_test, image_size=args.image_size, anomaly_fraction=0.5, random_state=seed + 1
        )
        # The lungs are the region of interest: NaN elsewhere keeps the body outline and
        # the image border, which vary between patients, out of the loss and the score.
        train_roi = np.where(train.masks, train.images, np.nan).astype(np.float32)
        test_roi = np.where(test.masks, test.images, np.nan).astype(np.float32)
        if args.verbosity:
            print(
                f"Training a convolutional autoencoder on the lungs of {args.n_train} normal chest "
                f"phantoms ({args.image_size}x{args.image_size}), {args.epochs} epochs ..."
            )
        # A cosine schedule to zero: at a constant rate the AUC after a few epochs depends
        # on where the last steps landed (0.82-0.95 over seeds); annealed, 0.91-0.93.
        detector = CAEDetector(
            channels=(16, 32, 64),
            anomaly_score=("topk", args.topk),
            augment=None,
            lr=2e-3,
            batch_size=args.batch_size or 32,
            max_epochs=args.epochs,
            device=args.device or "auto",
            random_state=seed,
            callbacks=[LRScheduler(CosineAnnealingLR, T_max=args.epochs)],
        )
        start = time.perf_counter()
        try:
            detector.fit(train_roi)
        except ValueError as err:
            raise UsageError(f"training failed: {_one_line(err)}") from None
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        scores = detector.score_samples(test_roi)
        score_ms = 1000 * (time.perf_counter() - start) / len(scores)
        auc = anomaly_roc_auc(test.labels, scores)
        predicted_abnormal = detector.predict(test_roi) == -1
        report = {
            "detector": "CAEDetector",
            "params": {k: v for k, v in detector.get_params().items() if k != "callbacks"},
            "n_train": args.n_train,
            "n_test": args.n_test,
            "image_size": args.image_size,
            "roc_auc": auc,
            "predict_sensitivity": float(predicted_abnormal[test.labels == 1].mean()),
            "predict_specificity": float(1 - predicted_abnormal[test.labels == 0].mean()),
            "train_seconds": train_seconds,
            "score_ms_per_image": score_ms,
        }
        print(
            f"Held-back phantoms: image-level ROC AUC = {auc:.3f} ({args.n_test} images, "
            "half with a nodule)"
        )
        print(
            f"predict() at offset_ (contamination='auto'): sensitivity "
            f"{report['predict_sensitivity']:.2f}, specificity {report['predict_specificity']:.2f}"
        )
        if args.verbosity:
            print(f"Training {train_seconds:.1f} s; scoring {score_ms:.2f} ms/image")

        # The schedule only shapes training; the shared files hold plain parameters.
        detector.set_params(callbacks=None)
        save_model(detector, tmp / "cae_phantoms.safetensors")
        joblib.dump(detector, tmp / "cae_phantoms.joblib")
        order = np.concatenate(
            [np.flatnonzero(test.labels == 1)[:4], np.flatnonzero(test.labels == 0)[:4]]
        )
        fig = plot_anomaly_overlays(
            test.images[order],
            detector.anomaly_map(test_roi[order]),
            labels=test.labels[order],
            centers=test.centers[order],
            scores=scores[order],
        )
        fig.savefig(tmp / "anomaly_maps.png", dpi=110)
        import matplotlib.pyplot as plt

        plt.close(fig)
        (tmp / "demo_report.json").write_text(json.dumps(report, indent=2, default=str))
    if args.verbosity:
        print(
            f"Wrote {out / 'cae_phantoms.safetensors'} (safe format), "
            f"{out / 'cae_phantoms.joblib'}, {out / 'anomaly_maps.png'} and "
            f"{out / 'demo_report.json'}"
        )
    return 0


_COMMANDS = {
    "fit": _fit, "calibrate": _calibrate, "score": _score, "evaluate": _evaluate, "demo": _demo,
}


def _exit_cleanly_on_sigterm():
    """``kill`` (SIGTERM) unwinds like Ctrl-C, so temporary outputs are removed."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def terminate(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, terminate)
    except (ValueError, OSError):  # pragma: no cover - platforms without SIGTERM
        pass


def main(argv=None):
    """Entry point of ``python -m skanomaly`` and the ``skanomaly`` command.

    Returns the exit status: 0 on success, 2 for a bad value (one line on stderr).
    """
    parser = build_parser()
    args = None
    if argv is None:
        _exit_cleanly_on_sigterm()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else 0
        return _COMMANDS[args.command](args)
    except UsageError as err:
        prog = err.args[1] if len(err.args) > 1 else f"skanomaly {args.command}"
        print(f"{prog}: error: {_one_line(err.args[0])}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as err:
        if args is not None and args.verbosity >= 2:
            raise
        command = f"skanomaly {args.command}" if args is not None else "skanomaly"
        print(f"{command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        command = getattr(args, "command", "")
        print(f"skanomaly {command}: interrupted; nothing written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
