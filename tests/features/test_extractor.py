import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spadim.features.backbone import load_backbone
from spadim.data.mvtec import Preprocess, load_class
from spadim.errors import SpadimError
from spadim.features.extractor import ALL_COMBOS, FeatureExtractor, embed, parse_layers


def test_parse_layers():
    assert parse_layers("3,1, 2") == (1, 2, 3)
    assert parse_layers([4]) == (4,)
    for bad in ("0", "5", "1,x", "", "1,2,7"):
        with pytest.raises(SpadimError, match="layer"):
            parse_layers(bad)


def test_all_combos_are_the_15_nonempty_subsets():
    assert len(ALL_COMBOS) == 15 == len(set(ALL_COMBOS))
    assert all(c and list(c) == sorted(set(c)) and set(c) <= {1, 2, 3, 4} for c in ALL_COMBOS)


def _extractor(cache_dir=None, **kw):
    model, w = load_backbone("resnet18", "random", seed=0)
    return FeatureExtractor(model, w, Preprocess(72, 64), batch_size=4, cache_dir=cache_dir, **kw)


def test_extractor_shapes_batches_and_kept_layers(tiny_root):
    data = load_class(tiny_root / "nut")
    fx = _extractor()
    fs = fx(data.train)
    assert fx.n_forward == len(data.train)
    assert {layer: tuple(t.shape[1:]) for layer, t in fs.layers.items()} == {
        1: (64, 16, 16),
        2: (128, 8, 8),
        3: (256, 4, 4),
        4: (512, 2, 2),
    }
    assert fs.pooled.shape == (len(data.train), 512) and fs.images.shape == (len(data.train), 64, 64, 3)
    assert fs.layers[1].is_contiguous(memory_format=torch.channels_last)
    # the pooled vector is the mean of layer 4
    assert torch.allclose(fs.pooled, fs.layers[4].mean(dim=(2, 3)), atol=1e-5)
    # batching does not change features: one image alone gives the same rows
    alone = fx(data.train[2:3])
    assert torch.allclose(alone.layers[2][0], fs.layers[2][2], atol=1e-5)
    # only the layers asked for are kept, and without the pooled vector the pass stops early
    slim = _extractor(layers=(1, 2), pooled=False)
    assert slim.last == 2
    part = slim(data.train)
    assert set(part.layers) == {1, 2} and part.pooled is None
    assert torch.allclose(part.layers[2], fs.layers[2], atol=1e-5)
    assert [len(b) for b in fs.batches(4)] == [4, 2] and torch.equal(
        fs.rows(4, 6).layers[3], fs.layers[3][4:6]
    )


def test_disk_cache_round_trip(tiny_root, tmp_path):
    paths = load_class(tiny_root / "tile").train[:3]
    a = _extractor(tmp_path / "cache")(paths)
    fx2 = _extractor(tmp_path / "cache")
    b = fx2(paths)
    assert fx2.n_forward == 0
    assert all(torch.equal(a.layers[layer], b.layers[layer]) for layer in a.layers) and np.array_equal(
        a.images, b.images
    )


def test_embed_is_nearest_upsampled_concatenation():
    g = torch.Generator().manual_seed(0)
    layers = {
        1: torch.randn(2, 3, 8, 8, generator=g),
        2: torch.randn(2, 5, 4, 4, generator=g),
        3: torch.randn(2, 7, 2, 2, generator=g),
        4: torch.randn(2, 2, 1, 1, generator=g),
    }
    from spadim.features.extractor import FeatureSet

    fs = FeatureSet([], layers, torch.zeros(2, 2), np.zeros((2, 1, 1, 3), np.uint8), [])
    e = embed(fs, (1, 3))
    assert e.shape == (2, 10, 8, 8)
    assert torch.equal(e[:, :3], layers[1])
    assert torch.equal(e[:, 3:], layers[3].repeat_interleave(4, 2).repeat_interleave(4, 3))
    e = embed(fs, (2, 4), idx=torch.tensor([1]))
    assert e.shape == (1, 7, 4, 4) and torch.equal(e[0, :5], layers[2][1])
    assert torch.equal(e[:, 5:], F.interpolate(layers[4][1:], size=(4, 4), mode="nearest"))


def test_evaluate_passes_each_image_through_the_backbone_once(tiny_root):
    from spadim.features.config import BackboneConfig
    from spadim.run.pipeline import Settings, evaluate_class, make_extractor

    s = Settings(
        backbone=BackboneConfig(arch="resnet18", weights="random", resize=72, crop=64), stream_size=3
    )
    fx = make_extractor(s, methods=["spade", "padim"])
    run, metrics = evaluate_class(fx, tiny_root / "nut", s, ["spade", "padim"])
    assert fx.n_forward == len(run.data.train) + len(run.data.test)
    assert (
        set(fx.layers) == {1, 2, 3} and fx.last == 4
    )  # layer-4 maps are not kept, only SPADE's pooled vector
    assert (
        run.maps["padim"].shape == (len(run.data.test), 64, 64) and not run.test.layers
    )  # test features dropped
    # PaDiM alone streams its training images and stops the forward pass at layer 3
    fx = make_extractor(s, methods=["padim"])
    streamed, _ = evaluate_class(fx, tiny_root / "nut", s, ["padim"])
    assert fx.last == 3 and not streamed.train.layers and len(streamed.train.images) == len(run.data.train)
    np.testing.assert_allclose(streamed.maps["padim"], run.maps["padim"], rtol=1e-5, atol=1e-5)


def test_in_memory_frames_give_the_same_features_as_their_files(tiny_root):
    data = load_class(tiny_root / "nut")
    fx = _extractor()
    from_files = fx(data.train[:3])
    from_frames = fx.frames(from_files.images)
    for layer in (1, 2, 3, 4):
        assert torch.allclose(from_frames.layers[layer], from_files.layers[layer], atol=1e-5)
    with pytest.raises(SpadimError, match="frames must be"):
        fx.frames(from_files.images[:, :10])
