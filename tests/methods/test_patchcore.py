"""PatchCore and its greedy coreset against direct, independent computations on tiny random features."""

import io
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import cdist
from torch.utils._python_dispatch import TorchDispatchMode

from spadim.errors import SpadimError
from spadim.features.extractor import FeatureSet
from spadim.methods import registry
from spadim.methods.coreset import coreset_size, greedy_coreset, random_projection
from spadim.methods.nearest import BoundedSearch, FaissSearch, TorchSearch
from spadim.methods.patchcore import PatchCore, PatchCoreConfig, reweighted_scores
from spadim.methods.patches import embed_patches, patch_features
from spadim.run.pipeline import Settings


def _fs(n, seed, c=(3, 4, 6, 5), hw=(8, 4, 2, 1)):
    g = torch.Generator().manual_seed(seed)
    layers = {
        layer: torch.randn(n, c[layer - 1], hw[layer - 1], hw[layer - 1], generator=g)
        for layer in (1, 2, 3, 4)
    }
    return FeatureSet([], layers, None, np.zeros((n, 1, 1, 3), np.uint8), [])


# ---------------------------------------------------------------- independent reference computations


def _adaptive_pool(v: np.ndarray, size: int) -> np.ndarray:
    """torch's adaptive average pooling of a vector, by its definition: bin i is [floor(iL/s), ceil((i+1)L/s))."""
    n = len(v)
    return np.array([v[(i * n) // size : -((-(i + 1) * n) // size)].mean() for i in range(size)])


def _bilinear(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """[..., h, w] -> [..., out_h, out_w], half-pixel centres (align_corners=False), edges clamped."""

    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    ylo, yhi, fy = axis(a.shape[-2], out_h)
    xlo, xhi, fx = axis(a.shape[-1], out_w)
    rows = a[..., ylo, :] * (1 - fy)[:, None] + a[..., yhi, :] * fy[:, None]
    return rows[..., xlo] * (1 - fx) + rows[..., xhi] * fx


def _unfolded(m: np.ndarray) -> np.ndarray:
    """[C, h, w] -> [C*9, h, w]: explicit loops over positions, zero outside the map, index c*9 + 3*dy + dx."""
    c, h, w = m.shape
    out = np.zeros((c * 9, h, w))
    for y in range(h):
        for x in range(w):
            for ch in range(c):
                for dy in range(3):
                    for dx in range(3):
                        yy, xx = y + dy - 1, x + dx - 1
                        if 0 <= yy < h and 0 <= xx < w:
                            out[ch * 9 + dy * 3 + dx, y, x] = m[ch, yy, xx]
    return out


def _reference_embedding(fs, image, layers, dim, target):
    """The reference's order: unfold each layer, resize the unfolded maps to the first grid, pool each
    position's vector to ``dim``, concatenate the layers, pool to ``target``. -> [H*W, target]."""
    unfolded = [_unfolded(fs.layers[layer][image].double().numpy()) for layer in layers]
    h, w = unfolded[0].shape[1:]
    unfolded = [u if u.shape[1:] == (h, w) else _bilinear(u, h, w) for u in unfolded]
    rows = []
    for y in range(h):
        for x in range(w):
            per_layer = [_adaptive_pool(u[:, y, x], dim) for u in unfolded]
            rows.append(_adaptive_pool(np.concatenate(per_layer), target))
    return np.array(rows)


def _eq7(query, bank, b):
    """Eq. 7 by hand: s* to the nearest bank row m*; N_b(m*) = m* and its b-1 nearest other rows."""
    d = np.linalg.norm(bank - query, axis=1)
    star = int(np.argmin(d))
    around = np.linalg.norm(bank - bank[star], axis=1)
    around[star] = -1
    support = np.argsort(around, kind="stable")[:b]
    e = np.exp(d[support])
    return (1 - e[0] / e.sum()) * d[star]


def _brute_coreset(x: np.ndarray, count: int, starts: np.ndarray | None) -> list[int]:
    """The reference samplers with the full N x N distance matrix (float64)."""
    dist = cdist(x, x)
    running = np.linalg.norm(dist, axis=1) if starts is None else dist[:, starts].mean(1)
    picked = []
    for _ in range(count):
        i = int(np.argmax(running))
        picked.append(i)
        running = np.minimum(running, dist[:, i])
    return picked


# ---------------------------------------------------------------- coreset


@pytest.mark.parametrize("starts,dim", [(10, 16), (3, 16), (0, 16), (10, 96), (0, 96)])
def test_coreset_equals_brute_force_greedy(starts, dim):
    """dim 96 > LOWER_DIM exercises the principal-direction lower bound."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(300, dim, generator=g) * torch.linspace(3, 0.1, dim)  # uneven spread, as real features
    picked = greedy_coreset(x, 40, starts, torch.Generator().manual_seed(9)).tolist()
    start_idx = (
        None
        if starts == 0
        else torch.randperm(300, generator=torch.Generator().manual_seed(9))[:starts].numpy()
    )
    assert picked == _brute_coreset(x.double().numpy(), 40, start_idx)
    assert len(set(picked)) == 40


def test_exact_coreset_picks_the_farthest_point_each_step():
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(1))
    picked = greedy_coreset(x, 25, starts=0).tolist()
    dist = cdist(x.double().numpy(), x.double().numpy())
    assert picked[0] == int(np.argmax((dist**2).sum(1)))
    for k in range(1, 25):
        assert picked[k] == int(np.argmax(dist[:, picked[:k]].min(1)))


def test_lazy_coreset_matches_the_dense_loop_on_clustered_data():
    """Clustered points with exact duplicates (ties) and 128 dims: the picks equal a dense loop's,
    which updates every running distance per pick as the reference does."""
    g = torch.Generator().manual_seed(2)
    centres = torch.randn(12, 128, generator=g) * 4
    x = centres[torch.randint(0, 12, (900,), generator=g)] + torch.randn(900, 128, generator=g) * 0.5
    x[600:650] = x[:50]  # duplicates
    picked = greedy_coreset(x, 120, 10, torch.Generator().manual_seed(3)).tolist()
    start_idx = torch.randperm(900, generator=torch.Generator().manual_seed(3))[:10].numpy()
    assert picked == _brute_coreset(x.double().numpy(), 120, start_idx)


@pytest.mark.parametrize("starts", [10, 0])
def test_coreset_memory_is_linear_in_n(starts):
    """100k points: an N x N float32 matrix would be 40 GB. Every tensor the sampler makes is traced,
    and the numpy arrays and Python lists of the lazy loop by tracemalloc."""
    import tracemalloc

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    Largest.numel = max(Largest.numel, t.numel())
            return out

    n, d = 100_000, 40
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    tracemalloc.start()
    try:
        with Largest():
            picked = greedy_coreset(x, 3, starts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(set(picked.tolist())) == 3
    assert Largest.numel <= n * d
    # x is 160 B a point; the heap, bounds and two projections add Python objects: ~0.9-1.5 kB a point
    # measured (linear); one N x N float32 row per point would be 400 kB a point
    assert peak < 2_000 * n


def test_coreset_size_and_projection():
    assert coreset_size(1000, 0.1) == 100 and coreset_size(9, 0.1) == 1 and coreset_size(7, 1.0) == 7
    p = random_projection(1024, torch.Generator().manual_seed(0))
    assert p.shape == (1024, 128) and p.abs().max() <= 1024**-0.5
    assert torch.equal(p, random_projection(1024, torch.Generator().manual_seed(0)))


# ---------------------------------------------------------------- patch features


@pytest.mark.parametrize(
    "layers,dim,target", [((2, 3), 5, 3), ((2, 3), 7, 11), ((1, 2, 3), 4, 6), ((3,), 2, 2), ((2, 3), 6, 4)]
)  # the last: layer 2 takes the unfold path
def test_patch_features_equal_a_naive_per_position_computation(layers, dim, target):
    fs = _fs(2, 3)
    emb, grid = embed_patches(fs, layers, dim, target)
    h = fs.layers[layers[0]].shape[-1]
    assert grid == (h, h) and emb.shape == (2 * h * h, target)
    for i in range(2):
        expect = _reference_embedding(fs, i, layers, dim, target)
        np.testing.assert_allclose(emb[i * h * h : (i + 1) * h * h].numpy(), expect, rtol=1e-5, atol=1e-6)


def test_patch_features_of_a_full_channel_bin_are_3x3_means():
    """C*9 = 9 * dim (wide_resnet50_2's layer 3): each output is one channel's zero-padded 3x3 mean."""
    m = torch.randn(2, 6, 5, 5, generator=torch.Generator().manual_seed(2))
    expect = torch.nn.functional.avg_pool2d(m, 3, 1, 1, count_include_pad=True).permute(0, 2, 3, 1)
    torch.testing.assert_close(patch_features(m, 6), expect)


# ---------------------------------------------------------------- fitting and scoring


@pytest.mark.parametrize(
    "search",
    [TorchSearch(chunk=7), FaissSearch(), BoundedSearch(TorchSearch(), dims=2, block=4)],
    ids=["torch", "faiss", "bounded"],
)
def test_grid_and_maps_equal_brute_force_nearest_distances(search):
    train, test = _fs(4, 0), _fs(3, 1)
    m = PatchCore(layers=(2, 3), coreset=1.0, dim=6, target_dim=5, neighbours=0, batch=2, search=search).fit(
        train
    )
    if isinstance(search, BoundedSearch):  # the pruned path, whichever the first-call timing would pick
        search._build(m.bank)
        search.choice = "bounded"
    bank, _ = embed_patches(train, (2, 3), 6, 5)
    assert torch.equal(m.bank, bank)
    emb, _ = embed_patches(test, (2, 3), 6, 5)
    expect = (cdist(emb.double().numpy(), bank.double().numpy()) ** 2).min(1).reshape(3, 4, 4)
    grid, scores = m.distance_grid(test)
    np.testing.assert_allclose(grid.numpy(), expect, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        scores, expect.reshape(3, -1).max(1), rtol=1e-4
    )  # neighbours=0: the reference's max
    maps, _ = m.score(test, 16)
    np.testing.assert_allclose(
        maps, np.stack([gaussian_filter(_bilinear(g, 16, 16), 4) for g in expect]), rtol=1e-4, atol=1e-4
    )


def test_fit_keeps_the_coreset_of_the_projected_training_patches():
    train = _fs(6, 5, c=(3, 40, 60, 5))  # per-layer dim 200 > 128: the random projection is used
    m = PatchCore(layers=(2, 3), coreset=0.25, dim=200, target_dim=150, seed=3, batch=4).fit(train)
    emb, _ = embed_patches(train, (2, 3), 200, 150)
    g = torch.Generator().manual_seed(3)
    projected = emb @ random_projection(150, g)
    picked = greedy_coreset(projected, int(len(emb) * 0.25), 10, g)
    assert len(m.bank) == 24 and torch.equal(m.bank, emb[picked])
    again = PatchCore(layers=(2, 3), coreset=0.25, dim=200, target_dim=150, seed=3, batch=6).fit(train)
    assert torch.equal(m.bank, again.bank)  # seeded, and independent of the chunking
    other = PatchCore(layers=(2, 3), coreset=0.25, dim=200, target_dim=150, seed=4).fit(train)
    assert not torch.equal(m.bank, other.bank)


def test_reweighted_score_equals_eq7_by_hand():
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [10.0, 10.0], [0.5, 0.5]])
    query = torch.tensor([0.9, 0.3])
    sq = bank.square().sum(1)
    # m* = [1, 0] (distance sqrt(0.01 + 0.09)); its 2 nearest others: [0.5, 0.5] and [0, 0]
    d = [math.hypot(0.1, 0.3), math.hypot(0.4, 0.2), math.hypot(0.9, 0.3)]
    by_hand = (1 - math.exp(d[0]) / sum(math.exp(v) for v in d)) * d[0]
    assert float(reweighted_scores(query[None], bank, sq, 3)[0]) == pytest.approx(by_hand, rel=1e-6)
    assert float(reweighted_scores(query[None], bank, sq, 5)[0]) == pytest.approx(
        _eq7(query.numpy(), bank.numpy(), 5), rel=1e-6
    )
    assert float(reweighted_scores(query[None], bank[:1], sq[:1], 9)[0]) == pytest.approx(
        math.hypot(0.9, 0.3)
    )  # bank of one: s*
    # leaving rows out: the same as a bank without them, per query, whatever b
    excluded = torch.tensor([[False, True, False, False, False, False], [True] * 5 + [False]])
    both = reweighted_scores(torch.stack([query, query]), bank, sq, 3, excluded)
    kept = ~excluded[0]
    assert float(both[0]) == pytest.approx(_eq7(query.numpy(), bank[kept].numpy(), 3), rel=1e-6)
    assert float(both[1]) == pytest.approx(math.hypot(0.4, 0.2), rel=1e-6)  # one row left: s*


def test_image_scores_are_eq7_of_each_images_worst_patch():
    train, test = _fs(5, 7), _fs(3, 8)
    m = PatchCore(layers=(2, 3), coreset=0.5, dim=6, target_dim=4, neighbours=9, batch=2).fit(train)
    emb, _ = embed_patches(test, (2, 3), 6, 4)
    bank = m.bank.double().numpy()
    _, scores = m.score(test, 8)
    for i in range(3):
        rows = emb[i * 16 : (i + 1) * 16].double().numpy()
        worst = rows[int(np.argmax(cdist(rows, bank).min(1)))]
        assert scores[i] == pytest.approx(_eq7(worst, bank, 9), rel=1e-4)


def test_state_round_trip_gives_identical_scores():
    train, test = _fs(4, 11), _fs(2, 12)
    m = PatchCore(layers=(2, 3), coreset=0.3, dim=8, target_dim=8, seed=2).fit(train)
    buf = io.BytesIO()
    torch.save(m.state(), buf)
    buf.seek(0)
    loaded = PatchCore.from_state(torch.load(buf, weights_only=True))
    assert loaded.layers == (2, 3) and loaded.coreset == 0.3 and loaded.neighbours == 9
    (maps, scores), (maps2, scores2) = m.score(test, 12), loaded.score(test, 12)
    assert np.array_equal(maps, maps2) and np.array_equal(scores, scores2)


def test_registry_and_settings():
    default = Settings().method("patchcore")
    assert isinstance(default, PatchCore) and default.layers == (2, 3) and default.coreset == 0.1
    assert default.dim == default.target_dim == 1024 and not default.abilities.streams_training
    assert Settings().method("spade").layers == (1, 2, 3)  # each method's own default
    assert Settings(layers=(1, 2, 3), layers_given=True).method("patchcore").layers == (1, 2, 3)
    given = {"patchcore": PatchCoreConfig(coreset=0.5, dim=64, target_dim=64)}
    custom = Settings(layers=(3, 4), layers_given=True, configs=given).method("patchcore")
    assert (custom.layers, custom.coreset, custom.dim, custom.seed) == ((3, 4), 0.5, 64, 0)
    assert Settings(seed=7).method("patchcore").seed == 7  # the run's seed, without a config given
    assert registry.parse_methods("spade,patchcore") == ["spade", "patchcore"]
    for bad in (0, -0.1, 1.5):
        with pytest.raises(SpadimError, match="coreset"):
            PatchCoreConfig(coreset=bad)
    with pytest.raises(SpadimError, match=r"dim must be >= 1 \(got 0\)"):
        PatchCoreConfig(dim=0)


@pytest.mark.parametrize("coreset", [1.0, 0.3])
def test_left_out_scores_search_the_bank_without_the_images_own_patches(coreset):
    """Leave-one-out: image i against the bank rows that did not come from image i, by brute force."""
    train = _fs(5, 7, c=(3, 40, 60, 5))
    m = PatchCore(layers=(2, 3), coreset=coreset, dim=200, target_dim=150, seed=2, batch=2).fit(train)
    emb, _ = embed_patches(train, (2, 3), 200, 150)
    per_image = 16  # the 4 x 4 grid of layer 2
    origin = np.array([int(np.flatnonzero((emb == row).all(1))[0]) // per_image for row in m.bank])
    maps, scores = m.score_left_out(train, 16)
    bank = m.bank.double().numpy()
    for image in range(5):
        others = bank[origin != image]
        queries = emb[image * per_image : (image + 1) * per_image].double().numpy()
        distances = cdist(queries, others)
        grid = (distances.min(1) ** 2).reshape(4, 4)
        np.testing.assert_allclose(
            maps[image], gaussian_filter(_bilinear(grid, 16, 16), 4), rtol=1e-4, atol=1e-4
        )
        worst = int(np.argmax(distances.min(1)))
        assert scores[image] == pytest.approx(_eq7(queries[worst], others, 9), rel=1e-4)
    assert (origin == m.bank_image.numpy()).all()
