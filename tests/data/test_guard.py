"""Hostile images are refused from their header, before any decoding, in every command that reads files."""

from __future__ import annotations

import resource

import cv2
import numpy as np
import pytest
from hostile_images import hostile, png

from spadim.cli import main
from spadim.data.guard import DEFAULT_MAX_PIXELS, ImageRefused, check_header, set_max_pixels
from spadim.data.mvtec import decode_rgb, read_rgb


@pytest.mark.parametrize("name", sorted(hostile()))
def test_each_hostile_image_is_refused_without_decoding(name, tmp_path):
    data = hostile()[name]  # built before measuring
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageRefused, match=name):
        decode_rgb(data, name)
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ImageRefused, match=name):
        read_rgb(path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, f"{name}: peak memory grew {grown_mb:.0f} MB"  # decoded, the bomb is 900 MB


def test_the_limit_is_the_declared_pixel_count():
    ok, encoded = cv2.imencode(".png", np.zeros((100, 200), np.uint8))
    assert check_header(encoded.tobytes(), "a.png") == (200, 100)
    try:
        set_max_pixels(20_000)
        assert check_header(encoded.tobytes(), "a.png") == (200, 100)  # exactly at the limit
        set_max_pixels(19_999)
        with pytest.raises(ImageRefused, match="200 x 100 = 0.02 megapixels, over the limit"):
            decode_rgb(encoded.tobytes(), "a.png")
    finally:
        set_max_pixels(DEFAULT_MAX_PIXELS)
    assert check_header(png(7000, 7000), "b.png") == (7000, 7000)  # 49 MP: under the default limit
    with pytest.raises(ImageRefused, match="over the limit of 50"):
        check_header(png(7100, 7100), "c.png")


def test_predict_and_fit_refuse_a_pixel_bomb_in_one_line_with_exit_2(tiny_root, tmp_path, capsys):
    folder = tmp_path / "good"
    folder.mkdir()
    for path in sorted((tiny_root / "nut" / "train" / "good").glob("*.png"))[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "zz_bomb.png").write_bytes(hostile()["bomb.png"])
    assert main(["fit", str(folder), "--out", str(tmp_path / "m.pt"), "--arch", "resnet18", "--weights",
                 "random", "--layers", "1,2,3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "zz_bomb.png" in err[0] and "megapixels" in err[0]
    assert not (tmp_path / "m.pt").exists()
