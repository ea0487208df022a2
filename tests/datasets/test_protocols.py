"""Tests for jsrt_patch_protocol on a small fake JSRT folder built in tmp_path."""

import math
import pickle

import cv2
import numpy as np
import pytest

from skanomaly.datasets import _protocols
from skanomaly.datasets._protocols import jsrt_patch_protocol
from skanomaly.preprocessing import CLAHE, LungMasker

HEADER = "study_id,subtlety,size_mm,age,gender,x_2048,y_2048,state,position,diagnosis"
SIDE = 128
# Nodule centres on the 2048 grid (x, y): /16 at 128 px. JPCLN003's centre lies far
# outside the lungs (no abnormal patch); JPCLN002's is a half pixel (62.5 -> 63).
NODULES = {"JPCLN001": (800, 800), "JPCLN002": (1000, 1200), "JPCLN003": (1024, 2000)}
N_NORMAL = 6
FAST = dict(patch_size=32, stride=16, size=SIDE)


def lung_mask(i, side=SIDE):
    """Two ellipses, shifted a little per study, so that every study's grid differs."""
    mask = np.zeros((side, side), np.uint8)
    s = side / 128
    shift = int((i % 3) * 2 * s)
    for centre, axes in (((40 * s + shift, 60 * s), (22 * s, 40 * s)),
                         ((88 * s - shift, 62 * s), (20 * s, 38 * s))):
        cv2.ellipse(mask, tuple(map(int, centre)), tuple(map(int, axes)), 0, 0, 360, 1, -1)
    return mask


