"""Docstring entries that several estimators share, written once.

A class docstring holds ``{name}`` alone on a line where the shared entry of the
parameter ``name`` goes; :data:`fill_doc` replaces the line with
``PARAMETER_DOCS[name]``, indented like the placeholder, when the class is defined.
Lines indented deeper right after a placeholder continue the entry's description,
so an estimator can add to a shared text without repeating it. Braces elsewhere (the
``{"max", "mean"}`` of a type) are left alone. In the spirit of imbalanced-learn's
``Substitution`` decorator; placeholders are whole lines rather than ``str.format``
fields, because numpydoc types are written with braces.
"""

import re

__all__ = ["PARAMETER_DOCS", "Substitution", "fill_doc"]

# A line that is nothing but "{name}": the placeholder of a shared entry.
_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)\{(?P<name>\w+)\}[ \t]*$", re.MULTILINE)

#: The shared entries of the detectors' Parameters sections, by parameter name: the
#: numpydoc line ``name : type, default=...`` and its description, indented by four
#: spaces.
PARAMETER_DOCS = {
    "contamination": """\
contamination : "auto" or float in (0, 0.5], default="auto"
    Sets ``offset_`` from the training scores: a float flags that fraction of the
    training images; ``"auto"`` flags scores more than three robust standard
    deviations below the median training score.""",
    "patch_aggregation": """\
patch_aggregation : {"max", "mean"} or ("topk", k), default="max"
    How patch scores of patch bags become an image score; ``("topk", k)`` averages
    the ``k`` highest patch anomalies (all present patches, with a warning, when
    an image has fewer than ``k``).""",
    "image_shape": """\
image_shape : tuple of int, default=None
    ``(H, W)`` of flattened input; ``None`` means square. One entry may be -1.""",
    "value_range": """\
value_range : "auto", (low, high) or None, default="auto"
    The pixel values expected. ``"auto"``: ``uint8`` / ``uint16`` are scaled by
    their dtype's maximum and float input must lie in [0, 1]; ``(low, high)``:
    input of any dtype must lie in that range and is mapped linearly to [0, 1]
    (e.g. ``(0, 4095)`` for 12-bit data in ``uint16``, ``(0, 255)`` for 8-bit
    data held as floats); ``None``: values are used as they are, unchecked (for
    data you standardised yourself). Values outside the range raise a
    ``ValueError`` in ``fit`` and in scoring: a network trained on [0, 1] scores
    0-255 input as garbage.""",
    "validation_fraction": """\
validation_fraction : float in (0, 1), default=None
    Hold out this fraction of the training images for skorch's ``valid_loss``
    (useful with ``EarlyStopping``); ``None`` trains on all of them. The split is
    by image: all patches of an image fall on the same side.""",
    "device": """\
device : str, default="auto"
    ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.""",
    "random_state": """\
random_state : int, RandomState instance or None, default=None
    Seeds weight initialisation, shuffling and augmentation through explicit
    generators; the same value on the CPU gives the same model, also when several
    detectors are fitted at once in threads. Global RNG state is left untouched.""",
    "verbose": """\
verbose : int, default=0
    Print skorch's epoch log and progress bars.""",
    "callbacks": """\
callbacks : list of skorch callbacks, default=None
    Added to the training net, e.g. ``EarlyStopping(monitor="train_loss")``,
    ``Checkpoint``, ``LRScheduler``. They are copied, never mutated.""",
}


def _substitute(doc, texts, owner):
    """``doc`` with every placeholder line replaced by its text from ``texts``."""

    def entry(match):
        name, indent = match["name"], match["indent"]
        if name not in texts:
            raise KeyError(
                f"{owner}'s docstring has the placeholder {{{name}}}, which has no shared text"
            )
        return "\n".join(
            indent + line if line else line for line in texts[name].splitlines()
        )

    return _PLACEHOLDER.sub(entry, doc)


class Substitution:
    """Class (or function) decorator that fills ``{name}`` placeholder lines of the
    docstring with ``texts[name]``.

    Parameters
    ----------
    **texts : str
        The text of each placeholder, unindented (a numpydoc entry's continuation
        lines indented relative to its first line).

    Examples
    --------
    >>> import inspect
    >>> from skanomaly.utils._docstring import Substitution
    >>> @Substitution(seed="seed : int\\n    The seed.")
    ... def f(seed):
    ...     '''Parameters
    ...     ----------
    ...     {seed}
    ...     '''
    >>> print(inspect.getdoc(f))
    Parameters
    ----------
    seed : int
        The seed.
    """

    def __init__(self, **texts):
        self.texts = texts

    def __call__(self, obj):
        # __doc__ is None under python -OO: nothing to fill.
        if obj.__doc__:
            obj.__doc__ = _substitute(
                obj.__doc__, self.texts, getattr(obj, "__qualname__", repr(obj))
            )
        return obj


#: Fills the detectors' shared parameter entries (:data:`PARAMETER_DOCS`).
fill_doc = Substitution(**PARAMETER_DOCS)
