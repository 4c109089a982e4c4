"""adapt.data: every accepted layout, every reported problem, splits, augmentation, letterboxing.

All data is generated here in tmp_path; nothing is downloaded.
"""

import json
import struct
import zipfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from adapt.data import (
    Augment,
    DatasetError,
    archive,
    coco,
    letterbox,
    load_dataset,
    load_image,
    pad_to_square,
    resize_longest_side,
    rle_decode,
    rle_encode,
    unletterbox,
)
from adapt.data.dataset import Dataset

# ------------------------------------------------------------------------------------------------
# Builders


def _image(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _disk_mask(h=48, w=64, cy=None, cx=None, r=10):
    yy, xx = np.mgrid[:h, :w]
    cy = h // 2 if cy is None else cy
    cx = w // 2 if cx is None else cx
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def _save(path, array, mode=None, palette=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    if palette is not None:
        im.putpalette(palette)
    im.save(path)


def make_pairs(
    root, n=4, img_dir="images", mask_dir="masks", img_ext=".jpg", mask_ext=".png", scale=255, size=(48, 64)
):
    h, w = size
    for i in range(n):
        _save(root / img_dir / f"s{i}{img_ext}", _image(h, w, i))
        _save(root / mask_dir / f"s{i}{mask_ext}", _disk_mask(h, w, r=6 + i) * scale)
    return root


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A private temporary folder for the loader, to check that nothing is left in it."""
    folder = tmp_path / "scratch"
    folder.mkdir()
    monkeypatch.setattr(archive.tempfile, "tempdir", str(folder))
    return folder


def zip_folder(src, zpath, prefix="", extra=()):
    """Zip every file under `src` (names relative to it, after `prefix`), then the (name, bytes) in `extra`."""
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(src).as_posix())
        for name, data in extra:
            zf.writestr(name, data)
    return zpath


def make_labelmaps(root, n=3, palette=False, classes=("background", "cell", "debris"), ignore=True):
    for i in range(n):
        _save(root / "images" / f"m{i}.png", _image(40, 40, i))
        lab = np.zeros((40, 40), np.uint8)
        lab[5:20, 5:20] = 1
        lab[25:35, 20:38] = 2
        if ignore:
            lab[0, :] = 255
        if palette:
            pal = [0, 0, 0, 200, 30, 30, 30, 200, 30] + [0] * (3 * 253)
            _save(root / "masks" / f"m{i}.png", lab, mode="P", palette=pal)
        else:
            _save(root / "masks" / f"m{i}.png", lab)
    (root / "classes.json").write_text(json.dumps(list(classes)))
    return root


def _square_poly(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def make_coco(
    root, segs, categories=({"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}), images_dir="images", size=(40, 50)
):
    """segs: {stem: [(category_id, segmentation), ...]}."""
    h, w = size
    images, anns = [], []
    for k, (stem, items) in enumerate(segs.items()):
        _save(root / images_dir / f"{stem}.jpg", _image(h, w, k))
        images.append({"id": k + 1, "file_name": f"{stem}.jpg", "width": w, "height": h})
        for cat, seg in items:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": k + 1,
                    "category_id": cat,
                    "segmentation": seg,
                    "iscrowd": int(isinstance(seg, dict)),
                }
            )
    doc = {"images": images, "annotations": anns, "categories": list(categories)}
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


def problems_of(excinfo):
    return excinfo.value.problems


def assert_problem(excinfo, file_part, *message_parts):
    """Some (file, message) names file_part and contains every message part; also in str()."""
    text = str(excinfo.value)
    for f, m in excinfo.value.problems:
        if file_part in f and all(p in m for p in message_parts):
            assert f in text
            return
    raise AssertionError(f"no problem naming {file_part!r} with {message_parts}: {excinfo.value.problems}")


# ------------------------------------------------------------------------------------------------
# Layouts


def test_images_masks_layout_jpg_png(tmp_path):
    make_pairs(tmp_path, n=4)
    (tmp_path / "images" / "README.txt").write_text("notes")
    ds = load_dataset(tmp_path)
    assert len(ds) == 4 and ds.stems == ["s0", "s1", "s2", "s3"]
    s = ds[0]
    assert s.image.shape == (48, 64, 3) and s.image.dtype == np.uint8
    assert s.mask.shape == (48, 64) and s.mask.dtype == np.uint8
    assert set(np.unique(s.mask)) == {0, 1}
    assert np.array_equal(s.mask, _disk_mask(r=6))
    assert s.files == ("images/s0.jpg", "masks/s0.png")
    assert ds.classes == ["background", "foreground"] and ds.ignore_index is None
    summary = ds.summary()
    assert summary["count"] == 4 and summary["height"] == [48, 48] and summary["width"] == [64, 64]
    assert 0 < summary["foreground_fraction_mean"] < 0.5
    assert summary["class_pixels"]["foreground"] == sum(int(x.mask.sum()) for x in ds)
    assert any("README.txt" in line for line in summary["skipped"])
    json.dumps(summary)


def test_im_gt_layout_zero_one_masks_and_mask_name_suffix(tmp_path):
    make_pairs(tmp_path, n=3, img_dir="im", mask_dir="gt", img_ext=".png", scale=1)
    (tmp_path / "gt" / "s2.png").rename(tmp_path / "gt" / "s2_mask.png")
    ds = load_dataset(tmp_path)
    assert len(ds) == 3
    assert ds[2].mask_file == "gt/s2_mask.png"
    assert np.array_equal(ds[1].mask, _disk_mask(r=7))


def test_gray_mask_threshold(tmp_path):
    make_pairs(tmp_path, n=2)
    m = np.where(_disk_mask() > 0, 200, 100).astype(np.uint8)
    _save(tmp_path / "masks" / "s0.png", m)
    ds = load_dataset(tmp_path)
    assert np.array_equal(ds[0].mask, _disk_mask())


def test_exif_rotated_photo_pairs_with_mask_drawn_upright(tmp_path):
    make_pairs(tmp_path, n=2)
    im = Image.fromarray(_image(48, 64))  # stored 64 wide, 48 high
    exif = im.getexif()
    exif[0x0112] = 6  # viewers show it rotated: 48 wide, 64 high
    im.save(tmp_path / "images" / "s0.jpg", exif=exif)
    _save(tmp_path / "masks" / "s0.png", _disk_mask(64, 48) * 255)
    ds = load_dataset(tmp_path)
    assert ds[0].image.shape == (64, 48, 3) and ds[0].mask.shape == (64, 48)
    assert ds[1].image.shape == (48, 64, 3)


def test_load_image_single_file(tmp_path):
    _save(tmp_path / "a.png", _image(10, 12))
    assert load_image(tmp_path / "a.png").shape == (10, 12, 3)
    gray16 = np.arange(120, dtype=np.uint16).reshape(10, 12) * 500
    Image.fromarray(gray16).save(tmp_path / "g.png")
    g = load_image(tmp_path / "g.png")
    assert g.shape == (10, 12, 3) and g.max() == 255 and g.min() == 0
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(DatasetError) as e:
        load_image(tmp_path / "bad.png")
    assert_problem(e, "bad.png", "not a readable image")


def test_lazy_dataset_pickles(tmp_path):
    import pickle

    ds = load_dataset(make_pairs(tmp_path, n=2), cache_bytes=0)
    assert ds[0]._image is None
    copy = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(copy[1].mask, ds[1].mask) and np.array_equal(copy[1].image, ds[1].image)


def test_zip_with_wrapper_folder_leaves_nothing_behind(tmp_path, scratch):
    src = make_pairs(tmp_path / "src" / "mydata", n=3)
    zpath = zip_folder(src, tmp_path / "data.zip", prefix="mydata/", extra=[("__MACOSX/mydata/._s0.jpg", b"junk")])
    ds = load_dataset(zpath)
    assert len(ds) == 3 and ds[0].image_file == "mydata/images/s0.jpg"
    assert list(scratch.iterdir()) == []  # all in memory: extracted copy removed at once
    # lazy: the extracted copy lives as long as the dataset
    lazy = load_dataset(zpath, cache_bytes=0)
    assert len(list(scratch.iterdir())) == 1
    assert np.array_equal(lazy[1].mask, ds[1].mask) and np.array_equal(lazy[1].image, ds[1].image)
    lazy.close()
    assert list(scratch.iterdir()) == []


def test_palette_png_and_classes_json(tmp_path):
    make_labelmaps(tmp_path, palette=True)
    ds = load_dataset(tmp_path, task="openvocab")
    assert ds.classes == ["background", "cell", "debris"] and ds.ignore_index == 255
    assert set(np.unique(ds[0].mask)) == {0, 1, 2, 255}  # indices, not palette colours
    summary = ds.summary()
    assert summary["class_pixels"]["cell"] == 3 * 15 * 15
    assert summary["ignored_pixels"] == 3 * 40
    assert summary["class_images"]["debris"] == 3


def test_index_png_with_classes_dict_and_custom_ignore(tmp_path):
    make_labelmaps(tmp_path, ignore=False)
    lab = np.asarray(Image.open(tmp_path / "masks" / "m0.png")).copy()
    lab[0, :] = 9
    _save(tmp_path / "masks" / "m0.png", lab)
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["bg", "cell", "debris"], "ignore_index": 9}))
    ds = load_dataset(tmp_path, task="openvocab")
    assert ds.ignore_index == 9 and ds.classes == ["bg", "cell", "debris"]
    assert (ds[0].mask[0] == 9).all()


def test_coco_polygons_dichotomous_and_openvocab(tmp_path):
    make_coco(
        tmp_path,
        {
            "a": [(1, [_square_poly(5, 5, 15, 15)]), (2, [_square_poly(20, 10, 40, 30)])],
            "b": [(2, [_square_poly(0, 0, 10, 10), _square_poly(30, 20, 45, 35)])],
        },
    )
    ds = load_dataset(tmp_path)
    assert ds.stems == ["a", "b"] and ds[0].image_file == "images/a.jpg"
    m = ds[0].mask
    assert set(np.unique(m)) == {0, 1}
    assert m[5:15, 5:15].all() and m[10:30, 20:40].all() and m[:, :4].sum() == 0
    assert m.sum() == 100 + 400  # pixel-exact COCO convention
    ov = load_dataset(tmp_path, task="openvocab")
    assert ov.classes == ["background", "cat", "dog"] and ov.ignore_index == 255
    assert ov[0].mask[10, 10] == 1 and ov[0].mask[20, 30] == 2 and ov[1].mask[5, 5] == 2


def test_coco_rle_uncompressed_and_compressed(tmp_path):
    h, w = 40, 50
    a = _disk_mask(h, w, 20, 20, 8)
    b = _disk_mask(h, w, 10, 35, 6)
    segs = {"a": [(1, rle_encode(a, compressed=False))], "b": [(2, rle_encode(b, compressed=True))]}
    assert isinstance(segs["a"][0][1]["counts"], list) and isinstance(segs["b"][0][1]["counts"], str)
    make_coco(tmp_path, segs, size=(h, w))
    ds = load_dataset(tmp_path)
    assert np.array_equal(ds[0].mask, a) and np.array_equal(ds[1].mask, b)


def test_rle_decode_known_strings():
    # Hand-worked pycocotools encoding of counts [30, 2, 40, 5]: 30 -> "n0" (bit 0x10 of a last
    # group is the sign, so 30 needs a second group), 2 -> "2", 40 -> "X1" (two 5-bit groups),
    # and from the fourth count on the difference to the count two back is stored: 5 - 2 -> "3".
    assert coco._rle_counts_from_string("n02X13") == [30, 2, 40, 5]
    assert coco._rle_counts_from_string("34") == [3, 4]
    assert coco._rle_counts_from_string("0M") == [0, -3]  # sign bit: "M" is -3
    assert rle_encode(rle_decode({"size": [7, 11], "counts": [30, 2, 40, 5]}))["counts"] == "n02X13"
    m = rle_decode({"size": [7, 11], "counts": "n02X13"})
    flat = m.T.reshape(-1)
    assert flat[:30].sum() == 0 and flat[30:32].all() and flat[32:72].sum() == 0 and flat[72:].all()
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = (rng.random((13, 17)) < 0.3).astype(np.uint8)
        assert np.array_equal(rle_decode(rle_encode(mask)), mask)
        assert np.array_equal(rle_decode(rle_encode(mask, compressed=False)), mask)


def test_rle_goes_through_pycocotools_a_runtime_dependency(monkeypatch):
    """The codec is pycocotools (pinned for the studio, not only for the tests), its decoder fed
    only checked counts."""
    from pathlib import Path

    import pycocotools.mask

    root = Path(__file__).resolve().parent.parent
    pins = [line for line in (root / "requirements.txt").read_text().splitlines() if line.startswith("pycocotools==")]
    assert len(pins) == 1 and "pycocotools" not in (root / "requirements-test.txt").read_text()
    calls = []
    for name in ("encode", "decode"):
        real = getattr(pycocotools.mask, name)
        monkeypatch.setattr(pycocotools.mask, name, lambda x, real=real, name=name: calls.append(name) or real(x))
    mask = (np.random.default_rng(1).random((9, 14)) < 0.4).astype(np.uint8)
    assert np.array_equal(rle_decode(rle_encode(mask)), mask)
    assert np.array_equal(rle_decode(rle_encode(mask, compressed=False)), mask)
    assert calls == ["encode", "decode", "encode", "decode"]


@pytest.mark.parametrize(
    "counts,size,covered",
    [("n02X1", [7, 11], 72), ("n02X13", [7, 10], 77), (b"n02X13", [8, 11], 77), ("n02X130", [7, 11], 117)],
    ids=["too-few", "too-many", "too-few-bytes", "one-run-more"],
)
def test_a_compressed_rle_that_does_not_cover_its_size_is_refused(tmp_path, counts, size, covered):
    """pycocotools would decode too few pixels from uninitialised memory (and refuse too many
    without saying why): the counts are checked first, in the message the list form gets."""
    h, w = size
    with pytest.raises(ValueError, match=f"^RLE counts cover {covered} pixels but size {w}x{h} has {h * w}$"):
        rle_decode({"size": size, "counts": counts})
    make_coco(
        tmp_path,
        {"a": [(1, {"size": size, "counts": str(counts, "ascii") if isinstance(counts, bytes) else counts})]},
        size=(h, w),
    )
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path)
    assert_problem(e, "annotations.json", "annotation 1", "does not decode", f"RLE counts cover {covered} pixels")


def test_given_heldout_folder(tmp_path):
    make_pairs(tmp_path, n=3)
    make_pairs(tmp_path / "val", n=2)
    ds = load_dataset(tmp_path)
    assert len(ds) == 3 and len(ds.given_heldout) == 2
    train, held = ds.split()
    assert train is ds and held is ds.given_heldout
    assert held[0].image_file == "val/images/s0.jpg"
    assert ds.summary()["given_heldout"] == 2


def test_train_val_folders(tmp_path):
    make_pairs(tmp_path / "train", n=3)
    make_pairs(tmp_path / "heldout", n=1)
    train, held = load_dataset(tmp_path).split()
    assert (len(train), len(held)) == (3, 1)


# ------------------------------------------------------------------------------------------------
# Problems: each one names its file


def test_corrupt_image_and_unreadable_mask(tmp_path):
    make_pairs(tmp_path, n=3)
    (tmp_path / "images" / "s0.jpg").write_bytes(b"this is not a jpeg")
    (tmp_path / "masks" / "s1.png").write_bytes(b"")
    good = (tmp_path / "images" / "s2.jpg").read_bytes()
    (tmp_path / "images" / "s2.jpg").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path)
    assert_problem(e, "images/s0.jpg", "not a readable image")
    assert_problem(e, "masks/s1.png", "empty")
    assert_problem(e, "images/s2.jpg", "truncated")
    assert isinstance(e.value, ValueError)


def test_size_mismatch_names_both_files_and_sizes(tmp_path):
    make_pairs(tmp_path, n=2)
    _save(tmp_path / "masks" / "s1.png", np.zeros((30, 40), np.uint8))
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path)
    assert "masks/s1.png: size 40x30 does not match image images/s1.jpg (64x48)" in str(e.value)


def test_empty_and_full_masks(tmp_path):
    make_pairs(tmp_path, n=3)
    _save(tmp_path / "masks" / "s0.png", np.zeros((48, 64), np.uint8))
    _save(tmp_path / "masks" / "s1.png", np.full((48, 64), 255, np.uint8))
    _save(tmp_path / "masks" / "s2.png", np.where(_disk_mask() > 0, 90, 0).astype(np.uint8))
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path)
    assert_problem(e, "masks/s0.png", "empty mask", "all zero")
    assert_problem(e, "masks/s1.png", "all foreground")
    assert_problem(e, "masks/s2.png", "empty mask", "largest value is 90")
    _save(tmp_path / "masks" / "s2.png", _disk_mask() * 3)  # a label map given to the binary task
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path)
    assert_problem(e, "masks/s2.png", "largest value is 3", "task='openvocab'")


def test_values_outside_classes(tmp_path):
    make_labelmaps(tmp_path)
    lab = np.asarray(Image.open(tmp_path / "masks" / "m1.png")).copy()
    lab[30:, :5] = 7
    lab[30:, 5:8] = 9
    _save(tmp_path / "masks" / "m1.png", lab)
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[:10, :10] = (255, 0, 0)
    _save(tmp_path / "masks" / "m2.png", rgb)
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path, task="openvocab")
    assert_problem(e, "masks/m1.png", "mask values 7, 9 are not class ids", "ids 0-2")
    assert_problem(e, "masks/m2.png", "colour")


def test_missing_or_bad_classes_json(tmp_path):
    make_labelmaps(tmp_path)
    (tmp_path / "classes.json").unlink()
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path, task="openvocab")
    assert_problem(e, "classes.json", "not found")
    (tmp_path / "classes.json").write_text('["a", "b",')
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path, task="openvocab")
    assert_problem(e, "classes.json", "not valid JSON")


def test_unmatched_stems_and_duplicates(tmp_path):
    make_pairs(tmp_path, n=3)
    (tmp_path / "masks" / "s0.png").rename(tmp_path / "masks" / "other.png")
    _save(tmp_path / "images" / "s1.png", _image())
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path)
    assert_problem(e, "images/s0.jpg", "no mask", "masks/")
    assert_problem(e, "masks/other.png", "no image", "images/")
    assert_problem(e, "images/s1", "share the name 's1'")


def test_zip_slip_refused_before_extracting(tmp_path, scratch):
    src = make_pairs(tmp_path / "src", n=2)
    zpath = zip_folder(src, tmp_path / "evil.zip", extra=[("../escape.txt", b"x"), ("/etc/abs.txt", b"x")])
    with pytest.raises(DatasetError) as e:
        load_dataset(zpath)
    assert_problem(e, "../escape.txt", "outside the dataset folder")
    assert_problem(e, "/etc/abs.txt", "outside the dataset folder")
    assert list(scratch.iterdir()) == [] and not (tmp_path / "escape.txt").exists()


def test_failed_zip_is_cleaned_up(tmp_path, scratch):
    src = make_pairs(tmp_path / "src", n=2)
    (src / "images" / "s0.jpg").write_bytes(b"garbage")
    zpath = zip_folder(src, tmp_path / "bad.zip")
    with pytest.raises(DatasetError) as e:
        load_dataset(zpath)
    assert_problem(e, "images/s0.jpg", "not a readable image")
    assert list(scratch.iterdir()) == []
    (tmp_path / "notzip.zip").write_bytes(b"nope")
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path / "notzip.zip")
    assert_problem(e, "notzip.zip", "not a readable zip")


def _png_header_only(path, w, h):
    """A PNG whose header claims w x h, with no pixel data: only a header check can judge it."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")
    )