def make_jsrt(root, side=SIDE, n_normal=N_NORMAL, nodules=NODULES, masks=True):
    (root / "images").mkdir(parents=True)
    if masks:
        (root / "lung_masks").mkdir()
    studies = sorted(nodules) + [f"JPCNN{i:03d}" for i in range(1, n_normal + 1)]
    rng = np.random.default_rng(0)
    rows = []
    for i, study in enumerate(studies):
        image = rng.integers(0, 256, (side, side), dtype=np.uint8)
        cv2.imwrite(str(root / "images" / f"{study}.png"), image)
        if masks:
            cv2.imwrite(str(root / "lung_masks" / f"{study}.png"), lung_mask(i, side))
        if study in nodules:
            x, y = nodules[study]
            rows.append(f"{study}.png,3,15,60,Male,{x},{y},malignant,l.upper lobe,lung cancer")
        else:
            rows.append(f"{study}.png,,,30,Female,,,non-nodule,,")
    (root / "metadata.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    return root


@pytest.fixture(scope="module")
def jsrt_dir(tmp_path_factory):
    return make_jsrt(tmp_path_factory.mktemp("jsrt"))


@pytest.fixture(scope="module")
def protocol(jsrt_dir):
    return jsrt_patch_protocol(jsrt_dir, **FAST)


def read_study(root, study):
    image = cv2.imread(str(root / "images" / f"{study}.png"), cv2.IMREAD_GRAYSCALE)
    mask = cv2.imread(str(root / "lung_masks" / f"{study}.png"), cv2.IMREAD_GRAYSCALE) > 0
    return image.astype(np.float32) / 255, mask


def grid(size, p, s):
    starts = list(range(0, size - p + 1, s))
    if starts[-1] + p < size:
        starts.append(size - p)
    return [(r, c) for r in starts for c in starts]


def brute_force(root, study, p, s, min_roi=0.5):
    """Kept (row, col) of one study, patch by patch, from the files alone."""
    _, mask = read_study(root, study)
    kept = []
    for r, c in grid(mask.shape[0], p, s):
        cover = mask[r : r + p, c : c + p].mean()
        if not (cover >= min_roi and cover > 0):
            continue
        if study in NODULES:
            x, y = (v * mask.shape[0] / 2048 for v in NODULES[study])
            col, row = math.floor(x + 0.5), math.floor(y + 0.5)
            if not (r <= row < r + p and c <= col < c + p):
                continue
        kept.append((r, c))
    return kept


def test_shapes_and_dtypes(protocol):
    d = protocol
    assert d.X_train.dtype == d.X_test.dtype == np.float32
    assert d.X_train.shape[1:] == d.X_test.shape[1:] == (32, 32)
    assert d.y_test.dtype == np.int64 and d.y_test.shape == (len(d.X_test),)
    for name in ("train", "test"):
        n = len(d[f"X_{name}"])
        assert d[f"{name}_study_ids"].shape == (n,)
        assert d[f"{name}_positions"].shape == (n, 2)
        assert d[f"{name}_patch_index"].shape == (n,)
    assert d.extractor.n_patches_ == 49
    assert d.params["clahe_kernel_size"] == (16, 16)  # 128 * 128 / 1024


def test_split_by_study(protocol):
    d = protocol
    assert not set(d.train_studies) & set(d.test_studies)
    assert set(d.train_study_ids) == set(d.train_studies)
    assert set(d.test_study_ids) <= set(d.test_studies)
    assert all(s.startswith("JPCNN") for s in d.train_studies)
    # All nodule studies test; ceil(0.3 * 6) = 2 normal studies test, 4 train.
    assert set(NODULES) <= set(d.test_studies)
    assert len(d.train_studies) == 4 and (d.test_study_labels == 0).sum() == 2
    assert d.test_study_labels.tolist() == [int(s.startswith("JPCLN")) for s in d.test_studies]


def test_labels(protocol, jsrt_dir):
    d = protocol
    normal = np.char.startswith(d.test_study_ids.astype(str), "JPCNN")
    assert (d.y_test[normal] == 0).all() and (d.y_test[~normal] == 1).all()
    for study, (r, c) in zip(d.test_study_ids[~normal], d.test_positions[~normal]):
        x, y = (v / 16 for v in NODULES[study])
        assert r <= math.floor(y + 0.5) < r + 32 and c <= math.floor(x + 0.5) < c + 32
    # Patches of nodule studies without the centre are dropped, not labelled 0.
    for study in NODULES:
        kept = {tuple(p) for p in d.test_positions[d.test_study_ids == study]}
        assert kept == set(brute_force(jsrt_dir, study, 32, 16))
    assert d.test_study_n_abnormal.tolist() == [
        len(brute_force(jsrt_dir, s, 32, 16)) if s in NODULES else 0 for s in d.test_studies
    ]
    assert d.nodule_studies_without_abnormal_patch.tolist() == ["JPCLN003"]
    np.testing.assert_allclose(d.test_study_centers[0], [50.0, 50.0])
    assert np.isnan(d.test_study_centers[d.test_study_labels == 0]).all()


@pytest.mark.parametrize("stride, min_roi", [(16, 0.5), (20, 0.5), (16, 0.0), (24, 0.9)])
def test_counts_match_brute_force(jsrt_dir, stride, min_roi):
    d = jsrt_patch_protocol(
        jsrt_dir, patch_size=32, stride=stride, size=SIDE, min_roi_fraction=min_roi
    )
    expected = {}
    for study in [*d.train_studies, *d.test_studies]:
        expected[study] = brute_force(jsrt_dir, study, 32, stride, min_roi)
    for ids, positions in (
        (d.train_study_ids, d.train_positions),
        (d.test_study_ids, d.test_positions),
    ):
        for study in expected:
            got = [tuple(p) for p in positions[ids == study]]
            if study in ids:
                assert got == expected[study], study
    # Every kept patch of every study is there, and nothing else.
    assert len(d.X_train) + len(d.X_test) == sum(len(v) for v in expected.values())


def test_pixels_are_clahe_with_nan_outside_lungs(protocol, jsrt_dir):
    d = protocol
    for X, ids, positions in (
        (d.X_train, d.train_study_ids, d.train_positions),
        (d.X_test, d.test_study_ids, d.test_positions),
    ):
        for study in np.unique(ids):
            image, mask = read_study(jsrt_dir, study)
            expected = CLAHE(kernel_size=16).fit_transform(image[None])[0]
            expected[~mask] = np.nan
            for patch, (r, c) in zip(X[ids == study], positions[ids == study]):
                window = expected[r : r + 32, c : c + 32]
                np.testing.assert_array_equal(np.isnan(patch), ~mask[r : r + 32, c : c + 32])
                np.testing.assert_allclose(patch, window, atol=1e-6)
    assert np.isnan(d.X_train).any() and not np.isnan(d.X_train).all(axis=(1, 2)).any()


def test_no_clahe_keeps_the_loaded_pixels(jsrt_dir):
    d = jsrt_patch_protocol(jsrt_dir, clahe=None, **FAST)
    study, (r, c) = d.train_study_ids[0], d.train_positions[0]
    image, mask = read_study(jsrt_dir, study)
    expected = np.where(mask, image, np.nan)[r : r + 32, c : c + 32]
    np.testing.assert_array_equal(d.X_train[0], expected)
    assert d.params["clahe_kernel_size"] is None


def test_deterministic_and_seeded(jsrt_dir, protocol):
    again = jsrt_patch_protocol(jsrt_dir, chunk_size=1, **FAST)
    np.testing.assert_array_equal(again.X_train, protocol.X_train)
    np.testing.assert_array_equal(again.X_test, protocol.X_test)
    np.testing.assert_array_equal(again.test_study_ids, protocol.test_study_ids)
    splits = {
        tuple(jsrt_patch_protocol(jsrt_dir, random_state=seed, **FAST).train_studies)
        for seed in range(4)
    }
    assert len(splits) > 1


def test_iter_test_bags_rebuild_the_test_patches(protocol):
    d = protocol
    seen = []
    for ids, bags in d.iter_test_bags(batch_size=3):
        assert len(ids) <= 3 and bags.shape == (len(ids), 49, 32, 32)
        for study, bag in zip(ids, bags):
            rows = d.test_study_ids == study
            np.testing.assert_array_equal(bag[d.test_patch_index[rows]], d.X_test[rows])
            seen.append(study)
    assert seen == d.test_studies.tolist()
    np.testing.assert_array_equal(
        d.extractor.patch_positions_[d.test_patch_index], d.test_positions
    )


class BoxMasker:
    """Stands in for LungMasker(output="mask"): two fixed boxes, whatever the image."""

    def fit_transform(self, images):
        masks = np.zeros(images.shape, bool)
        masks[:, 20:100, 10:60] = masks[:, 20:100, 70:118] = True
        return masks


def test_unet_roi_uses_the_lung_masker(tmp_path, monkeypatch):
    root = make_jsrt(tmp_path, masks=False)  # no lung_masks/ folder needed
    seen = []
    monkeypatch.setattr(_protocols, "_lung_masker", lambda roi: seen.append(roi) or BoxMasker())
    d = jsrt_patch_protocol(root, lung_roi="unet", **FAST)
    assert seen == ["unet"]
    expected = BoxMasker().fit_transform(np.zeros((1, SIDE, SIDE)))[0]
    for patch, (r, c) in zip(d.X_train, d.train_positions):
        np.testing.assert_array_equal(np.isnan(patch), ~expected[r : r + 32, c : c + 32])
    ids, bags = next(d.iter_test_bags())
    rows = d.test_study_ids == ids[0]
    np.testing.assert_array_equal(bags[0][d.test_patch_index[rows]], d.X_test[rows])


def test_lung_masker_settings():
    assert _protocols._lung_masker("dataset") is None
    assert _protocols._lung_masker("unet").get_params()["output"] == "mask"
    custom = LungMasker(threshold=0.3, device="cpu")
    masker = _protocols._lung_masker(custom)
    assert masker is not custom and custom.output == "masked"
    assert masker.get_params()["output"] == "mask" and masker.threshold == 0.3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(stride=0), "stride must be a positive int"),
        (dict(stride=-4), "stride must be a positive int"),
        (dict(stride=2.5), "stride must be a positive int"),
        (dict(patch_size=0), "patch_size must be a positive int"),
        (dict(patch_size=256), "patch_size=256 is larger than the 128x128"),
        (dict(lung_roi="ccnet"), "lung_roi must be 'dataset'"),
        (dict(test_size=0.0), "test_size must be"),
        (dict(test_size=1.5), "test_size must be"),
        (dict(min_roi_fraction=1.5), "min_roi_fraction must be a number in"),
        (dict(clahe="skimage"), "clahe must be 'auto'"),
        (dict(chunk_size=0), "chunk_size must be a positive int"),
        (dict(size=-3), "size must be None"),
        (dict(test_size=6), "leaves no normal study"),
    ],
)
def test_bad_arguments(jsrt_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        jsrt_patch_protocol(jsrt_dir, **{**FAST, **kwargs})


def test_patch_larger_than_native_images(jsrt_dir):
    with pytest.raises(ValueError, match="patch_size=200 is larger than the 128x128 images"):
        jsrt_patch_protocol(jsrt_dir, patch_size=200, size=None)


def test_needs_two_normal_studies(tmp_path):
    root = make_jsrt(tmp_path, n_normal=1)
    with pytest.raises(ValueError, match="at least two"):
        jsrt_patch_protocol(root, **FAST)


def test_study_without_lung_patch(tmp_path):
    root = make_jsrt(tmp_path)
    tiny = np.zeros((SIDE, SIDE), np.uint8)
    tiny[60:64, 60:64] = 1
    cv2.imwrite(str(root / "lung_masks" / "JPCNN002.png"), tiny)
    with pytest.raises(ValueError, match=r"No patch of study/studies \['JPCNN002'\]"):
        jsrt_patch_protocol(root, **FAST)


def test_result_pickles(protocol):
    again = pickle.loads(pickle.dumps(protocol))
    np.testing.assert_array_equal(again.X_test, protocol.X_test)
    ids, bags = next(again.iter_test_bags(batch_size=1))
    assert ids.tolist() == [protocol.test_studies[0]] and bags.shape == (1, 49, 32, 32)


def test_iter_test_bags_bad_batch_size(protocol):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        protocol.iter_test_bags(batch_size=0)
