import pytest

from shared.config import ConfigError, FedxrecConfig
from shared.config_files import parse_overrides


def test_defaults_are_valid_and_round_trip_through_flat_keys():
    cfg = FedxrecConfig().validate()
    assert FedxrecConfig.from_flat(cfg.to_flat()) == cfg
    assert cfg.to_flat()["privacy.epsilon"] == 8.0


def test_overrides_are_typed():
    cfg = FedxrecConfig.load(
        overrides=[
            "train.batch_size=64",
            "privacy.enabled=false",
            "model.encoder=/some/path",
            "privacy.epsilon=2",
        ]
    )
    assert cfg.train.batch_size == 64 and cfg.privacy.enabled is False
    assert cfg.model.encoder == "/some/path" and cfg.privacy.epsilon == 2.0


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match="Did you mean 'train.batch_size'"):
        FedxrecConfig.from_flat({"train.batchsize": 3})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train.batch_size", "many", "expects an int"),
        ("train.batch_size", 0, "must be in"),
        ("privacy.accountant", "gdp", "prv or rdp"),
        ("privacy.epsilon", -1.0, "must be > 0"),
        ("model.lora_r", 2.5, "expects an int"),
        ("federation.rounds", True, "expects an int"),
    ],
)
def test_bad_values_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        FedxrecConfig.from_flat({key: value})
    assert message in str(err.value)


def test_toml_file_then_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nbatch_size = 16\n[privacy]\nepsilon = 4.0\n")
    cfg = FedxrecConfig.load(path, ["privacy.epsilon=1"])
    assert cfg.train.batch_size == 16 and cfg.privacy.epsilon == 1.0


def test_broken_toml_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        FedxrecConfig.load(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        FedxrecConfig.load(bad)


def test_override_syntax():
    assert parse_overrides(["a.b=word", "a.c=1.5"]) == {"a.b": "word", "a.c": 1.5}
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["novalue"])


def test_flower_app_config_lists_every_key_with_its_default():
    """`flwr run --run-config` only accepts keys present in pyproject's app config."""
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    app_config = pyproject["tool"]["flwr"]["app"]["config"]
    assert app_config == FedxrecConfig().to_flat()


def test_infinite_epsilon_with_dp_says_how_to_turn_dp_off():
    with pytest.raises(ConfigError, match="privacy.epsilon' is infinite.*privacy.enabled=false"):
        FedxrecConfig.from_flat({"privacy.epsilon": float("inf")})
    assert not FedxrecConfig.from_flat(
        {"privacy.epsilon": float("inf"), "privacy.enabled": False}
    ).privacy.enabled


def test_simulate_epsilon_inf_means_no_dp(tmp_path):
    from simulations.cli import build_parser
    from simulations.simulate import simulation_config

    args = build_parser().parse_args(["simulate", "--out", str(tmp_path), "--epsilon", "inf"])
    cfg = simulation_config(args)
    assert not cfg.privacy.enabled and cfg.privacy.epsilon == 8.0


def test_a_section_built_in_code_is_checked_too():
    import dataclasses

    from shared.config import ModelConfig, PrivacyConfig, TrainConfig

    with pytest.raises(ConfigError, match="model.lora_r' must be >= 1"):
        ModelConfig(lora_r=0)
    with pytest.raises(ConfigError, match="train.steps' expects an int, got '3'"):
        TrainConfig(steps="3")
    with pytest.raises(ConfigError, match="train.lora_steps' must be in"):
        dataclasses.replace(TrainConfig(), lora_steps=50)
    epsilon = PrivacyConfig(epsilon=4).epsilon  # an int where a float is expected is fine
    assert epsilon == 4.0 and isinstance(epsilon, float)
