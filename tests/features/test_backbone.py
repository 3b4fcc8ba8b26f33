import importlib
import hashlib
import http.server
import threading
from functools import partial
from pathlib import Path

import pytest
import torch

from spadim.features.backbone import ARCHS, build, find_checkpoint, load_backbone, locate, weights_report
from spadim.data.mvtec import Preprocess, normalize, read_rgb
from spadim.errors import SpadimError

from conftest import CAFFE_WEIGHTS, SHARED

# Parameter counts published by torchvision for these architectures (independent of our code);
# ResNet-50 v1 (Caffe) has exactly resnet50's parameters, only the strides differ.
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "resnet50_caffe": 25_557_032,
    "wide_resnet50_2": 68_883_240,
}


@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_matches_torchvision(arch):
    m = build(arch)
    assert sum(p.numel() for p in m.parameters()) == TORCHVISION_PARAMS[arch]
    feats = m.features(torch.zeros(1, 3, 64, 64))
    assert [feats[layer_id].shape[-1] for layer_id in (1, 2, 3, 4)] == [16, 8, 4, 2]
    assert set(m.features(torch.zeros(1, 3, 64, 64), last=2)) == {1, 2}


def test_caffe_layout_moves_the_stride_to_the_first_1x1_conv():
    v1, v15 = build("resnet50_caffe"), build("resnet50")
    assert v1.state_dict().keys() == v15.state_dict().keys()
    for layer in ("layer2", "layer3", "layer4"):
        b1, b15 = getattr(v1, layer)[0], getattr(v15, layer)[0]
        assert (b1.conv1.stride, b1.conv2.stride, b1.downsample[0].stride) == ((2, 2), (1, 1), (2, 2))
        assert (b15.conv1.stride, b15.conv2.stride) == ((1, 1), (2, 2))


def _save_tv_file(folder: Path, arch: str, seed: int) -> tuple[Path, dict]:
    torch.manual_seed(seed)
    state = build(arch).state_dict()
    tmp = folder / "x.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / f"{arch}-{digest[:8]}.pth"
    tmp.rename(path)
    return path, state


def test_loads_torchvision_format_file_by_path_folder_env_and_hub(tmp_path, monkeypatch):
    path, state = _save_tv_file(tmp_path, "resnet18", seed=3)
    m, w = load_backbone("resnet18", str(path))
    assert w.pretrained and w.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(m.conv1.weight, state["conv1.weight"]) and not m.training
    assert load_backbone("resnet18", str(tmp_path))[1].source == str(path)
    monkeypatch.setenv("SPADIM_WEIGHTS", str(tmp_path))
    assert find_checkpoint("resnet18")[0] == path
    monkeypatch.delenv("SPADIM_WEIGHTS")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    (tmp_path / "th" / "hub" / "checkpoints").mkdir(parents=True)
    hub_file = tmp_path / "th" / "hub" / "checkpoints" / path.name
    hub_file.write_bytes(path.read_bytes())
    assert find_checkpoint("resnet18")[0] == hub_file


def test_folder_lookup_and_hash_check_apply_to_every_arch(tmp_path):
    path, _ = _save_tv_file(tmp_path, "resnet50_caffe", seed=1)
    assert find_checkpoint("resnet50_caffe", str(tmp_path))[0] == path
    assert find_checkpoint("resnet50", str(tmp_path))[0] is None  # resnet50-*.pth only, not resnet50_caffe-*
    bad = tmp_path / "resnet50_caffe-00000000.pth"
    bad.write_bytes(path.read_bytes())
    with pytest.raises(SpadimError, match="hash check"):
        load_backbone("resnet50_caffe", str(bad))