def test_pixel_limit_from_header_and_decompression_bomb(tmp_path):
    make_pairs(tmp_path, n=3)
    _png_header_only(tmp_path / "images" / "s0.jpg", 9000, 6000)  # 54 MP > 40 MP
    _png_header_only(tmp_path / "images" / "s1.jpg", 100_000, 100_000)  # PIL's bomb guard
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path)
    assert_problem(e, "images/s0.jpg", "9000x6000", "over the limit of 40.0 megapixels")
    assert_problem(e, "images/s1.jpg", "too large")
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path / "images" / "..", max_pixels=1000)
    assert_problem(e, "images/s2.jpg", "64x48", "over the limit")


def test_empty_dataset_and_wrong_layout(tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path / "empty")
    assert_problem(e, "empty", "empty dataset")
    wrong = tmp_path / "wrong"
    _save(wrong / "pictures" / "a.png", _image())
    _save(wrong / "images" / "a.png", _image())
    with pytest.raises(DatasetError) as e:
        load_dataset(wrong)
    assert_problem(e, "wrong", "no dataset found", "Accepted layouts", "images/ folder but no masks/")
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path / "missing")
    assert_problem(e, "missing", "not found")
    _save(tmp_path / "one.png", _image())
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path / "one.png")
    assert_problem(e, "one.png", "expected a dataset folder or a .zip")


