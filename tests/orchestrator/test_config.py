"""Run configs: the shipped ones validate; a bad one gets one line naming the field."""

import pytest

from kernels.errors import ConfigError
from orchestrator.config.run import available, load_config


def test_the_issue_configs_ship_with_the_package():
    assert {"demo", "gen24k", "det_bkg24k", "seed-resnet34"} <= set(available())


@pytest.mark.parametrize("name", ["demo", "gen24k", "det_bkg24k", "seed-resnet34"])
def test_shipped_configs_validate(name):
    cfg = load_config(name)
    assert cfg.name == name
    assert cfg.scan.events_per_point > 0


def test_gen24k_matches_its_definition():
    cfg = load_config("gen24k")
    assert cfg.scan.level == "gen" and cfg.theory.windows == [(1.1, 6.0)]
    assert len(cfg.scan.dc9) == 22 and cfg.scan.dc9[0] == -2.0 and cfg.scan.dc9[-1] == pytest.approx(1.1)
    assert cfg.evaluation.events_per_set == 24000
    assert {-2.0, -1.0, -0.82, 0.0, 1.0} <= set(cfg.evaluation.dc9)
    assert load_config("det_bkg24k").scan.level == "det_bkg"


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


BASE = """
name: t
scan: {dc9: "-1:1:3", events_per_point: 1000}
evaluation: {dc9: [0.0], sets: 4, events_per_set: 100}
"""


def test_a_user_yaml_file_loads(tmp_path):
    assert load_config(_write(tmp_path, BASE)).scan.dc9 == [-1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "edit, field",
    [
        ("events_per_point: 1000", "scan.events_per_point"),
        ("name: t", "bogus"),
        ("sets: 4", "evaluation.sets"),
        ('dc9: "-1:1:3"', "scan.dc9"),
    ],
)
def test_invalid_config_names_the_field_in_one_line(tmp_path, edit, field):
    bad = {
        "events_per_point: 1000": "events_per_point: -5",
        "name: t": "name: t\nbogus: 1",
        "sets: 4": "sets: 1",
        'dc9: "-1:1:3"': 'dc9: "1:2:0"',
    }[edit]
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, BASE.replace(edit, bad)))
    msg = str(err.value)
    assert "\n" not in msg and field in msg and "c.yaml" in msg


def test_a_charmonium_window_is_refused_in_a_config(tmp_path):
    with pytest.raises(ConfigError, match="theory.windows.*charmonium"):
        load_config(_write(tmp_path, BASE + "theory: {windows: [[7, 9]]}\n"))


def test_unknown_config_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="unknown config 'nope'.*demo"):
        load_config("nope")


def test_broken_yaml_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "name: [unclosed"))
