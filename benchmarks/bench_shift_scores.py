"""Two cures tried on saved shift-protocol scores: seed ensembles, exposure adjustment.

``bench_shift.py --scores-dir DIR`` saves each run's validation and test scores
(``{protocol}_{detector}_{seed}.npz``). This reads them back and measures, per
detector:

* **Seed ensemble**: the test films' ranks averaged over the saved seeds (the shift
  protocol's test films are the same at every seed). Reported, not chosen: each seed
  has its own validation films, some of them other seeds' training films, so no
  validation figure for the ensemble exists.
* **Exposure adjustment**: a linear regression of the score on each film's mean and
  standard deviation of intensity, fitted on the run's validation normal films (its
  training side), is subtracted from every score; whatever the score says about
  exposure alone, as normal films show it, goes.

    python benchmarks/bench_shift_scores.py --data-dir ../shared/data/pediatric_cxr \\
        --scores-dir /tmp/shift_scores --out benchmarks/results/shift_scores.json
"""

import argparse
import json
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.stats import rankdata
from sklearn.linear_model import LinearRegression

from skanomaly.datasets import load_pediatric_cxr
from skanomaly.metrics import anomaly_roc_auc

RUN_FILE = re.compile(r"(?P<protocol>shift|random)_(?P<detector>.+)_(?P<seed>\d+)\.npz")


def exposure_adjusted(run, labels, statistics):
    """Validation and test scores less their exposure prediction from validation normals."""
    validation, test = run["validation_index"], run["test_index"]
    normal = labels[validation] == 0
    model = LinearRegression().fit(statistics[validation][normal], run["validation"][normal])
    return (run["validation"] - model.predict(statistics[validation]),
            run["test"] - model.predict(statistics[test]))  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--size", type=int, default=64, help="the size bench_shift.py ran at")
    parser.add_argument("--scores-dir", required=True, nargs="+",
                        help="folders of saved scores; each folder's runs are reported under its name")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    data = load_pediatric_cxr(args.data_dir, split="train", size=args.size)
    flat = data.images.reshape(len(data.images), -1)
    statistics = np.column_stack([flat.mean(1), flat.std(1)])
    labels = data.labels

    runs = defaultdict(dict)
    for folder in map(Path, args.scores_dir):
        paths = sorted(folder.glob("*.npz"))
        if not paths:
            raise SystemExit(f"no scores in {folder}: run bench_shift.py with --scores-dir {folder} first")
        for path in paths:
            match = RUN_FILE.fullmatch(path.name)
            if match is None:
                raise SystemExit(f"{path} is not a bench_shift.py scores file ({{protocol}}_{{detector}}_{{seed}}.npz)")
            runs[(match["protocol"], f"{folder.name}/{match['detector']}")][int(match["seed"])] = dict(np.load(path))

    report = {}
    for (protocol, detector), seeds in sorted(runs.items()):
        entry = {"seeds": {}}
        for seed, run in sorted(seeds.items()):
            val_adj, test_adj = exposure_adjusted(run, labels, statistics)
            entry["seeds"][str(seed)] = {
                "validation_roc_auc": anomaly_roc_auc(labels[run["validation_index"]], run["validation"]),
                "test_roc_auc": anomaly_roc_auc(labels[run["test_index"]], run["test"]),
                "exposure_adjusted_validation_roc_auc": anomaly_roc_auc(labels[run["validation_index"]], val_adj),
                "exposure_adjusted_test_roc_auc": anomaly_roc_auc(labels[run["test_index"]], test_adj),
            }
        tests = [run["test_index"] for run in seeds.values()]
        if protocol == "shift" and len(seeds) > 1 and all(np.array_equal(tests[0], t) for t in tests):
            mean_rank = np.mean([rankdata(run["test"]) for run in seeds.values()], axis=0)
            entry["seed_ensemble_test_roc_auc"] = anomaly_roc_auc(labels[tests[0]], mean_rank)
        for key in ("test_roc_auc", "exposure_adjusted_test_roc_auc"):
            values = [s[key] for s in entry["seeds"].values()]
            entry[f"mean_{key}"] = float(np.mean(values))
        report[f"{protocol}: {detector}"] = entry
        print(f"{protocol} {detector}: seeds {sorted(seeds)} test {entry['mean_test_roc_auc']:.3f}, "
              f"exposure-adjusted {entry['mean_exposure_adjusted_test_roc_auc']:.3f}"
              + (f", seed ensemble {entry['seed_ensemble_test_roc_auc']:.3f}"
                 if "seed_ensemble_test_roc_auc" in entry else ""))  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_shift_scores.py " + " ".join(argv if argv is not None else sys.argv[1:])
    tmp = out.with_name(f"{out.stem}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"command": command, "runs": report}, indent=1))
    tmp.replace(out)  # whole or not at all


if __name__ == "__main__":
    main()
