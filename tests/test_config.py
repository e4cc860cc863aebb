"""vaekit.config: checks naming the field, JSON round trip, file errors naming the file, warm-up."""

import json

import pytest

from vaekit.config import CONFIG_VERSION, DataConfig, ModelConfig, RunConfig, TrainConfig
from vaekit.errors import ConfigError


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"input_dim": 0}, "input_dim"),
        ({"input_dim": 4, "latent_dim": -1}, "latent_dim"),
        ({"input_dim": 4, "latent_dim": 2.5}, "latent_dim"),
        ({"input_dim": 4, "hidden": (8, 0)}, "hidden"),
        ({"input_dim": 4, "decoder_hidden": (-3,)}, "decoder_hidden"),
        ({"input_dim": 4, "activation": "sigmoidish"}, "activation"),
        ({"input_dim": 4, "likelihood": "poisson"}, "likelihood"),
        ({"input_dim": 4, "prior": "flow"}, "prior"),
        ({"input_dim": 4, "inference": "magic"}, "inference"),
        ({"input_dim": 4, "variance": "diag"}, "variance"),
        ({"input_dim": 4, "fixed_std": 0.0}, "fixed_std"),
        ({"input_dim": 4, "fixed_std": float("nan")}, "fixed_std"),
        ({"input_dim": 4, "image_shape": (3, 3)}, "image_shape"),
    ],
)
def test_model_config_checks(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig(**kwargs)


def test_model_config_accepts_image_shape():
    assert ModelConfig(input_dim=12, image_shape=[3, 2, 2]).image_shape == (3, 2, 2)
    assert ModelConfig(input_dim=4, image_shape=(2, 2)).image_shape == (2, 2)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"beta": -1.0}, "beta"),
        ({"warmup": -1}, "warmup"),
        ({"n_samples": 0}, "n_samples"),
        ({"patience": 0}, "patience"),
        ({"seed": -1}, "seed"),
        ({"eval_k": 0}, "eval_k"),
        ({"dtype": "float16"}, "dtype"),
        ({"device": "tpu"}, "device"),
        ({"epochs": True}, "epochs"),  # a bool is not an integer count
    ],
)
def test_train_config_checks(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"valid_fraction": -0.1}, "valid_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"valid_fraction": 0.5, "test_fraction": 0.5}, "valid_fraction \\+ test_fraction"),
        ({"valid_fraction": 0.6, "test_fraction": 0.7}, "valid_fraction \\+ test_fraction"),
        ({"split_seed": -2}, "split_seed"),
    ],
)
def test_data_config_checks(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        DataConfig(**kwargs)


def _run_config():
    return RunConfig(
        model=ModelConfig(input_dim=16, latent_dim=3, hidden=(8, 4), likelihood="gaussian", variance="feature",
                          image_shape=(4, 4)),
        train=TrainConfig(epochs=3, beta=0.5, warmup=2, patience=4, dtype="float64"),
        data=DataConfig(source="digits", valid_fraction=0.2, test_fraction=0.1, split_seed=7),
    )


def test_json_round_trip():
    config = _run_config()
    d = json.loads(json.dumps(config.to_dict()))  # tuples become lists, as in a file
    back = RunConfig.from_dict(d)
    assert back == config
    assert back.model.hidden == (8, 4) and back.model.image_shape == (4, 4)


def test_save_load(tmp_path):
    config = _run_config()
    path = tmp_path / "config.json"
    config.save(path)
    assert json.loads(path.read_text())["version"] == CONFIG_VERSION
    assert RunConfig.load(path) == config


def _write(tmp_path, text):
    path = tmp_path / "config.json"
    path.write_text(text)
    return path


def test_load_invalid_json_names_the_file(tmp_path):
    path = _write(tmp_path, "{not json")
    with pytest.raises(ConfigError) as info:
        RunConfig.load(path)
    assert str(path) in str(info.value) and "JSON" in str(info.value)


def _bad_version(d):
    d["version"] = CONFIG_VERSION + 1


def _unknown_field(d):
    d["train"]["learning_rate"] = 0.1


def _bad_value(d):
    d["train"]["beta"] = -2


@pytest.mark.parametrize(
    "spoil, culprit",
    [(_bad_version, "version"), (_unknown_field, "learning_rate"), (_bad_value, "beta")],
    ids=["wrong-version", "unknown-field", "bad-value"],
)
def test_load_bad_config_names_the_file_and_the_culprit(tmp_path, spoil, culprit):
    d = _run_config().to_dict()
    spoil(d)
    path = _write(tmp_path, json.dumps(d))
    with pytest.raises(ConfigError) as info:
        RunConfig.load(path)
    assert str(path) in str(info.value) and culprit in str(info.value)


def test_load_missing_section_and_missing_file(tmp_path):
    d = _run_config().to_dict()
    del d["model"]
    path = _write(tmp_path, json.dumps(d))
    with pytest.raises(ConfigError, match="model") as info:
        RunConfig.load(path)
    assert str(path) in str(info.value)
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as info:
        RunConfig.load(missing)
    assert str(missing) in str(info.value)


def test_beta_warmup():
    t = TrainConfig(beta=2.0, warmup=4)
    assert t.beta_at(1) == pytest.approx(0.5)  # beta / 4
    assert t.beta_at(2) == pytest.approx(1.0)
    assert t.beta_at(4) == 2.0 and t.beta_at(9) == 2.0
    assert TrainConfig(beta=0.7, warmup=0).beta_at(1) == 0.7


def test_non_string_device_is_a_config_error(tmp_path):
    d = _run_config().to_dict()
    d["train"]["device"] = 0
    path = _write(tmp_path, json.dumps(d))
    with pytest.raises(ConfigError, match="device"):
        RunConfig.load(path)


def test_non_bool_analytic_kl_is_a_config_error():
    with pytest.raises(ConfigError, match="analytic_kl"):
        TrainConfig(analytic_kl="false")
