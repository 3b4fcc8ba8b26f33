"""Search backends: the probe picks the faster one, the environment can force one, results agree."""

from __future__ import annotations

import pytest
import torch

from spadim.errors import SpadimError
from spadim.methods import nearest


def test_probe_picks_the_fastest_measured_backend(monkeypatch):
    monkeypatch.delenv("SPADIM_SEARCH", raising=False)
    monkeypatch.setattr(nearest, "_probed", {"timings": {"torch": 0.3, "faiss": 0.1}})
    assert nearest.default_search().name == "faiss"
    monkeypatch.setattr(nearest, "_probed", {"timings": {"torch": 0.1, "faiss": 0.3}})
    assert nearest.default_search().name == "torch"
    report = nearest.probe()
    assert set(report) == {"torch", "faiss"} and all(0 < s < 5 for s in report.values())


def test_environment_forces_a_backend(monkeypatch):
    monkeypatch.setattr(nearest, "_probed", {"timings": {"torch": 0.1, "faiss": 0.3}})
    monkeypatch.setenv("SPADIM_SEARCH", "faiss")
    assert nearest.default_search().name == "faiss"
    monkeypatch.setenv("SPADIM_SEARCH", "annoy")
    with pytest.raises(SpadimError, match="not a search backend"):
        nearest.default_search()


def test_backends_agree_with_a_brute_force_cdist():
    generator = torch.Generator().manual_seed(0)
    queries, gallery = torch.randn(500, 64, generator=generator), torch.randn(900, 64, generator=generator)
    expected = torch.cdist(queries.double(), gallery.double()).amin(1).float()
    for kind in nearest.SEARCHES.values():
        torch.testing.assert_close(kind().min_distances(queries, gallery), expected, atol=1e-4, rtol=1e-5)


def test_probe_is_remembered_per_machine(monkeypatch, tmp_path):
    monkeypatch.delenv("SPADIM_SEARCH", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(nearest, "_probed", {})
    monkeypatch.setattr(nearest, "probe", lambda: {"torch": 0.2, "faiss": 0.1})
    assert nearest.probe_report()["picked"] == "faiss"
    monkeypatch.setattr(nearest, "_probed", {})  # a new process: the file answers, no second probe
    monkeypatch.setattr(nearest, "probe", lambda: pytest.fail("probed twice on one machine"))
    assert nearest.default_search().name == "faiss"
    assert (tmp_path / "spadim" / "search-probe.json").is_file()


def test_search_flag_names_a_backend_or_auto(monkeypatch):
    monkeypatch.delenv("SPADIM_SEARCH", raising=False)
    monkeypatch.setattr(nearest, "_probed", {"timings": {"torch": 0.3, "faiss": 0.1}})
    assert nearest.make_search("auto").name == "faiss"
    assert nearest.make_search("torch").name == "torch" and nearest.make_search("FAISS").name == "faiss"
    with pytest.raises(SpadimError, match="--search 'annoy'"):
        nearest.make_search("annoy")


def test_settings_pass_the_search_to_spade_and_patchcore():
    from spadim.run.pipeline import Settings

    for backend in nearest.SEARCHES:
        s = Settings(arch="resnet18", weights="random", search=backend)
        assert s.method("spade", (1,)).search.name == backend
        assert s.method("patchcore", (2, 3)).search.name == backend
    with pytest.raises(SpadimError, match="--search"):
        Settings(arch="resnet18", weights="random", search="annoy")
