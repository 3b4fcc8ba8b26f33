import hashlib
import os
from pathlib import Path

import pytest
import torch

from spadim.backbone import ARCHS, build, find_checkpoint, load_backbone
from spadim.errors import SpadimError

# Parameter counts published by torchvision for these architectures (independent of our code).
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032, "wide_resnet50_2": 68_883_240}


@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_matches_torchvision(arch):
    m = build(arch)
    assert sum(p.numel() for p in m.parameters()) == TORCHVISION_PARAMS[arch]
    feats = m.features(torch.zeros(1, 3, 64, 64))
    assert [feats[l].shape[-1] for l in (1, 2, 3, 4)] == [16, 8, 4, 2]


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


def test_missing_corrupt_and_mismatched_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("SPADIM_WEIGHTS", raising=False)
    with pytest.raises(SpadimError, match="no ImageNet checkpoint.*--weights random"):
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


# A known photo for the real-checkpoint check: ImageNet class ids that count as correct.
PHOTO_CLASSES = {"dog.jpg": set(range(151, 269)), "cat.jpg": set(range(281, 286)), "chelsea.png": set(range(281, 286))}


@pytest.mark.parametrize("arch", ["resnet18", "wide_resnet50_2"])
def test_real_checkpoint_classifies_a_known_photo(arch):
    """Runs only where a real ImageNet checkpoint exists (torch hub cache, $SPADIM_WEIGHTS or ../shared/weights)."""
    shared = Path(__file__).resolve().parents[2] / "shared"
    spec = os.environ.get("SPADIM_WEIGHTS") or (str(shared / "weights") if (shared / "weights").is_dir() else None)
    path, looked = find_checkpoint(arch, spec)
    if path is None:
        pytest.skip(f"no real {arch} ImageNet checkpoint on this machine (looked in {'; '.join(looked)}); "
                    "these machines cannot download one")
    model, w = load_backbone(arch, str(path))
    assert w.pretrained
    # trained BatchNorm statistics are far from the (0, 1) of an untrained network
    assert model.bn1.running_var.std() > 0.01 and model.bn1.running_mean.abs().mean() > 0.01
    photos = [p for d in (shared / "photos", Path(os.environ.get("SPADIM_TEST_PHOTOS", "/nonexistent")))
              if d.is_dir() for p in d.iterdir() if p.name in PHOTO_CLASSES]
    if not photos:
        pytest.skip("checkpoint loads, but no known photo (shared/photos/dog.jpg, cat.jpg or chelsea.png) to classify")
    from spadim.data import Preprocess, normalize, read_rgb

    for p in photos:
        x = torch.from_numpy(normalize(Preprocess().image(read_rgb(p))[None]))
        with torch.inference_mode():
            top5 = model(x).topk(5).indices[0].tolist()
        assert PHOTO_CLASSES[p.name] & set(top5), f"{p.name}: top-5 {top5}"
