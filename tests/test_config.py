import dataclasses
import re
import typing

import pytest
import yaml

from tests.conftest import run_of
from worldmodels.config import (
    ConfigError,
    ExperimentConfig,
    comma_integers,
    comma_names,
    comma_seeds,
    config_dir,
    load_config,
    merge_into,
    numeric_fields,
    parse_override,
    save_config,
)


def _owner(key: str):
    """The dataclass instance that holds dotted ``key`` in a default config."""
    obj = ExperimentConfig()
    for part in key.split(".")[:-1]:
        obj = getattr(obj, part)
    return obj


def test_presets_and_overrides_layer_in_order():
    paper = load_config("carracing")
    quick = load_config("carracing", ["quick"])
    assert paper.collect.episodes == 10000 and paper.name == "paper"
    assert quick.collect.episodes < paper.collect.episodes and quick.name == "quick"
    over = load_config("carracing", ["quick"], ["vae.epochs=7", "vae.lr=0.5", "name=x"])
    assert over.vae.epochs == 7 and over.vae.lr == 0.5 and over.name == "x"
    assert str(run_of(over)).endswith("CarRacing-v3/x")


def test_doom_config_is_paper_scale():
    cfg = load_config("doom_takecover")
    assert cfg.vae.z_dim == 64 and cfg.env.max_episode_steps == 2100
    assert cfg.env.id == "VizdoomTakeCover-v1"


@pytest.mark.parametrize("override, needle", [
    ("vae.epoch=3", "unknown key 'vae.epoch'"),
    ("nonsense=1", "unknown key 'nonsense'"),
    ("vae.epochs=three", "key 'vae.epochs' must be int"),
    ("vae.epochs=1.5", "key 'vae.epochs' must be int"),
    ("vae.epochs=true", "key 'vae.epochs' must be int"),
    ("collect.policy=zigzag", "collect.policy"),
    ("vae", "key=value"),
])
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        load_config("carracing", ["quick"], [override])


def test_selecting_m_by_the_held_action_check_needs_the_check():
    keys = ["memory.select_max_held=1.2", "dream.check_episodes=0"]
    with pytest.raises(ConfigError, match=r"'memory\.select_max_held' above 0 .*episodes > 0"):
        load_config("doom_takecover", ["solve"], keys)
    assert load_config("doom_takecover", ["solve"], keys[:1]).memory.select_max_held == 1.2


def test_int_is_accepted_for_float():
    assert load_config("carracing", [], ["vae.lr=1"]).vae.lr == 1.0


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    """YAML 1.1 reads ``1e-3`` as a string; configs read it as the float a user means."""
    cfg = load_config("carracing", [], ["vae.lr=1e-3", "controller.sb3_kwargs.learning_rate=3E-4"])
    assert cfg.vae.lr == 0.001 and cfg.controller.sb3_kwargs["learning_rate"] == 0.0003
    path = tmp_path / "exp.yaml"
    base = config_dir() / "carracing.yaml"
    path.write_text(f"include: {base}\ndefaults:\n  vae:\n    lr: 2e-4\n")
    assert load_config(str(path)).vae.lr == 0.0002
    with pytest.raises(ConfigError, match="key 'vae.epochs' must be int"):
        load_config("carracing", [], ["vae.epochs=1e3"])
    with pytest.raises(ConfigError, match="key 'vae.lr' must be float"):
        load_config("carracing", [], ["vae.lr='1e-3'"])  # quoted: a string, as written


@pytest.mark.parametrize("text, needle", [
    ("-1", r"--seeds: -1 is outside \[0, 4294967294\]"),
    ("0,99999999999", "99999999999 is outside"),
    ("0,1,0", "--seeds: 0 given more than once"),
    (",", "--seeds: give at least one value"),
    ("0,x", "comma-separated integers"),
])
def test_bad_seed_lists_are_refused_naming_the_option(text, needle):
    with pytest.raises(ConfigError, match=needle):
        comma_seeds(text)