def test_coco_problems(tmp_path):
    make_coco(tmp_path, {"a": [(1, [_square_poly(5, 5, 15, 15)])], "b": [], "c": [(1, [_square_poly(1, 1, 5, 5)])]})
    doc = json.loads((tmp_path / "annotations.json").read_text())
    doc["annotations"].append({"id": 50, "image_id": 1, "category_id": 9, "segmentation": [_square_poly(0, 0, 3, 3)]})
    doc["annotations"].append({"id": 51, "image_id": 77, "category_id": 1, "segmentation": [_square_poly(0, 0, 3, 3)]})
    doc["annotations"].append(
        {"id": 52, "image_id": 1, "category_id": 1, "segmentation": {"size": [10, 10], "counts": [3, 4]}}
    )
    doc["annotations"].append({"id": 53, "image_id": 3, "category_id": 1, "segmentation": rle_encode(np.ones((5, 5)))})
    doc["images"].append({"id": 9, "file_name": "ghost.jpg"})
    (tmp_path / "annotations.json").write_text(json.dumps(doc))
    _save(tmp_path / "images" / "stray.jpg", _image())
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path)
    assert_problem(e, "annotations.json", "annotation 50", "category_id 9")
    assert_problem(e, "annotations.json", "annotation 51", "image id 77")
    assert_problem(e, "annotations.json", "annotation 52", "RLE", "100")
    assert_problem(e, "annotations.json", "'ghost.jpg'", "not found")
    assert_problem(e, "annotations.json (image 'b.jpg'", "no foreground")
    assert_problem(e, "annotations.json (image 'c.jpg'", "RLE size 5x5", "50x40")
    assert_problem(e, "images/stray.jpg", "not listed in annotations.json")
    (tmp_path / "annotations.json").write_text("{not json")
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path)
    assert_problem(e, "annotations.json", "not valid JSON", "line 1")