def test_missing_corrupt_and_mismatched_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("SPADIM_WEIGHTS", raising=False)
    with pytest.raises(SpadimError, match="no ImageNet checkpoint.*`weights=random`"):
        load_backbone("resnet18")
    path, _ = _save_tv_file(tmp_path, "resnet18", seed=0)
    bad = tmp_path / "resnet18-00000000.pth"
    bad.write_bytes(path.read_bytes())
    with pytest.raises(SpadimError, match="hash check"):
        load_backbone("resnet18", str(bad))
    other = tmp_path / "r50.pth"
    torch.save(build("resnet50").state_dict(), other)
    with pytest.raises(SpadimError, match="does not fit resnet18"):
        load_backbone("resnet18", str(other))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(SpadimError, match="cannot read checkpoint"):
        load_backbone("resnet18", str(junk))
    with pytest.raises(SpadimError, match="does not exist"):
        load_backbone("resnet18", str(tmp_path / "nowhere.pth"))


def test_random_weights_are_seeded_and_flagged():
    a, wa = load_backbone("resnet18", "random", seed=1)
    b, _ = load_backbone("resnet18", "random", seed=1)
    c, _ = load_backbone("resnet18", "random", seed=2)
    assert torch.equal(a.conv1.weight, b.conv1.weight) and not torch.equal(a.conv1.weight, c.conv1.weight)
    assert not wa.pretrained and "RANDOM" in wa.describe() and "NOT IMAGENET-PRETRAINED" in wa.describe()


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server on 127.0.0.1 serving ``tmp_path/www``; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}/models"
    server.shutdown()


