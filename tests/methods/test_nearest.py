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
    with pytest.raises(SpadimError, match="search 'annoy'"):
        nearest.make_search("annoy")


def test_settings_pass_the_search_to_spade_and_patchcore():
    from spadim.methods import PatchCoreConfig, SpadeConfig
    from spadim.run.pipeline import Settings

    for backend in nearest.SEARCHES:
        s = Settings(
            configs={"spade": SpadeConfig(search=backend), "patchcore": PatchCoreConfig(search=backend)}
        )
        assert s.method("spade", (1,)).search.name == backend
        assert s.method("patchcore", (2, 3)).search.name == backend
    with pytest.raises(SpadimError, match=r"search 'annoy' \(SpadeConfig.search\)"):
        SpadeConfig(search="annoy")
    with pytest.raises(SpadimError, match=r"search 'annoy' \(PatchCoreConfig.search\)"):
        PatchCoreConfig(search="annoy")


def _clustered(n: int, dim: int, seed: int) -> torch.Tensor:
    """Rows on a 12-dimensional subspace plus small noise: correlated like patch features."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.randn(12, dim, generator=generator)
    return torch.randn(n, 12, generator=generator) @ basis + 0.05 * torch.randn(n, dim, generator=generator)


def _assert_nearest(found: torch.Tensor, queries: torch.Tensor, gallery: torch.Tensor) -> None:
    """Squared distances equal float64 brute force up to the float32 rounding of |q|^2 + |g|^2 - 2 q.g."""
    expected = torch.cdist(queries.double(), gallery.double()).amin(1).square()
    scale = queries.double().square().sum(1) + gallery.double().square().sum(1).max()
    assert ((found.double().square() - expected).abs() <= 1e-5 * scale).all()


def _pruned(search: nearest.BoundedSearch, queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """The pruned path alone, whatever the first-call timing would pick."""
    search._build(gallery)
    return search._bounded(queries)


@pytest.mark.parametrize("data", ["clustered", "isotropic"])
def test_bounded_search_is_exact(data):
    """The pruned search returns the brute-force minimum (float64 cdist) on correlated data, where it
    prunes, and on isotropic data, where nothing can be pruned."""
    make = (
        _clustered
        if data == "clustered"
        else lambda n, d, seed: torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    )
    gallery, queries = make(3000, 300, 0), make(700, 300, 1)
    queries[:5] = gallery[:5]  # exact hits: distance 0
    search = nearest.BoundedSearch(nearest.TorchSearch(), dims=31, block=32)
    _assert_nearest(_pruned(search, queries, gallery), queries, gallery)
    _assert_nearest(search.min_distances(queries, gallery), queries, gallery)
    _assert_nearest(nearest.TorchSearch().min_distances(queries, gallery), queries, gallery)  # same tolerance
    assert search.choice in ("bounded", "torch") and set(search.timings) == {"bounded", "torch"}


def test_bounded_search_prunes_correlated_galleries():
    gallery, queries = _clustered(4000, 256, 0), _clustered(256, 256, 1)
    search = nearest.BoundedSearch(nearest.TorchSearch(), dims=31, block=64)
    _pruned(search, queries, gallery)
    assert search.kept_rows < 0.25 * len(gallery)  # rows searched exactly per block of 64 queries


def test_bounded_search_keeps_the_faster_backend_and_rebuilds_per_gallery(monkeypatch):
    gallery, queries = _clustered(2000, 200, 0), _clustered(300, 200, 1)
    search = nearest.BoundedSearch(nearest.TorchSearch(), dims=15, block=16)
    monkeypatch.setattr(nearest, "_time", lambda s, q, g, repeats=3, call=None: 1.0 if call else 0.5)
    search.min_distances(queries, gallery)
    assert search.choice == "torch"  # brute force measured faster: used for this gallery
    other = _clustered(2000, 200, 2)
    monkeypatch.setattr(nearest, "_time", lambda s, q, g, repeats=3, call=None: 0.5 if call else 1.0)
    _assert_nearest(search.min_distances(queries, other), queries, other)
    assert search.choice == "bounded"  # a new gallery is measured again
    small = _clustered(20, 200, 3)  # too few rows to prune: the fallback answers
    _assert_nearest(search.min_distances(queries, small), queries, small)
