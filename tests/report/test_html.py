"""report.html: parses, links only existing local files, numbers equal the inputs."""

from __future__ import annotations

import math
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import pytest

from spadim.report import published
from spadim.report.html import RANDOM_BANNER, write_report

METRICS = ("pixel_auroc", "pixel_aupr", "image_auroc", "aupro")


class Collector(HTMLParser):
    """Every start tag with its attributes, plus the text, and the results-table cells."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.ids: set[str] = set()
        self.row: dict | None = None
        self.cells: list[tuple[str, str, str, str]] = []  # class, method, metric, data-value

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "tr" and "data-method" in a:
            self.row = a
        if tag == "td" and "data-metric" in a and self.row is not None:
            self.cells.append(
                (self.row["data-class"], self.row["data-method"], a["data-metric"], a["data-value"])
            )

    def handle_endtag(self, tag):
        if tag == "tr":
            self.row = None

    def handle_data(self, data):
        self.text.append(data)


def _png(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((8, 12, 3), 128, np.uint8))
    return path.name


def _row(cls: str, method: str, seed: int, note: str = "") -> dict:
    rng = np.random.default_rng(seed)
    r = {"class": cls, "method": method, "n_train": 25, "n_test": 14, "note": note}
    r.update({m: float(rng.uniform(0.3, 1.0)) for m in METRICS})
    return r


def make_context(out: Path, pretrained: bool = True) -> dict:
    """A context like evaluate/layer-sweep/mask-sweep would pass, with tiny PNGs written in ``out``."""
    for rel in [
        "curves/grid.png",
        "curves/hazelnut.png",
        "gallery/grid_best.png",
        "multiplier_sweep_spade.png",
        "figure5.png",
    ]:
        _png(out / rel)
    results = [
        _row(c, m, i)
        for i, (c, m) in enumerate([(c, m) for c in ("grid", "hazelnut") for m in ("spade", "padim")])
    ]
    nan_row = _row("transistor", "spade", 9, note="no good test image")
    nan_row["image_auroc"] = float("nan")
    results.append(nan_row)
    for i, m in enumerate(("spade", "padim")):
        results.append(_row("mean", m, 20 + i))
    return {
        "title": "spadim evaluate",
        "command": "spadim evaluate data --arch resnet50_caffe --out 'x y' <&>",
        "created": "2026-11-28 09:30 UTC",
        "data": {
            "root": "../shared/data/mvtec_ad_subset",
            "classes": [
                {
                    "name": "grid",
                    "n_train": 25,
                    "n_test_good": 3,
                    "n_test_anomalous": 11,
                    "image_size": "1024x1024",
                    "note": "subset of the full class (264 train)",
                },
                {
                    "name": "hazelnut",
                    "n_train": 50,
                    "n_test_good": 4,
                    "n_test_anomalous": 12,
                    "image_size": "256x256",
                    "note": "resized copy",
                },
            ],
        },
        "weights": {
            "arch": "resnet50_caffe",
            "source": "/w/resnet50_caffe-44e9675b.pth",
            "sha256": "44e9675be37f0123456789",
            "pretrained": pretrained,
            "describe": "weights",
        },
        "settings": {"layers": [1, 2, 3], "k": 5, "d": 550, "seed": 0, "resize": 256, "crop": 224},
        "results": results,
        "curves": {"grid": "curves/grid.png", "hazelnut": "curves/hazelnut.png"},
        "galleries": {
            "grid": [
                {"caption": "best: bent/000.png", "path": "gallery/grid_best.png"},
                {"caption": "worst: missing", "path": "gallery/grid_worst.png"},
            ]
        },
        "mask_sweep": {
            "suitability": [
                {
                    "class": "grid",
                    "detector": "otsu",
                    "area_fraction": 0.9,
                    "gt_coverage": 1.0,
                    "fg_coverage": 0.95,
                    "fg_precision": 0.8,
                    "auto_rating": "ok",
                    "fallbacks": 0,
                    "n_test": 14,
                }
            ],
            "sweep": [
                {
                    "class": c,
                    "method": "spade",
                    "detector": "otsu",
                    "multiplier": mu,
                    "pixel_auroc": 0.9,
                    "pixel_aupr": 0.5,
                    "image_auroc": 0.7,
                    "aupro": 0.8,
                }
                for c in ("grid", "mean")
                for mu in (0.0, 0.2, 1.0)
            ],
            "plots": ["multiplier_sweep_spade.png", "multiplier_sweep_padim.png"],
        },
        "layer_sweep": {
            "rows": [
                {"class": "grid", "layers": "1+2", "method": "spade", "pixel_auroc": 0.9, "pixel_aupr": 0.5}
            ],
            "table3": [
                {
                    "method": "spade",
                    "combinations": "with layer 4",
                    "n": 8,
                    "mean_pixel_aupr": 0.45,
                    "mean_pixel_auroc": 0.95,
                },
                {
                    "method": "spade",
                    "combinations": "without layer 4",
                    "n": 7,
                    "mean_pixel_aupr": 0.55,
                    "mean_pixel_auroc": 0.97,
                },
            ],
            "best": [
                {
                    "class": "grid",
                    "method": "spade",
                    "best_layers": "1+2",
                    "n_layers": 2,
                    "pixel_aupr": 0.5,
                    "pixel_auroc": 0.9,
                }
            ],
            "counts": {"spade": {"classes": 3, "best_uses_two_layers": 2}},
            "correlation": {"pearson_r_combination_means": 0.81, "pearson_r_class_x_combination": 0.6},
            "figure5": "figure5.png",
        },
        "extra_sections": [{"title": "Extra", "html": '<p id="extra">verbatim</p>'}],
    }


def parse(path: Path) -> Collector:
    p = Collector()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    return p


@pytest.fixture
def report(tmp_path):
    ctx = make_context(tmp_path)
    path = write_report(tmp_path, ctx)
    return path, ctx, parse(path)


def test_parses_and_every_link_resolves(report):
    path, _, doc = report
    assert path.name == "report.html"
    links = [
        a.get("src") if t in ("img", "script") else a.get("href")
        for t, a in doc.tags
        if t in ("img", "a", "script", "link")
    ]
    assert any(t == "img" for t, _ in doc.tags)
    for link in links:
        assert link, "empty link"
        if link.startswith("#"):
            assert link[1:] in doc.ids, link
            continue
        assert not link.startswith(("http://", "https://", "//", "/")), link
        assert (path.parent / unquote(link)).is_file(), link


def test_self_contained(report):
    path, _, doc = report
    assert not [t for t, _ in doc.tags if t == "script"]
    for tag, attrs in doc.tags:
        if tag in ("script", "link", "img"):
            for key in ("src", "href"):
                assert not str(attrs.get(key, "")).startswith(("http://", "https://", "//")), (tag, attrs)
    assert "@import" not in path.read_text() and "url(" not in path.read_text()


def test_results_numbers_equal_rows(report):
    _, ctx, doc = report
    shown = {(c, m, k): float(v) for c, m, k, v in doc.cells}
    expected = {(r["class"], r["method"], k): r[k] for r in ctx["results"] for k in METRICS}
    assert set(shown) == set(expected)
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(shown[key]), key
        else:
            assert shown[key] == value, key


def test_nan_shows_dash_and_note(report):
    path, _, _ = report
    text = path.read_text()
    row = text[text.index('data-class="transistor"') :]
    row = row[: row.index("</tr>")]
    assert 'data-metric="image_auroc" data-value="nan">–<' in row
    assert "no good test image" in row


def test_random_weights_banner(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    random_page = write_report(tmp_path / "a", make_context(tmp_path / "a", pretrained=False)).read_text()
    trained_page = write_report(tmp_path / "b", make_context(tmp_path / "b", pretrained=True)).read_text()
    assert RANDOM_BANNER in random_page and 'class="banner"' in random_page
    assert RANDOM_BANNER not in trained_page and 'class="banner"' not in trained_page


def test_missing_image_not_linked(report):
    path, _, doc = report
    text = path.read_text()
    assert "grid_worst.png" not in text and "multiplier_sweep_padim.png" not in text
    assert "gallery/grid_best.png" in text  # the existing one is linked


def test_published_numbers_shown(report):
    path, _, doc = report
    text = path.read_text()
    hazelnut = text[text.index('data-class="hazelnut" data-method="spade"') :]
    hazelnut = hazelnut[: hazelnut.index("</tr>")]
    spade = published.per_class("pixel_auroc", "spade_paper")["hazelnut"]
    assert spade == 0.991
    assert f'data-ref-value="{spade!r}">0.991<' in hazelnut
    mean = text[text.index('data-class="mean" data-method="padim"') :]
    mean = mean[: mean.index("</tr>")]
    for v in published.study_means()["padim"].values():
        assert f'data-ref-value="{v!r}"' in mean
    plain = "".join(doc.text)
    assert published.source("spade_paper")["citation"] in plain
    assert "Wide ResNet-50-2" in plain and "subset of the full class" in plain


def test_command_escaped_and_header(report):
    path, ctx, doc = report
    text = "".join(doc.text)
    assert ctx["command"] in text  # verbatim after unescaping
    assert "<&>" not in path.read_text()
    assert "44e9675be37f" in text and "44e9675be37f0" not in text


def test_minimal_context(tmp_path):
    ctx = {
        "title": "spadim fit",
        "command": "spadim fit x",
        "weights": {"arch": "wide_resnet50_2"},
        "results": [],
    }
    doc = parse(write_report(tmp_path, ctx))
    assert not [t for t, _ in doc.tags if t == "img"]