def test_download_into_hub_cache_with_hash_check(http_root, tmp_path, monkeypatch):
    www, base = http_root
    served, state = _save_tv_file(www, "resnet18", seed=4)
    (www / "models").mkdir()
    served = served.rename(www / "models" / served.name)
    monkeypatch.setitem(
        importlib.import_module("spadim.features.backbone").TORCHVISION_FILES, "resnet18", served.name
    )
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("SPADIM_DOWNLOAD_URL", base)
    monkeypatch.delenv("SPADIM_WEIGHTS", raising=False)
    monkeypatch.delenv("SPADIM_OFFLINE")
    model, w = load_backbone("resnet18")
    hub_file = tmp_path / "th" / "hub" / "checkpoints" / served.name
    assert Path(w.source) == hub_file and hub_file.read_bytes() == served.read_bytes()
    assert torch.equal(model.fc.weight, state["fc.weight"])
    # a corrupted download fails its hash check and leaves nothing in the cache
    hub_file.unlink()
    served.write_bytes(served.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(SpadimError, match="hash"):
        load_backbone("resnet18")
    assert not hub_file.exists()


def test_offline_download_fails_fast_with_a_clear_message(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("SPADIM_DOWNLOAD_URL", "http://127.0.0.1:9/models")  # discard port: refused at once
    monkeypatch.delenv("SPADIM_WEIGHTS", raising=False)
    monkeypatch.delenv("SPADIM_OFFLINE")
    t0 = time.perf_counter()
    with pytest.raises(SpadimError, match="cannot download .*offline.*`weights=FILE`"):
        locate("resnet18")
    assert time.perf_counter() - t0 < 10
    with pytest.raises(SpadimError, match="not downloadable"):  # the Caffe file has no download address
        from spadim.features.backbone import download_checkpoint

        download_checkpoint("resnet50_caffe")


def test_weights_report_lists_every_architecture(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.delenv("SPADIM_WEIGHTS", raising=False)
    path, _ = _save_tv_file(tmp_path, "resnet18", seed=0)
    rows = {arch: (p, why) for arch, p, why in weights_report(str(tmp_path))}
    assert set(rows) == set(ARCHS)
    assert rows["resnet18"][0] == path
    assert rows["wide_resnet50_2"][0] is None and "downloadable from" in rows["wide_resnet50_2"][1]
    assert rows["resnet50_caffe"][0] is None and "not downloadable" in rows["resnet50_caffe"][1]


# ------------------------------------------------------------------ the real ImageNet checkpoint
needs_caffe = pytest.mark.skipif(
    not CAFFE_WEIGHTS.is_file(), reason=f"{CAFFE_WEIGHTS} is not beside this checkout"
)
# ImageNet class ids that count as correct for the shared photos
PHOTO_CLASSES = {"chelsea.png": set(range(281, 286)), "coffee.png": {967}}


def _top5(model, name: str) -> list[int]:
    x = torch.from_numpy(normalize(Preprocess().image(read_rgb(SHARED / "photos" / name))[None]))
    with torch.inference_mode():
        return model(x).topk(5).indices[0].tolist()


@needs_caffe
def test_real_checkpoint_classifies_a_known_photo():
    model, w = load_backbone(
        "resnet50_caffe", str(CAFFE_WEIGHTS.parent)
    )  # strict=True load, found in its folder
    assert w.pretrained and w.sha256.startswith("44e9675b")
    # trained BatchNorm statistics are far from the (0, 1) of an untrained network
    assert model.bn1.running_var.std() > 0.01 and model.bn1.running_mean.abs().mean() > 0.01
    assert model.layer3[5].bn3.running_var.median() < 0.5
    for name, expected in PHOTO_CLASSES.items():
        top5 = _top5(model, name)
        assert expected & set(top5), f"{name}: top-5 {top5}"
    assert _top5(model, "coffee.png")[0] == 967


@needs_caffe
def test_v15_strides_give_different_features_from_the_same_file():
    """The Caffe file loads strict=True into v1.5 resnet50, but that network computes other features;
    spadim refuses the combination by the file's hash."""
    state = torch.load(CAFFE_WEIGHTS, weights_only=True)
    v1, v15 = build("resnet50_caffe"), build("resnet50")
    v1.load_state_dict(state, strict=True)
    v15.load_state_dict(state, strict=True)
    x = torch.from_numpy(normalize(Preprocess().image(read_rgb(SHARED / "photos" / "chelsea.png"))[None]))
    with torch.inference_mode():
        f1, f15 = v1.eval().features(x), v15.eval().features(x)
    assert torch.equal(f1[1], f15[1])  # layer1 has no stride change
    cos = torch.nn.functional.cosine_similarity(f1[3].flatten(), f15[3].flatten(), dim=0).item()
    assert cos < 0.95, cos
    with pytest.raises(SpadimError, match="holds resnet50_caffe weights.*`arch=resnet50_caffe`"):
        load_backbone("resnet50", str(CAFFE_WEIGHTS))


def test_a_missing_checkpoint_names_the_architecture_whose_checkpoint_is_there(tmp_path, monkeypatch):
    from spadim.errors import SpadimError
    from spadim.features.backbone import locate

    monkeypatch.delenv("SPADIM_WEIGHTS", raising=False)  # only the folder given, and an empty hub cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "resnet50_caffe-44e9675b.pth").write_bytes(b"")  # found by name; not read here
    with pytest.raises(
        SpadimError, match=r"checkpoints found for resnet50_caffe .*pass `arch=resnet50_caffe`"
    ):
        locate("wide_resnet50_2", str(tmp_path), download=False)
    (tmp_path / "resnet50_caffe-44e9675b.pth").unlink()
    with pytest.raises(SpadimError) as nothing:
        locate("wide_resnet50_2", str(tmp_path), download=False)
    assert "pass `arch=" not in str(nothing.value)


def test_a_checkpoint_is_assigned_without_an_initialised_copy(tmp_path):
    """The network is built without storage and takes the checkpoint's tensors; it computes what a network
    built, initialised and then loaded by copying computes, and a float16 file still gives float32."""
    path, state = _save_tv_file(tmp_path, "resnet18", seed=5)
    fast, _ = load_backbone("resnet18", str(path))
    copied = build("resnet18")
    copied.load_state_dict(state)
    copied.eval()
    assert not any(t.is_meta for t in [*fast.parameters(), *fast.buffers()])
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        got, expect = fast.features(x), copied.features(x)
    for key in expect:
        assert torch.equal(got[key], expect[key]), key
    half = tmp_path / "half.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, half)
    network, _ = load_backbone("resnet18", str(half))
    assert {p.dtype for p in network.parameters()} == {torch.float32}
    assert torch.equal(network.conv1.weight, state["conv1.weight"].half().float())
