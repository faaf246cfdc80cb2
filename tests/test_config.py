import pytest
import yaml

from tests.conftest import run_of
from worldmodels.config import ConfigError, ExperimentConfig, load_config, merge_into, save_config


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


def test_int_is_accepted_for_float():
    assert load_config("carracing", [], ["vae.lr=1"]).vae.lr == 1.0


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("defaults:\n  vae:\n    zdim: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml defaults: unknown key 'vae\.zdim'"):
        load_config(str(path))
    path.write_text("defaults: {}\nextra: 1\n")
    with pytest.raises(ConfigError, match="extra"):
        load_config(str(path))


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
