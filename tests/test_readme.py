"""The README's Python examples run as written, and print what their comments say."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_python_examples_run_as_written(tmp_path):
    blocks = _python_blocks()
    assert len(blocks) == 3  # use, grid search on normal images, calibrated thresholds
    # One session, in order: the calibration example continues the grid search's.
    script = tmp_path / "readme.py"
    script.write_text("\n".join(blocks))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout.strip().splitlines()
    auc, (best_params, best_score), false_alarms = float(printed[0]), printed[1].rsplit(" ", 1), float(printed[2])
    # "0.90" in the README; float32 training rounds differently across CPUs.
    claimed = float(re.search(r"print\(anomaly_roc_auc\(test.labels, scores\)\)\s+# (\d\.\d+)", blocks[0]).group(1))
    assert abs(auc - claimed) < 0.03, auc
    assert "caedetector__anomaly_score" in best_params and 0.5 < float(best_score) <= 1
    # 30 calibration images (15 of the 60 normal patients) at alpha = 0.1: the rate on
    # 400 new normals has the expectation 3/31 = 0.097 and scatters by about 0.05 with
    # the calibration draw.
    assert 0.0 < false_alarms < 0.25
