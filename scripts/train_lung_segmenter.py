"""Train the lung-field U-Net that ships with skanomaly (``LungMasker``'s weights).

Data: the JSRT radiographs with the SCR lung masks, as laid out in
``shared/data/README.md`` (``images/*.png`` and ``lung_masks/<same name>.png``).
The studies are split once, with a fixed seed, into training and hold-out sets
(stratified by nodule / no nodule); the hold-out Dice is measured exactly as a user
gets the masks, through ``LungMasker(weights=..., output="mask")`` at the masks'
1024 x 1024 resolution, after its cleaning.

Augmentation is heavy on purpose: the weights must hold up on radiographs from other
hospitals and detectors (other contrast, gamma, processing, sharpness, noise, field of
view, collimation borders, positioning), and on the package's synthetic phantoms.
Images are never flipped: the heart sits on the patient's left.

Usage (from the repository root; about 15 minutes on a 2-core CPU)::

    python scripts/train_lung_segmenter.py --data-dir ../shared/data/jsrt \\
        --out skanomaly/preprocessing/weights/lung_unet.pt
"""

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from skanomaly.metrics import dice_score
from skanomaly.nn.unet import UNet
from skanomaly.preprocessing._lung import LungMasker, network_input

ARCHITECTURE = {"in_channels": 1, "out_channels": 1, "base_channels": 8, "depth": 5, "max_channels": 64}
# The stored copy is a little larger than the network input so that zooming in
# during augmentation does not magnify pixels.
STORE_SIZE = 320


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with images/ and lung_masks/")
    parser.add_argument("--out", type=Path, default=Path("skanomaly/preprocessing/weights/lung_unet.pt"))
    parser.add_argument("--report", type=Path, default=Path("benchmarks/results/lung_segmenter.json"))
    parser.add_argument("--size", type=int, default=256, help="network input side")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--holdout-fraction", type=float, default=0.2)
    parser.add_argument(
        "--negative-fraction", type=float, default=0.08, help="share of images without lungs"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def split_studies(names, fraction, seed):
    """Hold out ``fraction`` of the nodule (JPCLN) and of the normal (JPCNN) studies."""
    rng = np.random.default_rng(seed)
    nodule = [n for n in names if n.startswith("JPCLN")]
    groups = [nodule, [n for n in names if n not in set(nodule)]]
    holdout = []
    for group in groups:
        k = int(round(fraction * len(group)))
        holdout += [str(n) for n in rng.choice(group, size=k, replace=False)]
    holdout = sorted(holdout)
    return sorted(set(names) - set(holdout)), holdout


def load(data_dir, names, size):
    images, masks = [], []
    for name in names:
        image = cv2.imread(str(data_dir / "images" / name), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(data_dir / "lung_masks" / name), cv2.IMREAD_GRAYSCALE)
        if image is None or mask is None:
            raise FileNotFoundError(f"cannot read {name} (image or lung mask) in {data_dir}")
        images.append(cv2.resize(image.astype(np.float32) / 255.0, (size, size), interpolation=cv2.INTER_AREA))
        masks.append(cv2.resize((mask > 0).astype(np.float32), (size, size), interpolation=cv2.INTER_AREA))
    return np.stack(images), np.stack(masks)


def augment(image, mask, size, rng):
    """One random radiograph 'from another hospital', with its warped soft mask."""
    src = image.shape[0]
    # Geometry: rotation, zoom, anisotropic scale (non-square detectors squashed to a
    # square input), shift; borders are air, collimator shadow or replicated edge.
    angle = rng.uniform(-10, 10)
    zoom = math.exp(rng.uniform(math.log(0.72), math.log(1.25)))
    aspect = math.exp(rng.uniform(-0.15, 0.15))
    shift = rng.uniform(-0.08, 0.08, size=2) * size
    rot = cv2.getRotationMatrix2D((0.0, 0.0), angle, 1.0)[:, :2]
    linear = rot @ np.diag([zoom * aspect, zoom / aspect]) * (size / src)
    offset = np.array([size / 2, size / 2]) + shift - linear @ np.array([src / 2, src / 2])
    matrix = np.hstack([linear, offset[:, None]])
    if rng.random() < 0.5:
        border = dict(borderMode=cv2.BORDER_CONSTANT, borderValue=float(rng.choice([0.0, rng.uniform(), 1.0])))
    else:
        border = dict(borderMode=cv2.BORDER_REPLICATE)
    x = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, **border)
    y = cv2.warpAffine(mask, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)

    # Processing and display: histogram equalisation or CLAHE (pipelines put CLAHE
    # before the masker), windowing, gamma.
    r = rng.random()
    if r < 0.25:
        clahe = cv2.createCLAHE(clipLimit=rng.uniform(1.0, 4.0), tileGridSize=(8, 8))
        x = clahe.apply((np.clip(x, 0, 1) * 255).astype(np.uint8)).astype(np.float32) / 255
    elif r < 0.35:
        x = cv2.equalizeHist((np.clip(x, 0, 1) * 255).astype(np.uint8)).astype(np.float32) / 255
    lo, hi = rng.uniform(-0.15, 0.2), rng.uniform(0.75, 1.2)
    x = np.clip((x - lo) / (hi - lo), 0, 1)
    x = x ** math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    if rng.random() < 0.2:  # heel effect / uneven exposure
        ramp = np.linspace(-1, 1, size, dtype=np.float32)
        g = rng.uniform(-0.15, 0.15) * (ramp[None, :] if rng.random() < 0.5 else ramp[:, None])
        x = x + g

    # Sharpness and noise: edge enhancement, blur, loss of resolution, quantum noise.
    if rng.random() < 0.2:
        sigma = rng.uniform(2, 8)
        x = x + rng.uniform(0.3, 1.5) * (x - cv2.GaussianBlur(x, (0, 0), sigma))
    if rng.random() < 0.3:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 2.0))
    if rng.random() < 0.2:
        low = int(rng.integers(48, 160))
        x = cv2.resize(cv2.resize(x, (low, low), interpolation=cv2.INTER_AREA), (size, size))
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(0.005, 0.04), x.shape).astype(np.float32)

    # Collimation bands and burnt-in markers.
    if rng.random() < 0.25:
        value = float(rng.choice([0.0, 1.0, rng.uniform()]))
        for side in range(4):
            if rng.random() < 0.5:
                w = int(rng.uniform(0, 0.1) * size)
                if w:
                    sl = [np.s_[:w, :], np.s_[-w:, :], np.s_[:, :w], np.s_[:, -w:]][side]
                    x[sl] = value
                    y[sl] = 0
    if rng.random() < 0.2:
        h, w = rng.integers(4, 20, size=2)
        r0, c0 = rng.integers(0, size - 20, size=2)
        x[r0 : r0 + h, c0 : c0 + w] = rng.uniform(0.8, 1.0)
    return np.clip(x, 0, 1).astype(np.float32), y