def test_lists_of_names_and_sizes():
    assert comma_seeds(" 0, 1,4294967294") == [0, 1, 4294967294]
    assert comma_names("rmdn_diag, frmdn_square", "--variants") == ["rmdn_diag", "frmdn_square"]
    for text in ("", ",", "a,a"):
        with pytest.raises(ConfigError, match="--variants"):
            comma_names(text, "--variants")
    assert comma_integers("", "--episodes", low=1) == []  # optional: no data curve
    with pytest.raises(ConfigError, match=r"--episodes: 0 is outside \[1, \]"):
        comma_integers("40,0", "--episodes", low=1)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("defaults:\n  vae:\n    zdim: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml defaults: unknown key 'vae\.zdim'"):
        load_config(str(path))
    path.write_text("defaults: {}\nextra: 1\n")
    with pytest.raises(ConfigError, match="extra"):
        load_config(str(path))


def test_a_key_given_twice_is_refused_naming_file_lines_and_key(tmp_path):
    """PyYAML keeps the last of two equal keys: a second ``vae:`` block would drop the
    first's keys without a word."""
    path = tmp_path / "twice.yaml"
    path.write_text("defaults:\n  vae: {epochs: 3}\n  memory: {hidden: 8}\n  vae: {z_dim: 16}\n")
    with pytest.raises(ConfigError, match=r"twice\.yaml.*'vae' is given twice \(lines 2 and 4\)"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="controller.sb3_kwargs.*'a' is given twice"):
        parse_override("controller.sb3_kwargs={a: 1, a: 2}")
    # a << merge's keys may be overridden, as YAML means
    path.write_text("presets:\n  base: &b {vae: {epochs: 3}, memory: {hidden: 8}}\n"
                    "  more:\n    <<: *b\n    vae: {epochs: 4}\ndefaults: {}\n")
    assert load_config(str(path), ["more"]).vae.epochs == 4


def test_unknown_preset_and_config():
    with pytest.raises(ConfigError, match="no preset 'fast'"):
        load_config("carracing", ["fast"])
    with pytest.raises(ConfigError, match="config 'nope' not found"):
        load_config("nope")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config("carracing", ["quick"], ["vae.epochs=3"])
    save_config(cfg, tmp_path / "config.yaml")
    rebuilt = ExperimentConfig()
    merge_into(rebuilt, yaml.safe_load((tmp_path / "config.yaml").read_text()), "saved")
    assert rebuilt == cfg
    # a run's resolved config.yaml is itself a valid --config
    assert load_config(str(tmp_path / "config.yaml")) == cfg


def test_options_and_overrides_mix_in_any_order():
    from worldmodels.config import cli_parser, config_from_args, parse_cli

    parser = cli_parser("test")
    parser.add_argument("--algo", default=None)
    args = parse_cli(parser, ["--preset", "quick", "vae.epochs=2", "--algo", "ppo",
                              "controller.sb3_timesteps=7"])
    cfg = config_from_args(args)
    assert args.algo == "ppo" and cfg.vae.epochs == 2 and cfg.controller.sb3_timesteps == 7