def test_many_problems_are_all_carried_but_message_is_capped(tmp_path):
    for i in range(30):
        _save(tmp_path / "images" / f"x{i:02d}.png", _image(8, 8, i))
    (tmp_path / "masks").mkdir()
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path)
    assert len(e.value.problems) == 30
    text = str(e.value)
    assert "has 30 problems" in text and "and 10 more" in text
    assert len(text.splitlines()) == 1 + 20 + 1


# ------------------------------------------------------------------------------------------------
# Splits


def test_split_deterministic_and_never_empty(tmp_path):
    ds = load_dataset(make_pairs(tmp_path, n=7))
    a = ds.split(0.3, seed=1)
    b = ds.split(0.3, seed=1)
    assert [s.stem for s in a[1]] == [s.stem for s in b[1]]
    assert len(a[1]) == 2 and len(a[0]) == 5
    assert set(a[0].stems).isdisjoint(a[1].stems) and set(a[0].stems) | set(a[1].stems) == set(ds.stems)
    others = {tuple(ds.split(0.3, seed=k)[1].stems) for k in range(10)}
    assert len(others) > 1
    for frac in (0.01, 0.5, 0.99):
        train, held = ds.split(frac)
        assert len(train) >= 1 and len(held) >= 1
    assert len(ds.split(3)[1]) == 3 and len(ds.split(2.0)[1]) == 2  # CLI floats >= 1 are counts
    train, held = ds.split(["s2", "s5"])
    assert held.stems == ["s2", "s5"] and "s2" not in train.stems
    two = ds.subset(["s0", "s1"])
    assert [len(x) for x in two.split(0.1)] == [1, 1]
    with pytest.raises(ValueError, match="1 sample"):
        ds.subset(["s0"]).split()
    with pytest.raises(ValueError, match="between 1 and 6"):
        ds.split(7)
    with pytest.raises(ValueError, match="unknown stems"):
        ds.split(["nope"])


