"""Regions, whole-frame mapping and the streamed, resumable predict, end to end with fast settings."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.morphology import area_opening
from conftest import FAST
from scipy import ndimage

from spadim.cli import main
from spadim.data.mvtec import Preprocess
from spadim.inspect import Inspector, find_regions


def test_regions_match_scipy_labelling():
    rng = np.random.default_rng(3)
    score_map = ndimage.gaussian_filter(rng.normal(size=(120, 90)), 3).astype(np.float32)
    threshold, min_area = float(np.quantile(score_map, 0.9)), 20
    regions, mask = find_regions(score_map, threshold, min_area)
    labels, count = ndimage.label(score_map > threshold, structure=np.ones((3, 3)))
    sizes = ndimage.sum(np.ones_like(labels), labels, range(1, count + 1))
    kept = [i + 1 for i, size in enumerate(sizes) if size >= min_area]
    assert sorted(r.area for r in regions) == sorted(int(sizes[i - 1]) for i in kept)
    np.testing.assert_array_equal(mask, np.isin(labels, kept))
    for region in regions:
        inside = mask[region.y : region.y + region.height, region.x : region.x + region.width]
        assert inside.sum() >= region.area  # the box holds the whole component
        box = score_map[region.y : region.y + region.height, region.x : region.x + region.width]
        assert region.peak == pytest.approx(float(box[inside].max()))
    assert [r.peak for r in regions] == sorted((r.peak for r in regions), reverse=True)


def test_whole_frame_keeps_every_pixel_and_maps_back():
    pre = Preprocess(72, 64, "whole")
    image = np.zeros((90, 150, 3), np.uint8)
    image[:, -10:] = 255  # a border stripe the papers' centre crop would cut away
    frame = pre.image(image)
    assert frame.shape == (64, 64, 3) and frame[:, -3:].mean() > 200
    back = pre.to_original(frame[..., 0].astype(np.float32), (90, 150))
    assert back.shape == (90, 150) and back[:, -5:].mean() > 200 and back[:, :100].max() == 0
    cropped = Preprocess(72, 64, "crop")
    assert cropped.image(image)[:, -3:].max() == 0  # the crop loses the stripe


@pytest.fixture(scope="module")
def model(tiny_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "nut.pt"
    assert (
        main(
            [
                "fit",
                str(tiny_root / "nut"),
                "--method",
                "padim",
                "--far",
                "0.2",
                "--out",
                str(path),
                *FAST,
                "--layers",
                "1,2,3",
            ]
        )
        == 0
    )
    return path


def _records(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_predict_decides_with_the_stored_threshold_on_original_pixels(model, tiny_root, tmp_path):
    images = sorted((tiny_root / "nut" / "test").rglob("*.png"))
    big = tmp_path / "big.png"  # another size than the training images: results on its own pixels
    cv2.imwrite(str(big), cv2.resize(cv2.imread(str(images[-1])), (150, 110)))
    out = tmp_path / "pred"
    assert main(["predict", str(model), *map(str, images), str(big), "--out", str(out), "--save-maps"]) == 0
    records = _records(out)
    inspector = Inspector.load(model)
    cal = inspector.calibration
    assert cal.far == 0.2 and cal.how == "leave-one-out" and cal.n_images == 6
    for record in records:
        # the decision is the regions: the area opening of the full-resolution map decides it
        full = np.load(out / "maps" / f"{Path(record['mask']).stem}.npy")
        area = max(1, round(0.001 * record["height"] * record["width"]))
        opened = float(area_opening(full, area_threshold=area, connectivity=2).max())
        assert record["region_score"] == pytest.approx(opened, rel=1e-6)
        assert record["region_threshold"] == cal.region_threshold
        assert record["decision"] == ("defect" if opened > cal.region_threshold else "ok")
        assert (record["decision"] == "defect") == bool(record["regions"])
        assert record["normalized_score"] == pytest.approx(float(cal.normalize_image(record["score"])))
        mask = cv2.imread(str(out / record["mask"]), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == (record["height"], record["width"])
        assert (mask > 0).sum() == record["defect_pixels"] == sum(r["area"] for r in record["regions"])
    assert records[-1]["width"] == 150 and records[-1]["height"] == 110
    assert (out / "colorbar.png").is_file()
    # the same colour is the same score in every call: the range comes from the calibration only
    run = json.loads((out / "run.json").read_text())
    assert run["colour_range"]["low"] == cal.pixel_median
    assert run["colour_range"]["high"] == pytest.approx(2 * cal.mask_level - cal.pixel_median)


def test_predict_resumes_after_the_last_finished_image(model, tiny_root, tmp_path):
    images = sorted((tiny_root / "nut" / "test").rglob("*.png"))
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["predict", str(model), *map(str, images), "--out", str(full), "--batch-size", "2"]) == 0
    assert main(["predict", str(model), *map(str, images[:2]), "--out", str(part), "--batch-size", "2"]) == 0
    with open(part / "predictions.jsonl", "a") as handle:  # a crash mid-line
        handle.write('{"image": "half')
    assert main(["predict", str(model), *map(str, images), "--out", str(part), "--batch-size", "2"]) == 0
    first, resumed = _records(full), _records(part)
    assert [r["image"] for r in resumed] == [r["image"] for r in first]
    assert [r["score"] for r in resumed] == pytest.approx([r["score"] for r in first], rel=1e-5)
    assert len((part / "predictions.csv").read_text().splitlines()) == 1 + len(images)


def test_predict_refuses_to_mix_operating_points_and_overrides_work(model, tiny_root, tmp_path, capsys):
    images = sorted((tiny_root / "nut" / "test").rglob("*.png"))
    out = tmp_path / "p"
    assert main(["predict", str(model), *map(str, images), "--out", str(out)]) == 0
    before = (out / "predictions.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["predict", str(model), *map(str, images), "--out", str(out), "--far", "0.5"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert (out / "predictions.jsonl").read_bytes() == before
    lowest = min(r["score"] for r in _records(out))
    assert (
        main(
            [
                "predict",
                str(model),
                *map(str, images),
                "--out",
                str(tmp_path / "t"),
                "--threshold",
                str(lowest - 1),
            ]
        )
        == 0
    )
    assert {r["decision"] for r in _records(tmp_path / "t")} == {"defect"}
    for bad in (["--far", "1.5"], ["--far", "0.1", "--threshold", "3"]):
        assert main(["predict", str(model), str(images[0]), "--out", str(tmp_path / "x"), *bad]) == 2
        assert not (tmp_path / "x").exists()


def test_calibrate_replaces_the_operating_point_without_refitting(model, tiny_root, tmp_path):
    import torch

    recalibrated = tmp_path / "re.pt"
    good = tiny_root / "nut" / "test" / "good"
    assert main(["calibrate", str(model), str(good), "--far", "0.3", "--out", str(recalibrated)]) == 0
    old, new = torch.load(model, weights_only=True), torch.load(recalibrated, weights_only=True)
    for key, tensor in old["state"]["tensors"].items():
        assert torch.equal(tensor, new["state"]["tensors"][key]), key
    cal = Inspector.load(recalibrated).calibration
    assert cal.how == "held-out folder" and cal.n_images == len(list(good.glob("*.png"))) and cal.far == 0.3
    inspector = Inspector.load(model)
    frames = np.stack(
        [
            inspector.pre.image(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB))
            for p in sorted(good.glob("*.png"))
        ]
    )
    _, scores, _ = inspector.score_frames(frames)
    assert cal.image_scores == pytest.approx(sorted(scores.tolist()), rel=1e-5)


def test_corrupt_and_foreign_model_files_fail_in_one_line(tmp_path, tiny_root, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    image = next((tiny_root / "nut" / "test" / "good").glob("*.png"))
    assert main(["predict", str(junk), str(image), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a spadim model file" in err[0]
    assert main(["calibrate", str(junk), str(image.parent)]) == 2
