"""P-AnoGAN (FAnoGANDetector) on the JSRT lung-nodule patch protocol, scaled to a CPU.

The protocol, the validation / test halves and the intensity baseline are those of
``benchmarks/_jsrt.py``. One progressive GAN is trained on normal-study patches and
cached (``memory=``); every encoder configuration reuses it: each loss with the
ResNet-50 encoder, and izizf with each encoder. As in the paper, the encoder epoch
with the best validation AUC is kept (``BestValidationAUC`` on the validation half,
never the test half), and the Youden cut-off is chosen on the validation half.

Scaled down from the paper so that it runs on a 2-core CPU in well under an hour:
films at 512 px with 32 px patches (the same anatomy as 64 px at 1024), a subsample
of the training patches, narrower GAN widths, a few thousand GAN iterations (paper:
536,000) and a few encoder epochs (paper: 30); all of it is recorded in the JSON.

    python benchmarks/bench_jsrt_fanogan.py --data-dir ../shared/data/jsrt

Writes benchmarks/results/jsrt_fanogan.json.
"""

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from _jsrt import add_protocol_arguments, baseline_result, command_line, evaluate, load_protocol, machine

from skanomaly.detectors import FAnoGANDetector
from skanomaly.detectors.fanogan import BestValidationAUC

RESULTS = Path(__file__).parent / "results" / "jsrt_fanogan.json"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_protocol_arguments(parser, max_train=4000)
    parser.add_argument("--gan-channels", type=int, nargs="+", default=[128, 128, 64, 32])
    parser.add_argument("--latent-dim", type=int, default=128)
    parser.add_argument("--gan-iterations", type=int, default=4000)
    parser.add_argument("--encoder-epochs", type=int, default=3)
    parser.add_argument("--losses", nargs="+", default=["izi", "ziz", "izif", "izizf"])
    parser.add_argument("--encoders", nargs="+", default=["resnet50", "densenet169", "critic"])
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    split, counts, load_seconds = load_protocol(args)
    baseline = baseline_result(split)

    runs = [("resnet50", loss) for loss in args.losses]
    runs += [(encoder, "izizf") for encoder in args.encoders if encoder != "resnet50"]
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        for encoder, loss in runs:
            detector = FAnoGANDetector(
                encoder=encoder, loss=loss, gan_channels=tuple(args.gan_channels),
                latent_dim=args.latent_dim, gan_iterations=args.gan_iterations,
                max_epochs=args.encoder_epochs, memory=cache, random_state=args.seed,
                callbacks=[BestValidationAUC(split["X_val"], split["y_val"])],
            )
            start = time.perf_counter()
            detector.fit(split["train"])
            fit_seconds = time.perf_counter() - start
            history = detector.histories_["encoder"]
            start = time.perf_counter()
            val_scores = detector.score_samples(split["X_val"])
            test_scores = detector.score_samples(split["X_test"])
            score_seconds = time.perf_counter() - start
            key = f"{encoder}/{loss}"
            results[key] = {
                **evaluate(split, val_scores, test_scores),
                "score": detector._resolved_score(),
                "validation_auc_per_epoch": history[:, "valid_auc"],
                # The callback restored the first epoch with the best validation AUC.
                "epoch_kept": int(history[:, "valid_auc"].index(max(history[:, "valid_auc"])) + 1),
                "fit_seconds": fit_seconds,
                "score_ms_per_patch": 1000 * score_seconds / (len(split["X_val"]) + len(split["X_test"])),
            }
            if "gan" not in results:
                results["gan"] = {
                    "fit_seconds_including_first_encoder": fit_seconds,
                    "generator_loss_last_epoch": detector.histories_["gan"][-1].get("train_loss"),
                    "critic_loss_last_epoch": detector.histories_["gan"][-1].get("train_loss_d"),
                }
            print(key, {k: v for k, v in results[key].items() if k != "validation_auc_per_epoch"}, flush=True)

    out = {
        "protocol": __doc__.strip().splitlines()[0],
        "command": command_line("bench_jsrt_fanogan.py", args),
        "machine": machine(),
        "differences_from_the_paper": (
            f"films at {args.size} px (paper 1024) with {args.patch_size} px patches (paper 64 at 1024: "
            f"the same anatomy); {counts['train_patches']} training patches (of "
            f"{counts['train_patches_available']}); progressive GAN widths {tuple(args.gan_channels)} "
            f"(paper 512-256), z of {args.latent_dim} (paper 512), {args.gan_iterations} GAN iterations "
            f"(paper 536,000: {args.gan_iterations / 536_000:.2%}), with the schedule and fade-in scaled "
            f"alike; {args.encoder_epochs} encoder epochs (paper 30); normal evaluation patches "
            "subsampled; one training seed"
        ),
        "counts": counts,
        "protocol_seconds": load_seconds,
        # ru_maxrss is in KiB on Linux: the peak resident memory of the whole run.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "baseline_intensity_mahalanobis": baseline,
        "fanogan": results,
        "paper": {"resnet50/izizf_test_roc_auc": 0.879, "sensitivity": 0.887, "specificity": 0.737,
                  "densenet169/izizf_test_roc_auc": 0.852},
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