def test_split_with_separate_folder(tmp_path):
    ds = load_dataset(make_pairs(tmp_path / "a", n=3))
    make_pairs(tmp_path / "b", n=2)
    train, held = ds.split(load_dataset(tmp_path / "b", task=ds.task))
    assert (len(train), len(held)) == (3, 2)


def test_split_refuses_a_path(tmp_path):
    ds = load_dataset(make_pairs(tmp_path / "a", n=3))
    make_pairs(tmp_path / "b", n=2)
    for path in (tmp_path / "b", str(tmp_path / "b")):
        with pytest.raises(
            TypeError,
            match=r"is a path; load it with load_dataset\(path, "
            r"task='dichotomous'\) first and pass the Dataset",
        ):
            ds.split(path)
    assert isinstance(ds.split(load_dataset(tmp_path / "b"))[1], Dataset)


# ------------------------------------------------------------------------------------------------
# Augmentation and letterboxing


def test_augment_keeps_mask_values_and_sizes():
    rng_img = np.random.default_rng(3)
    image = rng_img.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    mask = np.zeros((60, 80), np.uint8)
    mask[10:30, 10:40] = 1
    mask[35:55, 45:75] = 4
    mask[0, :] = 255
    values = {0, 1, 4, 255}
    for size in (None, 64, (32, 48), (100, 120)):
        aug = Augment(size=size, vflip=0.5, scale=(0.5, 1.5), mask_fill=255)
        for seed in range(6):
            out_img, out_mask = aug(image, mask, np.random.default_rng(seed))
            expect = (60, 80) if size is None else ((size, size) if isinstance(size, int) else size)
            assert out_img.shape == (*expect, 3) and out_img.dtype == np.uint8
            assert out_mask.shape == expect and out_mask.dtype == np.uint8
            assert set(np.unique(out_mask)) <= values
    a = Augment(size=64)(image, mask, np.random.default_rng(7))
    b = Augment(size=64)(image, mask, np.random.default_rng(7))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_augment_pixels_stay_aligned_without_colour():
    image = np.zeros((50, 50, 3), np.uint8)
    mask = _disk_mask(50, 50, 20, 30, 9)
    image[mask > 0] = 255
    aug = Augment(size=40, hflip=0.5, vflip=0.5, brightness=0, contrast=0, saturation=0, hue=0)
    for seed in range(5):
        im, m = aug(image, mask, np.random.default_rng(seed))
        if m.sum() > 20:
            inside = im[..., 0][m > 0].mean()
            outside = im[..., 0][m == 0].mean()
            assert inside > 200 and outside < 60


