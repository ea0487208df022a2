"""The shared helpers of skanomaly.utils: the width check and the shared docstrings."""

import inspect
import re
from collections import Counter

import numpy as np
import pytest
from sklearn.externals._numpydoc.docscrape import NumpyDocString

import skanomaly.detectors
from skanomaly.utils._docstring import PARAMETER_DOCS, Substitution
from skanomaly.utils.validation import check_widths

DETECTORS = [getattr(skanomaly.detectors, name) for name in skanomaly.detectors.__all__]


@pytest.mark.parametrize(
    "value, kwargs, expected",
    [
        ([8, 16], {}, (8, 16)),
        ((np.int64(4),), {"max_len": 1}, (4,)),
        ((), {"min_len": 0}, ()),
        ((10**6,), {"high": None}, (10**6,)),
    ],
)
def test_check_widths_returns_a_tuple_of_ints(value, kwargs, expected):
    widths = check_widths(value, "channels", **kwargs)
    assert widths == expected
    assert all(type(w) is int for w in widths)


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        (
            (8, 0),
            {"max_len": 8},
            r"channels=\(8, 0\) is not valid: use 1 to 8 integer widths in \[1, 4096\]\.$",
        ),
        ((), {}, r"use 1 or more integer widths in \[1, 4096\]"),
        ((4, 4, 4), {"min_len": 2, "max_len": 2}, r"use 2 integer widths"),
        ((True, 8), {}, r"channels=\(True, 8\) is not valid"),
        ((8.0,), {}, r"channels=\(8.0,\) is not valid"),
        ((5000,), {}, r"in \[1, 4096\]"),
        ((0,), {"min_len": 0, "high": None}, r"use any number of integer widths >= 1"),
        ("816", {}, r"channels='816' is not valid"),
        ({"a": 1}, {}, r"channels=\{'a': 1\} is not valid"),
        (8, {}, r"channels=8 is not valid"),
        (
            (1,),
            {
                "min_len": 2,
                "context": " for generator='wgan-gp'",
                "hint": ", e.g. (8, 8)",
            },
            r"channels=\(1,\) is not valid for generator='wgan-gp': use 2 or more .*, e\.g\. \(8, 8\)\.$",
        ),
    ],
)
def test_check_widths_names_the_parameter_the_bounds_and_the_fix(
    value, kwargs, message
):
    with pytest.raises(ValueError, match=message):
        check_widths(value, "channels", **kwargs)


def test_check_widths_shortens_a_huge_value():
    with pytest.raises(ValueError) as err:
        check_widths(list(range(10**5)), "channels", max_len=9)
    assert len(str(err.value)) < 200


@pytest.mark.parametrize("detector", DETECTORS, ids=lambda cls: cls.__name__)
def test_detector_docstring_documents_every_parameter_once(detector):
    doc = inspect.getdoc(detector)
    assert not re.search(r"\{\w+\}", doc), "an unfilled placeholder"
    documented = Counter(p.name for p in NumpyDocString(doc)["Parameters"])
    parameters = [
        name
        for name in inspect.signature(detector.__init__).parameters
        if name != "self"
    ]
    assert {name: n for name, n in documented.items() if n != 1} == {}
    assert sorted(documented) == sorted(parameters)


@pytest.mark.parametrize("name", sorted(PARAMETER_DOCS))
def test_shared_parameter_texts_are_numpydoc_entries(name):
    text = PARAMETER_DOCS[name]
    (entry,) = NumpyDocString(f"Parameters\n----------\n{text}\n")["Parameters"]
    assert entry.name == name
    assert entry.type and entry.desc
    assert not text.endswith("\n")


def test_substitution_indents_entries_and_keeps_other_braces():
    @Substitution(seed="seed : int\n    The seed.")
    class Estimator:
        """Title.

        Parameters
        ----------
        kind : {"a", "b"}
        {seed}
            More on the seed.
        """

    params = NumpyDocString(inspect.getdoc(Estimator))["Parameters"]
    assert [(p.name, p.type, p.desc) for p in params] == [
        ("kind", '{"a", "b"}', []),
        ("seed", "int", ["The seed.", "More on the seed."]),
    ]


def test_substitution_refuses_an_unknown_placeholder():
    with pytest.raises(KeyError, match=r"placeholder \{seed\}"):

        @Substitution(other="other : int")
        class Estimator:
            """Parameters
            ----------
            {seed}
            """