def negative(size, rng):
    """An image without lungs (blank, noise, gradients, silhouettes), target all zero.

    Trained only on chest radiographs, a U-Net paints its lung-shaped prior on any
    input, even a blank one; these teach it to answer "no lung" instead, so that
    ``LungMasker`` can report images without a lung field.
    """
    kind = rng.integers(5)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:  # flat field
        x = np.full((size, size), rng.uniform(), dtype=np.float32)
    elif kind == 1:  # noise, fine or smoothed
        x = rng.random((size, size), dtype=np.float32)
        if rng.random() < 0.7:
            x = cv2.GaussianBlur(x, (0, 0), rng.uniform(1, 25))
    elif kind == 2:  # linear or radial gradient
        if rng.random() < 0.5:
            a = rng.uniform(0, 2 * np.pi)
            x = np.cos(a) * xx + np.sin(a) * yy
        else:
            x = np.hypot(xx - rng.uniform(), yy - rng.uniform())
    else:  # bright silhouettes on a dark field: extremities, phantoms, objects
        x = np.full((size, size), rng.uniform(0, 0.3), dtype=np.float32)
        for _ in range(rng.integers(1, 6)):
            cx, cy, rx, ry = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), *rng.uniform(0.03, 0.4, 2)
            inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
            x[inside] = rng.uniform(0.4, 1.0)
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 4))
    x = x.astype(np.float32)
    x = (x - x.min()) / max(float(x.max() - x.min()), 1e-6) * rng.uniform(0.1, 1) if kind else x
    x = x + rng.normal(0, rng.uniform(0, 0.03), x.shape).astype(np.float32)
    return np.clip(x, 0, 1), np.zeros((size, size), dtype=np.float32)