def test_entry_points_print_one_line_errors(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for args, needle in [
        (["train_vae.py", "vae.epoch=3"], "unknown key 'vae.epoch'"),
        (["collect.py", "env.id=NoSuchEnv-v0", f"root={tmp_path}"], "unknown env id"),
        (["train_vae.py", f"root={tmp_path}"], "run collect.py"),
    ]:
        proc = subprocess.run([sys.executable, *args], cwd=root, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2, proc.stderr[-500:]
        assert needle in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------- one source of defaults


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict) and key != "kwargs":
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("path", sorted(config_dir().glob("*.yaml")), ids=lambda p: p.stem)
def test_yaml_defaults_only_override_the_dataclasses(path):
    data = yaml.safe_load(path.read_text())
    defaults = ExperimentConfig()
    for key, value in _leaves(data.get("defaults") or {}):
        current = defaults
        for part in key.split("."):
            current = getattr(current, part)
        # an env file names its env even where that is the dataclass default
        assert key == "env.id" or current != value, f"{path.name}: {key} restates {value!r}"


def test_shared_quick_preset_is_written_once():
    car, doom = load_config("carracing", ["quick"]), load_config("doom_takecover", ["quick"])
    common = yaml.safe_load((config_dir() / "common.yaml").read_text())["presets"]["quick"]
    for key, value in _leaves(common):
        for cfg in (car, doom):
            current = cfg
            for part in key.split("."):
                current = getattr(current, part)
            assert current == value, key
    for path in (config_dir() / "carracing.yaml", config_dir() / "doom_takecover.yaml"):
        own = dict(_leaves(yaml.safe_load(path.read_text())["presets"]["quick"]))
        assert not set(own) & set(dict(_leaves(common))), f"{path.name} restates common quick"


def test_include_layers_defaults_and_presets(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "defaults: {vae: {epochs: 3, lr: 0.5}}\n"
        "presets: {small: {vae: {batch_size: 8, epochs: 2}}, only_base: {seed: 4}}\n")
    (tmp_path / "env.yaml").write_text(
        "include: base\ndefaults: {vae: {epochs: 5}}\npresets: {small: {vae: {epochs: 1}}}\n")
    cfg = load_config(str(tmp_path / "env.yaml"))
    assert (cfg.vae.epochs, cfg.vae.lr) == (5, 0.5)
    cfg = load_config(str(tmp_path / "env.yaml"), ["small"])
    assert (cfg.vae.epochs, cfg.vae.batch_size) == (1, 8)
    assert load_config(str(tmp_path / "env.yaml"), ["only_base"]).seed == 4
    with pytest.raises(ConfigError, match="no preset 'x' .known: only_base, small"):
        load_config(str(tmp_path / "env.yaml"), ["x"])
    (tmp_path / "base.yaml").write_text("include: env\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_config(str(tmp_path / "env.yaml"))
    (tmp_path / "env.yaml").write_text("include: nothere\n")
    with pytest.raises(ConfigError, match="include 'nothere' not found"):
        load_config(str(tmp_path / "env.yaml"))


# --------------------------------------------------------------- choices and ranges


def _fields_where(test, obj=None, prefix=""):
    obj = obj if obj is not None else ExperimentConfig()
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _fields_where(test, value, f"{prefix}{f.name}.")
        elif test(hints[f.name]):
            yield f"{prefix}{f.name}", hints[f.name]


CHOICES = list(_fields_where(lambda tp: typing.get_origin(tp) is typing.Literal))


def test_choices_are_literals():
    keys = {key for key, _ in CHOICES}
    assert {"memory.precision", "memory.flow", "memory.nonfinite", "collect.engine",
            "collect.controller_weights", "controller.engine", "controller.algo",
            "controller.environment", "controller.discrete_head", "dream.done"} <= keys


@pytest.mark.parametrize("key, tp", CHOICES, ids=[k for k, _ in CHOICES])
def test_a_choice_is_checked_from_its_type(key, tp):
    allowed = typing.get_args(tp)
    for value in allowed:
        cfg = load_config("carracing", [], [f"{key}={value}"])
        assert getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]) == value
    listed = " | ".join(map(str, allowed))
    for bad in ("bogus", "true", "1"):
        with pytest.raises(ConfigError, match=f"key '{key}' must be one of {re.escape(listed)}"):
            load_config("carracing", [], [f"{key}={bad}"])


@pytest.mark.parametrize("value", ["bogus", "cuda:x", "gpu", "cpu:0", "cuda:-1", ""])
def test_device_is_validated(value):
    with pytest.raises(ConfigError, match=r"^config key 'device' must be cpu, cuda, cuda:N or "
                                          r"mps, got "):
        load_config("carracing", [], [f"device={value}"])


@pytest.mark.parametrize("value", ["cpu", "cuda", "cuda:1", "mps"])
def test_devices_accepted(value):
    assert load_config("carracing", [], [f"device={value}"]).device == value


def _out_of_range(key: str, f: dataclasses.Field, tp: type) -> list:
    bounds = f.metadata["range"]
    values = []
    if "ge" in bounds:
        values.append(bounds["ge"] - 1)
    if "gt" in bounds:
        values.append(bounds["gt"])
    if "le" in bounds:
        values.append(bounds["le"] + 1)
    if "lt" in bounds:
        values.append(bounds["lt"])
    if tp is float:
        values += [".nan", ".inf", "-.inf"]
    return values


NUMERIC = [(key, value) for key, f in numeric_fields()
           for value in _out_of_range(key, f, typing.get_type_hints(type(_owner(key)))[f.name])]


