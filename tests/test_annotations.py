"""VIA and COCO annotation loaders on tiny synthetic files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from imageextract.errors import ImageExtractError
from imageextract.evaluation.annotations import (
    emps_polygons,
    emps_regions,
    load_coco,
    load_via_json,
    rasterize_via_regions,
    rle_counts_from_string,
    rle_counts_to_string,
    rle_decode,
    rle_encode,
)


def _poly(xs, ys, name="polygon"):
    return {"shape_attributes": {"name": name, "all_points_x": xs, "all_points_y": ys},
            "region_attributes": {}}


# Pixel (r, c) covers [c, c+1) x [r, r+1); a pixel is in when its centre is.
SQUARE = _poly([1, 4, 4, 1], [1, 1, 3, 3])  # rows 1-2, cols 1-3
CIRCLE = {"shape_attributes": {"name": "circle", "cx": 5, "cy": 5, "r": 1.6}}
RECT = {"shape_attributes": {"name": "rect", "x": 0, "y": 7, "width": 3, "height": 1}}


def _expected():
    lab = np.zeros((8, 8), dtype=np.int32)
    lab[1:3, 1:4] = 1
    # centres (c + 0.5, r + 0.5) within 1.6 of (5, 5): offsets (+-0.5, +-0.5)
    # and (+-1.5, +-0.5) are in (distance 0.71 and 1.58), (+-1.5, +-1.5) not.
    lab[4:6, 3:7] = 2
    lab[3, 4:6] = 2
    lab[6, 4:6] = 2
    lab[7, 0:3] = 3
    return lab


def test_rasterize_regions_by_hand():
    lab = rasterize_via_regions([SQUARE, CIRCLE, RECT], (8, 8))
    np.testing.assert_array_equal(lab, _expected())


def test_rotated_ellipse_follows_via_angle():
    # rx = 2.9 along theta = 90 degrees points down the rows (+y): pixel
    # centres 0, 1, 2 rows from the centre (row 5) are in, 3 rows is not.
    e = {"shape_attributes": {"name": "ellipse", "cx": 5.5, "cy": 5.5, "rx": 2.9, "ry": 0.6,
                              "theta": np.pi / 2}}
    lab = rasterize_via_regions([e], (11, 11))
    assert set(np.flatnonzero(lab.any(axis=1))) == {3, 4, 5, 6, 7}
    assert set(np.flatnonzero(lab.any(axis=0))) == {5}


def test_via2_project_round_trip(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "b.png")
    project = {
        "_via_settings": {},
        "_via_img_metadata": {
            "a.png123": {"filename": "a.png", "size": 123, "regions": [SQUARE, CIRCLE, RECT],
                         "file_attributes": {}},
            "b.png45": {"filename": "b.png", "size": 45, "regions": [], "file_attributes": {}},
        },
    }
    path = tmp_path / "via.json"
    path.write_text(json.dumps(project))
    out = load_via_json(path, tmp_path)
    np.testing.assert_array_equal(out["a.png"], _expected())
    assert out["b.png"].shape == (4, 5) and not out["b.png"].any()
    # the same with a shape mapping instead of an image folder
    out2 = load_via_json(path, {"a.png": (8, 8), "b.png": (4, 5)})
    np.testing.assert_array_equal(out2["a.png"], _expected())


def test_via1_export_regions_dict_and_missing_images(tmp_path):
    export = {"x.png9": {"filename": "x.png", "size": 9,
                         "regions": {"0": SQUARE, "1": _poly([0, 2, 2, 0], [0, 0, 1, 1], "polyline")}}}
    path = tmp_path / "via1.json"
    path.write_text(json.dumps(export))
    lab = load_via_json(path, {"x.png": (4, 5)})["x.png"]
    # the polyline (label 2) covers row 0, cols 0-1; the square rows 1-2.
    assert lab[0, 0] == 2 and lab[0, 1] == 2 and lab[1, 1] == 1
    with pytest.raises(ImageExtractError, match="x.png"):
        load_via_json(path, tmp_path)  # no x.png there
    assert load_via_json(path, tmp_path, missing="skip") == {}


def test_via_rejects_other_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"k": {"no": "filename"}}))
    with pytest.raises(ImageExtractError, match="filename"):
        load_via_json(path, {})


def test_compressed_rle_strings_by_hand():
    # values < 16 are one character chr(48 + x); from the 4th count on, the
    # difference to the count two places back is coded: 1 - 2 = -1 -> 'O'.
    assert rle_counts_to_string([5, 2, 3, 1]) == "523O"
    assert rle_counts_from_string("523O") == [5, 2, 3, 1]
    # 100 = 3 * 32 + 4: low 5 bits with the continuation bit (4 | 32 = 36
    # -> 'T'), then 3 -> '3'.
    assert rle_counts_to_string([100]) == "T3"
    assert rle_counts_from_string(b"T3") == [100]


def test_rle_decode_column_major_by_hand():
    # pixels in column-major order: (0,0) (1,0) (0,1) (1,1) = 0 1 1 0
    m = rle_decode({"size": [2, 2], "counts": [1, 2, 1]})
    assert m.astype(int).tolist() == [[0, 1], [1, 0]]
    # a mask starting with foreground begins with a zero-length run
    assert rle_encode(np.array([[1, 0], [1, 0]]), compressed=False)["counts"] == [0, 2, 2]
    with pytest.raises(ImageExtractError, match="sum"):
        rle_decode({"size": [2, 2], "counts": [1, 2]})


def test_rle_round_trip_random_masks():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (3, 7), (40, 33)]:
        mask = rng.random(shape) > 0.6
        for compressed in (False, True):
            np.testing.assert_array_equal(rle_decode(rle_encode(mask, compressed=compressed)), mask)
    big = np.zeros((300, 200), bool)
    big[50:250, 20:180] = True  # long runs: multi-character and negative deltas
    np.testing.assert_array_equal(rle_decode(rle_encode(big)), big)


def test_coco_round_trip_polygon_and_rle(tmp_path):
    m2 = np.zeros((6, 8), bool)
    m2[3:5, 4:8] = True
    m3 = np.zeros((6, 8), bool)
    m3[0, 6:8] = True
    coco = {
        "images": [{"id": 10, "file_name": "p.png", "height": 6, "width": 8},
                   {"id": 11, "file_name": "empty.png", "height": 2, "width": 3}],
        "annotations": [
            # polygon in pixel-edge coordinates: rows 0-1, cols 1-2
            {"id": 1, "image_id": 10, "category_id": 1, "iscrowd": 0,
             "segmentation": [[1, 0, 3, 0, 3, 2, 1, 2]]},
            {"id": 2, "image_id": 10, "category_id": 1, "iscrowd": 0,
             "segmentation": rle_encode(m2, compressed=False)},
            {"id": 3, "image_id": 10, "category_id": 1, "iscrowd": 0,
             "segmentation": rle_encode(m3, compressed=True)},
            {"id": 4, "image_id": 10, "category_id": 1, "iscrowd": 1,
             "segmentation": {"size": [6, 8], "counts": [47, 1]}},
        ],
    }
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    out = load_coco(path)
    expected = np.zeros((6, 8), np.int32)
    expected[0:2, 1:3] = 1
    expected[m2] = 2
    expected[m3] = 3
    np.testing.assert_array_equal(out["p.png"], expected)
    assert out["empty.png"].shape == (2, 3) and not out["empty.png"].any()
    crowd = load_coco(path, include_crowd=True)["p.png"]
    assert crowd[5, 7] == 4  # the last pixel in column-major order


def test_coco_errors_name_the_problem(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a", "height": 2, "width": 2}],
                                "annotations": [{"id": 5, "image_id": 2, "segmentation": []}]}))
    with pytest.raises(ImageExtractError, match="image_id"):
        load_coco(path)
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a", "height": 2, "width": 2}],
                                "annotations": [{"id": 5, "image_id": 1,
                                                 "segmentation": {"size": [3, 3], "counts": [9]}}]}))
    with pytest.raises(ImageExtractError, match="differs"):
        load_coco(path)


def test_emps_metadata_regions(tmp_path):
    regions = [
        {"shape_attributes": {"name": "polyline", "all_points_x": [0, 4, 4], "all_points_y": [0, 0, 3]},
         "region_attributes": {}},
        {"shape_attributes": {"name": "circle", "cx": 10, "cy": 10, "r": 2}, "region_attributes": {}},
    ]
    (tmp_path / "metadata.csv").write_text(
        'filename,doi,locator,regions\nab12.png,10.1/x,gr1,"' + repr(regions) + '"\n'
    )
    assert emps_regions(tmp_path, "ab12") == regions
    polys = emps_polygons(tmp_path, "ab12", scale=0.5, n_vertices=4)
    np.testing.assert_allclose(polys[0], [[0, 0], [2, 0], [2, 1.5]])
    np.testing.assert_allclose(polys[1], [[6, 5], [5, 6], [4, 5], [5, 4]], atol=1e-12)
    with pytest.raises(ImageExtractError, match="zz"):
        emps_regions(tmp_path, "zz")
