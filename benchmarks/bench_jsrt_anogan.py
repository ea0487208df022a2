"""AnoGAN on the JSRT lung-nodule patch protocol, scaled down to fit a CPU.

The protocol, the validation / test halves and the intensity baseline are those of
``benchmarks/_jsrt.py``. Scaled down from the paper so that it runs on a 2-core CPU
in about a quarter of an hour: films at 512 px with 32 px patches (the same anatomy
as 64 px at 1024), a subsample of the training and normal evaluation patches, a small
DCGAN, and fewer search steps; all of it is recorded in the JSON.

    python benchmarks/bench_jsrt_anogan.py --data-dir ../shared/data/jsrt

Writes benchmarks/results/jsrt_anogan.json.
"""

import argparse
import json
import time
from pathlib import Path

from _jsrt import add_protocol_arguments, baseline_result, command_line, evaluate, load_protocol, machine

from skanomaly.detectors import AnoGANDetector

RESULTS = Path(__file__).parent / "results" / "jsrt_anogan.json"
SCORES = ["anogan", "residual", "feature", "discriminator"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_protocol_arguments(parser)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--latent-dim", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--search-steps", type=int, default=100)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    split, counts, load_seconds = load_protocol(args)
    train, X_val, X_test = split["train"], split["X_val"], split["X_test"]
    baseline = baseline_result(split)

    detector = AnoGANDetector(
        channels=tuple(args.channels), latent_dim=args.latent_dim, max_epochs=args.epochs,
        n_search_steps=args.search_steps, n_offset_samples=256, random_state=args.seed,
    )
    start = time.perf_counter()
    detector.fit(train)
    train_seconds = time.perf_counter() - start
    print(f"trained in {train_seconds:.0f} s", flush=True)

    per_score = {}
    for score in SCORES:
        detector.set_params(anomaly_score=score)
        start = time.perf_counter()
        val_scores = detector.score_samples(X_val)
        test_scores = detector.score_samples(X_test)
        seconds = time.perf_counter() - start
        per_score[score] = {
            **evaluate(split, val_scores, test_scores),
            "score_ms_per_patch": 1000 * seconds / (len(X_val) + len(X_test)),
        }
        print(score, {k: round(v, 3) for k, v in per_score[score].items()}, flush=True)
    chosen = max(SCORES, key=lambda s: per_score[s]["validation_roc_auc"])

    results = {
        "protocol": __doc__.strip().splitlines()[0],
        "command": command_line("bench_jsrt_anogan.py", args),
        "machine": machine(),
        "differences_from_the_paper": (
            f"films at {args.size} px (paper 1024) with {args.patch_size} px patches (paper 64 at "
            f"1024: the same anatomy); {len(train)} training patches (of "
            f"{counts['train_patches_available']}); "
            f"DCGAN channels {tuple(args.channels)} (paper 64-512 at 64 px); {args.epochs} epochs; "
            f"{args.search_steps} search steps (paper 500); normal evaluation patches subsampled; "
            "one training seed"
        ),
        "counts": counts,
        "protocol_seconds": load_seconds,
        "baseline_intensity_mahalanobis": baseline,
        "anogan": {"train_seconds": train_seconds, "per_score": per_score,
                   "score_chosen_on_validation": chosen,
                   "test_roc_auc_of_chosen": per_score[chosen]["test_roc_auc"]},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"chosen on validation: {chosen}; test AUC {per_score[chosen]['test_roc_auc']:.3f}; wrote {out}")


if __name__ == "__main__":
    main()
