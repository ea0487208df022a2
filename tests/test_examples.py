"""Every gallery example runs to the end and draws its figure."""

import runpy
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("plot_*.py"))


def test_examples_are_found():
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path, capsys):
    plt.close("all")
    runpy.run_path(str(path), run_name="__main__")
    assert "ROC AUC on held-back phantoms" in capsys.readouterr().out
    assert plt.get_fignums(), "the example drew no figure"
    plt.close("all")
