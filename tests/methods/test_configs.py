"""Method configs, abilities and hooks: one place per option, and no method name outside methods/."""

import dataclasses
import re
from pathlib import Path

import pytest

from spadim.errors import SpadimError
from spadim.methods import METHODS, Padim, PadimConfig, PatchCore, PatchCoreConfig, Spade, SpadeConfig
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


def test_settings_build_the_configs():
    s = Settings(arch="resnet18", k=3, seed=4, coreset=0.5, patchcore_dim=64, spade_fusion="concat")
    assert Spade.configure(s, (1, 2)).config == SpadeConfig(layers=(1, 2), k=3, fusion="concat")
    assert Padim.configure(s, (1, 2)).config == PadimConfig(layers=(1, 2), d=100, seed=4)
    assert PatchCore.configure(s, (2, 3)).config == PatchCoreConfig(
        layers=(2, 3), coreset=0.5, dim=64, target_dim=64, seed=4
    )


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
    for package in ("run", "inspect", "export", "scale", "serve", "decision", "cli"):
        for path in sorted((PACKAGE / package).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                probed = {m.group(1) for m in probe.finditer(line)} & attributes
                if compared.search(line) or probed:
                    hits.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)
