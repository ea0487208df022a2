"""Tests for load_jsrt / load_pediatric_cxr on small fake folders built in tmp_path."""

import cv2
import numpy as np
import pytest
from sklearn.model_selection import GroupShuffleSplit

from skanomaly.datasets import load_jsrt, load_pediatric_cxr
from skanomaly.datasets._io import JSRT_SHAPE

JSRT_HEADER = "study_id,subtlety,size_mm,age,gender,x_2048,y_2048,state,position,diagnosis"
JSRT_ROWS = {
    "JPCLN001": "JPCLN001.png,5,15,53,Male,1634,692,malignant,l.upper lobe,lung cancer",
    "JPCLN002": "JPCLN002.png,3,30,78,Female,1024,512,benign,l.upper lobe(S5),hematoma",
    "JPCNN001": "JPCNN001.png,,,30,Female,,,non-nodule,,",
}


def make_jsrt(root, side=64, studies=tuple(JSRT_ROWS), rows=None, masks=True):
    """A JSRT-like folder: images at `side` px (the real PNGs are 1024), 0/1 masks."""
    (root / "images").mkdir(parents=True)
    if masks:
        (root / "lung_masks").mkdir()
    for i, study in enumerate(studies):
        cv2.imwrite(str(root / "images" / f"{study}.png"), np.full((side, side), 40 * i, np.uint8))
        if masks:
            mask = np.zeros((side, side), np.uint8)
            mask[side // 4: 3 * side // 4, side // 8: side // 2] = 1
            cv2.imwrite(str(root / "lung_masks" / f"{study}.png"), mask)
    rows = JSRT_ROWS if rows is None else rows
    (root / "metadata.csv").write_text("\n".join([JSRT_HEADER, *rows.values()]) + "\n")
    return root


# ---------------------------------------------------------------- JSRT
def test_jsrt_native_size(tmp_path):
    data = load_jsrt(make_jsrt(tmp_path))
    assert data.images.shape == (3, 64, 64) and data.images.dtype == np.float32
    assert data.study_ids.tolist() == ["JPCLN001", "JPCLN002", "JPCNN001"]
    assert data.labels.tolist() == [1, 1, 0]
    assert data.masks.dtype == bool and data.masks.shape == (3, 64, 64)
    assert data.masks[0, 32, 10] and not data.masks[0, 2, 2]
    np.testing.assert_allclose(data.images[:, 0, 0], [0, 40 / 255, 80 / 255], atol=1e-6)
    # centres live on the 2048 grid: x_ret = x_2048 * W / 2048
    np.testing.assert_allclose(data.centers[0], [1634 * 64 / 2048, 692 * 64 / 2048])
    np.testing.assert_allclose(data.centers[1], [32.0, 16.0])
    assert np.isnan(data.centers[2]).all()


def test_jsrt_resized_centres_and_masks(tmp_path):
    data = load_jsrt(make_jsrt(tmp_path), size=(32, 16))
    assert data.images.shape == data.masks.shape == (3, 32, 16)
    np.testing.assert_allclose(data.centers[1], [1024 * 16 / 2048, 512 * 32 / 2048])
    # mask rows 16..48 / cols 8..32 of 64 -> rows 8..24, cols 2..8 at (32, 16)
    assert data.masks[0, 8:24, 2:8].all() and data.masks[0].sum() == 16 * 6


def test_jsrt_metadata_is_typed_list_of_dicts(tmp_path):
    data = load_jsrt(make_jsrt(tmp_path), include_masks=False)
    assert data.masks is None
    first, normal = data.metadata[0], data.metadata[2]
    assert first["study_id"] == "JPCLN001" and first["subtlety"] == 5
    assert first["gender"] == "Male" and first["x_2048"] == 1634
    assert normal["state"] == "non-nodule" and normal["x_2048"] is None
    assert [m["study_id"] for m in data.metadata] == data.study_ids.tolist()


def test_jsrt_accepts_raw_img(tmp_path):
    root = make_jsrt(tmp_path, studies=("JPCNN001",), masks=False)
    (root / "images" / "JPCNN001.png").unlink()
    np.full(JSRT_SHAPE, 4095, ">u2").tofile(root / "images" / "JPCLN001.IMG")
    data = load_jsrt(root, size=64, include_masks=False)
    assert data.study_ids.tolist() == ["JPCLN001"]
    np.testing.assert_allclose(data.images, 0.0)  # 4095 is black in JSRT raw files
    np.testing.assert_allclose(data.centers[0], [1634 / 32, 692 / 32])


def test_jsrt_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_jsrt(tmp_path / "nope")
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(ValueError, match=r"images' does not exist"):
        load_jsrt(tmp_path / "empty")


def test_jsrt_missing_mask_names_it(tmp_path):
    root = make_jsrt(tmp_path)
    (root / "lung_masks" / "JPCLN002.png").unlink()
    with pytest.raises(ValueError, match=r"JPCLN002\.png' is missing.*include_masks=False"):
        load_jsrt(root)
    assert load_jsrt(root, include_masks=False).images.shape[0] == 3


def test_jsrt_missing_metadata_or_centre(tmp_path):
    root = make_jsrt(tmp_path)
    rows = dict(JSRT_ROWS)
    del rows["JPCLN002"]
    (root / "metadata.csv").write_text("\n".join([JSRT_HEADER, *rows.values()]) + "\n")
    with pytest.raises(ValueError, match="JPCLN002 has no centre"):
        load_jsrt(root)
    (root / "metadata.csv").unlink()
    with pytest.raises(ValueError, match=r"metadata\.csv' does not exist"):
        load_jsrt(root)


def test_jsrt_bad_header(tmp_path):
    root = make_jsrt(tmp_path)
    (root / "metadata.csv").write_text("name,x,y\nJPCLN001.png,1,2\n")
    with pytest.raises(ValueError, match="lacks the column"):
        load_jsrt(root)


def test_jsrt_no_images_and_duplicates(tmp_path):
    root = make_jsrt(tmp_path, studies=(), masks=False)
    with pytest.raises(ValueError, match="holds no JPCLN"):
        load_jsrt(root, include_masks=False)
    cv2.imwrite(str(root / "images" / "JPCNN001.png"), np.zeros((8, 8), np.uint8))
    np.zeros(JSRT_SHAPE, ">u2").tofile(root / "images" / "JPCNN001.IMG")
    with pytest.raises(ValueError, match="twice"):
        load_jsrt(root, include_masks=False)


# ---------------------------------------------------------------- pediatric CXR
PEDIATRIC_FILES = {
    "NORMAL": ["IM-0115-0001.jpeg", "IM-0429-0001-0002.jpeg", "NORMAL2-IM-1427-0001.jpeg",
               "IM-0115-0002.jpeg"],
    "PNEUMONIA": ["person1_bacteria_1.jpeg", "person1_virus_6.jpeg", "person447_virus_921_1.jpeg",
                  "person1000_bacteria_2931.jpeg"],
}


def make_pediatric(root, split="train", files=PEDIATRIC_FILES, side=24):
    for cls, names in files.items():
        folder = root / split / cls
        folder.mkdir(parents=True)
        for name in names:
            value = 50 if cls == "NORMAL" else 200
            cv2.imwrite(str(folder / name), np.full((side, side, 3), value, np.uint8))
    return root


def test_pediatric_labels_patients_subtypes(tmp_path):
    data = load_pediatric_cxr(make_pediatric(tmp_path), size=16)
    assert data.images.shape == (8, 16, 16) and data.images.dtype == np.float32
    assert data.labels.tolist() == [0] * 4 + [1] * 4
    # each class is sorted by file name ("person1000_" sorts before "person1_")
    assert data.patient_ids.tolist() == [
        "IM-0115", "IM-0115", "IM-0429", "NORMAL2-IM-1427",
        "person1000", "person1", "person1", "person447",
    ]
    assert data.subtypes.tolist() == ["normal"] * 4 + ["bacteria", "bacteria", "virus", "virus"]
    assert data.filenames[0].endswith("IM-0115-0001.jpeg")
    np.testing.assert_allclose(data.images[0], 50 / 255, atol=3 / 255)
    np.testing.assert_allclose(data.images[-1], 200 / 255, atol=3 / 255)


def test_pediatric_patient_groups_split_cleanly(tmp_path):
    data = load_pediatric_cxr(make_pediatric(tmp_path), size=8)
    splitter = GroupShuffleSplit(n_splits=3, test_size=0.5, random_state=0)
    for train, test in splitter.split(data.images, data.labels, groups=data.patient_ids):
        assert not set(data.patient_ids[train]) & set(data.patient_ids[test])


def test_pediatric_classes_split_size_and_threads(tmp_path):
    root = make_pediatric(tmp_path)
    make_pediatric(root, split="test", files={"NORMAL": ["IM-0001-0001.jpeg"],
                                              "PNEUMONIA": ["person9_virus_1.jpeg"]})
    normal = load_pediatric_cxr(root, classes=("NORMAL",), size=None)
    assert normal.images.shape == (4, 24, 24) and set(normal.labels) == {0}
    assert load_pediatric_cxr(root, classes="PNEUMONIA").images.shape == (4, 64, 64)
    assert load_pediatric_cxr(root, split="test").patient_ids.tolist() == ["IM-0001", "person9"]
    np.testing.assert_array_equal(load_pediatric_cxr(root, size=8, n_jobs=2).images,
                                  load_pediatric_cxr(root, size=8).images)


def test_pediatric_bad_inputs(tmp_path):
    root = make_pediatric(tmp_path)
    with pytest.raises(ValueError, match=r"Split folder .*val' does not exist.*\['train'\]"):
        load_pediatric_cxr(root, split="val")
    with pytest.raises(ValueError, match="classes must be"):
        load_pediatric_cxr(root, classes=("NORMAL", "COVID"))
    with pytest.raises(ValueError, match="classes must be"):
        load_pediatric_cxr(root, classes=())
    with pytest.raises(ValueError, match="does not exist"):
        load_pediatric_cxr(tmp_path / "missing")
    cv2.imwrite(str(root / "train" / "PNEUMONIA" / "scan7.jpeg"), np.zeros((24, 24), np.uint8))
    with pytest.raises(ValueError, match=r"scan7\.jpeg.*personN_bacteria_M"):
        load_pediatric_cxr(root)


def test_pediatric_empty_or_missing_class_folder(tmp_path):
    root = make_pediatric(tmp_path, files={"NORMAL": ["IM-0001-0001.jpeg"], "PNEUMONIA": []})
    with pytest.raises(ValueError, match=r"PNEUMONIA' holds no"):
        load_pediatric_cxr(root)
    (root / "train" / "PNEUMONIA").rmdir()
    with pytest.raises(ValueError, match=r"PNEUMONIA' does not exist"):
        load_pediatric_cxr(root)
    assert load_pediatric_cxr(root, classes=("NORMAL",)).labels.tolist() == [0]