def test_resize_pad_inverse_round_trip():
    mask = np.zeros((50, 30), np.uint8)
    mask[10:40, 5:20] = 3
    padded, box = letterbox(mask, 100, nearest=True)
    assert padded.shape == (100, 100) and box.resized_size == (100, 60) and box.pad == (0, 40)
    assert box.scale == 2.0 and (padded[:, 60:] == 0).all()
    assert np.array_equal(unletterbox(padded, box, nearest=True), mask)

    image = _image(75, 120)
    resized, scale = resize_longest_side(image, 64)
    assert resized.shape == (40, 64, 3) and scale == pytest.approx(64 / 120)
    sq, pad = pad_to_square(resized, 64)
    assert sq.shape == (64, 64, 3) and pad == (24, 0)

    # logits as torch (B, K, S, S), and SAM-style low-res logits (S/4), back at source size
    big = _disk_mask(75, 120, 40, 60, 25)
    lb, box = letterbox(big.astype(np.float32), 64)
    logits = torch.from_numpy(lb)[None, None].repeat(2, 3, 1, 1) * 2 - 1
    back = unletterbox(logits, box)
    assert back.shape == (2, 3, 75, 120)
    low = torch.nn.functional.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    for restored in (back, unletterbox(low, box)):
        pred = (restored[0, 0] > 0).numpy()
        iou = (pred & (big > 0)).sum() / (pred | (big > 0)).sum()
        assert iou > 0.9
    back_np = unletterbox(lb, box)
    assert back_np.shape == (75, 120) and back_np.dtype == np.float32