def loss_fn(logits, target):
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3))
    dice = (2 * inter + 1) / (p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
    return bce + (1 - dice).mean()


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    names = sorted(p.name for p in (args.data_dir / "images").glob("*.png"))
    if not names:
        raise SystemExit(f"no images/*.png under {args.data_dir}")
    train_names, holdout_names = split_studies(names, args.holdout_fraction, args.seed)
    print(f"{len(train_names)} training studies, {len(holdout_names)} hold-out", flush=True)
    images, masks = load(args.data_dir, train_names, STORE_SIZE)

    net = UNet(**ARCHITECTURE)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(len(images) / args.batch_size)
    total = args.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total, pct_start=0.1)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        order = rng.permutation(len(images))
        running = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * args.batch_size : (step + 1) * args.batch_size]
            pairs = [
                negative(args.size, rng)
                if rng.random() < args.negative_fraction
                else augment(images[i], masks[i], args.size, rng)
                for i in idx
            ]
            x = torch.from_numpy(network_input(np.stack([p[0] for p in pairs]), args.size)).unsqueeze(1)
            y = torch.from_numpy(np.stack([p[1] for p in pairs])).unsqueeze(1)
            loss = loss_fn(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item()
        print(
            f"epoch {epoch + 1:3d}/{args.epochs}  loss {running / steps_per_epoch:.4f}  "
            f"{time.perf_counter() - start:6.0f} s",
            flush=True,
        )
    train_seconds = time.perf_counter() - start

    args.out.parent.mkdir(parents=True, exist_ok=True)
    # float16 halves the packaged file; LungMasker upcasts on load.
    state = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    config = {"architecture": ARCHITECTURE, "input_size": args.size, "normalization": "per-image standardisation"}
    torch.save({"config": config, "state_dict": state}, args.out)

    # Hold-out Dice as users get it: the packaged pipeline, at the masks' resolution.
    masker = LungMasker(output="mask", weights=str(args.out), batch_size=4)
    scores = {}
    for name in holdout_names:
        image = cv2.imread(str(args.data_dir / "images" / name), cv2.IMREAD_GRAYSCALE)
        truth = cv2.imread(str(args.data_dir / "lung_masks" / name), cv2.IMREAD_GRAYSCALE) > 0
        predicted = masker.fit_transform(image[None])[0]
        scores[name] = dice_score(truth, predicted)
    values = np.array(list(scores.values()))
    print(f"hold-out Dice mean {values.mean():.4f} min {values.min():.4f} ({len(values)} studies)")

    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "seed": args.seed,
        "data": "JSRT (247-study database, development part here: 167 studies), SCR lung masks",
        "input_size": args.size,
        "architecture": ARCHITECTURE,
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "weights_bytes": args.out.stat().st_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "negative_fraction": args.negative_fraction,
        "threads": args.threads,
        "train_seconds": round(train_seconds, 1),
        "split": {"n_train": len(train_names), "n_holdout": len(holdout_names), "holdout": holdout_names},
        "holdout_dice_mean": round(float(values.mean()), 4),
        "holdout_dice_min": round(float(values.min()), 4),
        "holdout_dice_median": round(float(np.median(values)), 4),
        "holdout_dice_resolution": "1024x1024, after LungMasker cleaning (threshold 0.5)",
        "holdout_dice_per_study": {k: round(v, 4) for k, v in scores.items()},
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} ({report['weights_bytes']} bytes) and {args.report}")


if __name__ == "__main__":
    main()
