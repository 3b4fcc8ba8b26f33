"""Method configs, abilities and hooks: one place per option, and no method name outside methods/."""

import dataclasses
import re
from pathlib import Path

import pytest

from spadim.errors import SpadimError
from spadim.features.config import BackboneConfig
from spadim.methods import METHODS, Padim, PadimConfig, PatchCore, PatchCoreConfig, Spade, SpadeConfig
from spadim.methods.nearest import TorchSearch
from spadim.run.pipeline import Settings

from test_methods import _fs

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "spadim"


def test_constructors_take_keyword_options_into_a_frozen_config():
    model = PatchCore(layers="auto", coreset=0.2)
    assert model.config == PatchCoreConfig(layers="auto", coreset=0.2) and model.coreset == 0.2
    assert model.neighbours == PatchCoreConfig.neighbours == 9  # the default lives in the config only
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.config.coreset = 0.5
    with pytest.raises(TypeError):
        PatchCore((2, 3))  # keyword-only
    with pytest.raises(TypeError):
        SpadeConfig((1, 2), 5)
    assert Spade(layers=[3, 1]).layers == (1, 3)
    assert Padim(config=PadimConfig(d=40), seed=3).config == PadimConfig(d=40, seed=3)


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: PatchCore(coreset=1.5), "coreset ratio"),
        (lambda: Spade(fusion="max"), "fusion"),
        (lambda: Padim(d=0), "PadimConfig.d"),
        (lambda: Spade(layers=(0, 2)), "layer ids"),
        (lambda: Spade(layers="all"), "'auto'"),
    ],
)
def test_bad_options_raise_one_line_spadim_errors(build, message):
    with pytest.raises(SpadimError, match=message):
        build()


def test_auto_layers_must_be_chosen_before_fitting():
    with pytest.raises(SpadimError, match="choose them first"):
        PatchCore(layers="auto").fit(_fs(2, 0))
    chosen = PatchCore(layers="auto", coreset=0.5).with_layers((3, 2))
    assert chosen.layers == (2, 3) and chosen.coreset == 0.5


def test_settings_compose_the_backbone_and_method_configs():
    small = BackboneConfig(arch="resnet18")
    s = Settings(backbone=small, seed=4, configs={"spade": SpadeConfig(k=3, fusion="concat")})
    assert s.method("spade", (1, 2)).config == SpadeConfig(layers=(1, 2), k=3, fusion="concat")
    # without a config given: the method's defaults for the backbone (PaDiM's d) and the run's seed
    assert s.method("padim", (1, 2)).config == PadimConfig(layers=(1, 2), d=100, seed=4)
    assert s.method("patchcore", (2, 3)).config == PatchCoreConfig(layers=(2, 3), seed=4)
    given = PatchCore(coreset=0.5, search=TorchSearch())  # a configured method keeps its search object
    chosen = Settings(configs={"patchcore": given}).method("patchcore", (3,))
    assert chosen.config == PatchCoreConfig(layers=(3,), coreset=0.5, search="torch")
    assert chosen.search is given.search
    assert s.recorded_options() == {
        "k": 3,
        "spade_fusion": "concat",
        "search": "auto",
        "d": 100,
        "coreset": 0.1,
    }
    assert s.result_options(["padim"]) == {"d": 100}


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: BackboneConfig(arch="vgg16"), r"unknown backbone 'vgg16' \(BackboneConfig.arch\)"),
        (lambda: BackboneConfig(batch_size=0), r"batch_size must be >= 1 \(BackboneConfig.batch_size"),
        (lambda: BackboneConfig(resize=100, crop=200), "need 1 <= crop <= resize"),
        (lambda: BackboneConfig(device="tpu"), "device 'tpu'"),
        (lambda: Settings(layers="best"), r"Settings.layers"),
        (lambda: Settings(configs={"knn": SpadeConfig()}), r"Settings.configs names 'knn'"),
        (lambda: SpadeConfig(k=0), r"SpadeConfig.k must be >= 1"),
    ],
)
def test_library_errors_name_the_parameter_not_a_flag(build, message):
    with pytest.raises(SpadimError, match=message) as raised:
        build()
    assert "--" not in str(raised.value)


def test_cli_defaults_are_read_from_the_configs():
    from spadim.cli.parser import build_parser

    a = build_parser().parse_args(["layer-sweep", "data"])
    assert (a.arch, a.resize, a.crop, a.batch_size, a.device) == (
        BackboneConfig.arch,
        BackboneConfig.resize,
        BackboneConfig.crop,
        BackboneConfig.batch_size,
        BackboneConfig.device,
    )
    assert (a.k, a.spade_fusion, a.coreset, a.search, a.seed) == (
        SpadeConfig.k,
        SpadeConfig.fusion,
        PatchCoreConfig.coreset,
        SpadeConfig.search,
        Settings.seed,
    )
    assert a.d is None  # PaDiM's d follows the backbone (Padim.default_config)


def test_abilities_and_hooks_are_declared_per_method():
    assert {name: cls.abilities.tiles for name, cls in METHODS.items()} == {
        "spade": True,
        "padim": False,
        "patchcore": True,
    }
    assert all(cls.abilities.leave_one_out and cls.abilities.update for cls in METHODS.values())
    assert [name for name, cls in METHODS.items() if cls.abilities.streams_training] == ["padim"]
    assert [name for name, cls in METHODS.items() if cls.abilities.image_score_from_map] == ["padim"]
    assert Spade(layers=(1, 2)).backbone_last_layer() == 4  # the pooled layer-4 vector
    assert PatchCore(layers=(2, 3)).backbone_last_layer() == 3


def test_no_method_name_or_ability_probe_outside_methods():
    """Code outside methods/ asks a method's class, never its name, nor probes its attributes."""
    names = "|".join(METHODS)
    compared = re.compile(rf"""(==|!=|\bin)\s*\(?["'](?:{names})["']|["'](?:{names})["']\s*(==|!=|\bin\b)""")
    attributes = {a for cls in METHODS.values() for a in dir(cls) if not a.startswith("_")} - {
        "name",
        "layers",
    }
    probe = re.compile(r"""(?:hasattr|getattr)\([^,()]+,\s*["'](\w+)["']""")
    hits = []
    for package in ("run", "studies", "inspect", "export", "scale", "serve", "decision", "cli"):
        for path in sorted((PACKAGE / package).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                probed = {m.group(1) for m in probe.finditer(line)} & attributes
                if compared.search(line) or probed:
                    hits.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)