def test_every_numeric_key_has_a_range():
    """_opt refuses a number without a range when the config classes are defined, and
    every numeric key has out-of-range cases below."""
    from worldmodels.config import _opt

    with pytest.raises(TypeError, match="needs a range"):
        _opt(3, "x")
    with pytest.raises(TypeError, match="needs a range"):
        _opt(3, "x", finite=True)  # finite is for floats
    for key, _ in numeric_fields():
        assert any(k == key for k, _ in NUMERIC), f"{key} declares no range"
    assert len(numeric_fields()) >= 50


@pytest.mark.parametrize("key, value", NUMERIC, ids=[f"{k}={v}" for k, v in NUMERIC])
def test_out_of_range_value_is_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"^config key '{re.escape(key)}' must be "):
        load_config("carracing", [], [f"{key}={value}"])


@pytest.mark.parametrize("override", [
    "seed=4294967294", "seed=0", "env.max_episode_steps=-1", "env.crop_bottom=-1",
    "controller.target_return=-50.5", "collect.controller_epsilon=1", "memory.grad_clip=0",
])
def test_edge_of_a_range_is_accepted(override):
    key, value = override.split("=")
    cfg = load_config("carracing", [], [override])
    owner = cfg
    for part in key.split(".")[:-1]:
        owner = getattr(owner, part)
    assert getattr(owner, key.split(".")[-1]) == float(value)


def test_seed_range_is_what_the_seeded_libraries_take():
    import numpy as np
    import torch

    from worldmodels.config import SEED_MAX

    np.random.seed(SEED_MAX + 1)  # CMA-ES seeds numpy's legacy RNG with seed + 1
    with pytest.raises(ValueError):
        np.random.seed(SEED_MAX + 2)
    torch.manual_seed(SEED_MAX * 1000 + 999)  # V and M seed epochs with seed * 1000 + epoch
    np.random.default_rng([SEED_MAX, 7919, 10**6])


def test_overcomplete_m_is_checked_against_z_dim():
    with pytest.raises(ConfigError, match="'memory.overcomplete_m' must be 0 or > vae.z_dim"):
        load_config("carracing", [], ["memory.overcomplete_m=32"])
    assert load_config("carracing", [], ["memory.overcomplete_m=33"]).memory.overcomplete_m == 33


def test_a_relative_path_key_becomes_absolute(tmp_path, monkeypatch):
    """vae.pretrained=pretrained/x given on the command line names the same directory
    from any later working directory."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config("carracing", [], ["vae.pretrained=pretrained/x"])
    assert cfg.vae.pretrained == str(tmp_path / "pretrained" / "x")
    assert load_config("carracing", [], ["vae.pretrained="]).vae.pretrained == ""


def test_a_preset_over_a_run_comes_from_the_file_of_the_runs_env(tmp_path):
    """``--run DIR --preset NAME`` without ``--config``: the preset file whose env is the
    run's (a TakeCover run does not take CarRacing's PPO preset); ``--config`` still
    names another file."""
    from worldmodels.config import env_preset_file, preset_overrides

    assert env_preset_file("VizdoomTakeCover-v1").name == "doom_takecover.yaml"
    assert env_preset_file("CarRacing-v3").name == "carracing.yaml"
    assert env_preset_file("ALE/Pong-v5") is None
    doom, racing = tmp_path / "doom" / "config.yaml", tmp_path / "racing" / "config.yaml"
    doom.parent.mkdir()
    racing.parent.mkdir()
    save_config(load_config("doom_takecover"), doom)
    save_config(load_config("carracing"), racing)
    with pytest.raises(ConfigError, match=r"doom_takecover.yaml: no preset 'ppo'.*"
                                          r"run's env VizdoomTakeCover-v1.*--config"):
        preset_overrides(None, ["ppo"], doom)
    ppo = preset_overrides("carracing", ["ppo"], doom)  # the file named
    assert "controller.algo=\"ppo\"" in ppo
    assert preset_overrides(None, ["ppo"], racing) == ppo
    with pytest.raises(ConfigError, match="preset 'dream'.*doom_takecover.yaml.*sets"):
        preset_overrides(None, ["dream"], doom)  # found in the run's env's file
    # a file it cannot read (or an env no file is for): carracing's, as before
    assert preset_overrides(None, ["ppo"], tmp_path / "none" / "config.yaml") == ppo
