"""vaekit.config: checks naming the field, JSON round trip, file errors naming the file, warm-up."""

import json
import re

import numpy as np
import pytest
from config_helpers import as_version

from vaekit.config import ADDED_FIELDS, CONFIG_VERSION, DataConfig, ModelConfig, RunConfig, TrainConfig
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


def test_one_width_may_be_given_as_an_integer():
    """hidden=16 is one hidden layer of 16, as scikit-learn's hidden_layer_sizes=100; zero, a
    fraction or a bool is still refused."""
    assert ModelConfig(input_dim=4, hidden=16).hidden == (16,)
    assert ModelConfig(input_dim=4, hidden=np.int64(8), decoder_hidden=4).decoder_hidden == (4,)
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ConfigError, match="hidden must be a list of integers >= 1"):
            ModelConfig(input_dim=4, hidden=bad)


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
        ({"test_fraction": 1.0}, "test_fraction must be < 1, got 1.0"),
        ({"test_fraction": 1.5}, "test_fraction must be < 1, got 1.5"),
        ({"valid_fraction": 2}, "valid_fraction must be < 1, got 2"),
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


@pytest.mark.parametrize("section, field", [("data", "source"), ("model", "likelihood"), ("model", "input_shift"), ("train", "dtype"), ("model", "latent_dim")])
def test_a_current_config_missing_a_field_is_refused(tmp_path, section, field):
    """This version writes every field: one missing was edited away or damaged, and its
    default (another data source, another likelihood, no input map) would make another
    model without a word. Older versions, which lacked later options, still take defaults."""
    d = _run_config().to_dict()
    del d[section][field]
    path = _write(tmp_path, json.dumps(d))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: the {section} section is missing the field\(s\) {field};"):
        RunConfig.load(path)
    for gone in ("train", "data"):
        d = _run_config().to_dict()
        del d[gone]
        with pytest.raises(ConfigError, match=rf"missing the section '{gone}'"):
            RunConfig.from_dict(d)
    d = _run_config().to_dict()
    del d["train"]["adam_eps"], d["model"]["join"]  # options added while version 5 was current
    as_version(d, 5)
    old = RunConfig.from_dict(d)
    assert old.version == CONFIG_VERSION and old.train.adam_eps == TrainConfig().adam_eps and old.model.join == "concat"


def test_version_6_config_loads_without_valid_k_and_stays_strict(tmp_path):
    """Version 7 added train.valid_k: a version 6 run (which never estimated log p(x) per
    epoch) loads with valid_k 0, while a version 6 file missing a field version 6 had is still
    damage, and a version 7 file without valid_k is too."""
    d = _run_config().to_dict()
    assert d["version"] == CONFIG_VERSION == 10
    del d["train"]["valid_k"]
    with pytest.raises(ConfigError, match=r"the train section is missing the field\(s\) valid_k;"):
        RunConfig.from_dict(json.loads(json.dumps(d)))
    as_version(d, 6)
    path = _write(tmp_path, json.dumps(d))
    old = RunConfig.load(path)
    assert old.version == CONFIG_VERSION and old.train.valid_k == 0
    assert old.to_dict()["train"] == {**d["train"], "valid_k": 0, "ema": 0.0, "weight_decay": 0.0}
    del d["train"]["adam_eps"]
    with pytest.raises(ConfigError, match=r"the train section is missing the field\(s\) adam_eps;"):
        RunConfig.from_dict(d)


def test_version_7_config_reads_x_through_the_trunk_and_version_8_must_say(tmp_path):
    """Version 8 added model.x_path: a version 7 topdown run (whose q(z1|x, z2) read x through an
    encoder trunk) loads with x_path trunk, and its weights' names stay what they were; a
    version 8 file without the field is damage."""
    model = ModelConfig(input_dim=6, latent_dim=(4, 2), hidden=(8,), inference="topdown")
    d = RunConfig(model=model).to_dict()
    assert d["version"] == CONFIG_VERSION == 10 and d["model"]["x_path"] == "trunk"
    del d["model"]["x_path"]
    with pytest.raises(ConfigError, match=r"the model section is missing the field\(s\) x_path;"):
        RunConfig.from_dict(json.loads(json.dumps(d)))
    as_version(d, 7)
    old = RunConfig.load(_write(tmp_path, json.dumps(d)))
    assert old.version == CONFIG_VERSION and old.model.x_path == "trunk"
    assert old.to_dict()["model"] == {**d["model"], "x_path": "trunk"}


@pytest.mark.parametrize("version,field,value", [(9, "ema", 0.99), (10, "weight_decay", 1e-4)])
def test_a_train_field_a_version_added_reads_as_off_before_it_and_must_be_there_after(tmp_path, version, field, value):
    """Version 9 added train.ema, version 10 train.weight_decay: a run of the version before
    (trained on its own weights, without decay) loads with the field 0; a file of that version
    or later without the field is damage, and an older file that holds it had its version edited."""
    d = _run_config().to_dict()
    assert d["train"][field] == 0.0
    del d["train"][field]
    with pytest.raises(ConfigError, match=rf"the train section is missing the field\(s\) {field};"):
        RunConfig.from_dict(json.loads(json.dumps(d)))
    as_version(d, version - 1)
    old = RunConfig.load(_write(tmp_path, json.dumps(d)))
    assert old.version == CONFIG_VERSION and getattr(old.train, field) == 0.0
    assert old.to_dict()["train"] == {**d["train"], "ema": 0.0, "weight_decay": 0.0}
    d["train"][field] = value  # a file of the version before cannot hold it: its version was edited
    with pytest.raises(ConfigError, match=f"which version {version} added"):
        RunConfig.from_dict(d)


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


# --------------------------------------------------------------------------- options declared once


def test_every_option_is_one_field_one_flag_one_estimator_parameter():
    """The CLI's flags, the estimator's parameters and the config's fields all come from the
    declarations: each name appears in each place exactly once, with the declared default."""
    import dataclasses
    import inspect

    from vaekit.cli import build_parser, train_options
    from vaekit.config import AUTO, FROM_DATA, section_options
    from vaekit.estimator import RUN_ONLY, VAE

    fields = {s: {f.name: f for f in dataclasses.fields(c)} for s, c in (("model", ModelConfig), ("train", TrainConfig), ("data", DataConfig))}
    for section in fields:
        assert set(fields[section]) == set(section_options(section))
        for name, f in fields[section].items():
            assert f.default == section_options(section)[name].default
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in train._actions}
    assert set(train_options()) <= dests
    flagged = {name for _, name, _ in train_options().values()}
    assert flagged == {n for s in fields for n in fields[s]} - FROM_DATA
    params = inspect.signature(VAE.__init__).parameters
    for section in ("model", "train"):
        for name, opt in section_options(section).items():
            if name in FROM_DATA - {"image_shape"} or name in RUN_ONLY:
                assert name not in params
            else:
                assert params[name].default == AUTO.get(name, opt.default), name


def test_component_options_belong_to_their_component():
    """An option a component owns is refused when that component is not selected."""
    with pytest.raises(ConfigError, match="variance applies to likelihood gaussian only"):
        ModelConfig(input_dim=4, likelihood="bernoulli", variance="feature")
    with pytest.raises(ConfigError, match="refine_steps applies to inference amortized only"):
        ModelConfig(input_dim=4, inference="vi", n_points=3, refine_steps=2)
    with pytest.raises(ConfigError, match="beta applies to objective elbo only"):
        TrainConfig(objective="iwae", beta=0.5)
    with pytest.raises(ConfigError, match="k applies to objective iwae only"):
        TrainConfig(objective="elbo", k=3)
    assert TrainConfig(objective="iwae", k=7).k == 7
    assert ModelConfig(input_dim=4, likelihood="gaussian", variance="feature").variance == "feature"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"decoder_input": "all"}, "decoder_input all applies to models with several latent groups (latent_dim 40,40) only; this one has one, 3"),
        ({"downward": "mlp", "latent_dim": (3,)}, "downward applies to models with several latent groups (latent_dim 40,40) only; this one has one, 3"),
        ({"refine_in_training": True}, "refine_in_training needs refine_steps > 0"),
    ],
)
def test_options_that_would_do_nothing_are_refused(kwargs, message):
    """An option that this model would silently ignore is refused, as for a component's options."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        ModelConfig(**{"input_dim": 4, "latent_dim": 3, **kwargs})
    assert ModelConfig(input_dim=4, latent_dim=(3, 2), decoder_input="all").decoder_input == "all"
    assert ModelConfig(input_dim=4, latent_dim=3, refine_steps=2, refine_in_training=True).refine_in_training


def test_objective_auto_is_the_inference_method_own():
    assert RunConfig(model=ModelConfig(input_dim=4)).train.objective == "elbo"
    assert RunConfig(model=ModelConfig(input_dim=4, inference="autoencoder")).train.objective == "reconstruction"
    assert RunConfig(model=ModelConfig(input_dim=4, inference="map", n_points=2)).train.objective == "elbo"


def test_version_1_config_loads(tmp_path):
    """A config.json written before objectives and latent groups existed still loads: the
    autoencoder trained on its reconstruction, every other method on the ELBO."""
    for inference, objective in (("amortized", "elbo"), ("autoencoder", "reconstruction")):
        v1 = {
            "model": {"input_dim": 64, "latent_dim": 2, "hidden": [32], "decoder_hidden": None, "activation": "relu",
                      "likelihood": "continuous_bernoulli", "variance": "shared", "fixed_std": 1.0,
                      "prior": "standard_normal", "inference": inference, "image_shape": [8, 8], "n_points": 0,
                      "local_steps": 100, "local_lr": 0.05, "refine_steps": 0, "refine_lr": 0.05,
                      "refine_in_training": False},
            "train": {"epochs": 3, "batch_size": 64, "lr": 0.001, "beta": 1.0, "warmup": 0, "n_samples": 1,
                      "analytic_kl": True, "patience": None, "seed": 0, "device": "cpu", "dtype": "float32",
                      "eval_k": 10, "compile": False, "compile_mode": "default", "amp": "off",
                      "matmul_precision": "highest"},
            "data": {"source": "digits", "data_dir": None, "valid_fraction": 0.1, "test_fraction": 0.2,
                     "split_seed": 0, "mmap": False},
            "version": 1,
        }  # fmt: skip
        path = tmp_path / f"{inference}.json"
        path.write_text(json.dumps(v1))
        config = RunConfig.load(path)
        assert config.version == CONFIG_VERSION and config.train.objective == objective
        assert config.model.latent_dim == 2 and config.model.image_shape == (8, 8) and config.model.net == "mlp"


def test_version_2_config_loads_without_an_input_map(tmp_path):
    """A config.json written before models stored their input map loads as a model without
    one: standardisation off, no shift or scale."""
    config = as_version(RunConfig(model=ModelConfig(input_dim=4, likelihood="gaussian")).to_dict(), 2)
    assert not {"standardize", "input_shift", "input_scale"} & set(config["model"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = RunConfig.load(tmp_path / "config.json")
    assert loaded.version == CONFIG_VERSION == 10
    assert (loaded.model.standardize, loaded.model.input_shift, loaded.model.input_scale) == ("off", None, None)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_scale": (1.0, 2.0)}, "input_scale has 2 entries; expected 1 or input_dim = 4"),
        ({"input_scale": (1.0, 0.0, 1.0, 1.0)}, "input_scale must be > 0 in every entry, got 0.0"),
        ({"input_scale": (float("nan"),)}, "input_scale must be a non-empty list of finite numbers"),
        ({"input_shift": (1.0,)}, "input_shift needs input_scale"),
        ({"standardize": "on"}, "standardize=on needs the gaussian likelihood and the statistics"),
        ({"standardize": "on", "likelihood": "bernoulli", "input_scale": (2.0,)}, "got likelihood bernoulli"),
    ],
)
def test_input_map_checks(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        ModelConfig(**{"input_dim": 4, "likelihood": "gaussian", **kwargs})


def test_input_map_round_trips_through_json(tmp_path):
    model = ModelConfig(input_dim=3, likelihood="gaussian", standardize="on", input_shift=[1000.1, -2.5, 1 / 3], input_scale=[0.1, 7.0, 2 / 3])
    RunConfig(model=model).save(tmp_path / "c.json")
    loaded = RunConfig.load(tmp_path / "c.json").model
    assert loaded.input_shift == (1000.1, -2.5, 1 / 3) and loaded.input_scale == (0.1, 7.0, 2 / 3)  # exactly


def test_help_lists_every_registered_name_without_importing_torch():
    """`vaekit train --help` reads the registries from their sources: it names every entry of
    every registry and never loads torch (which alone takes about a second to import)."""
    import subprocess
    import sys

    from vaekit.registry import REGISTRIES

    code = (
        "import sys, contextlib, io\n"
        "from vaekit.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try: main(['train', '--help'])\n"
        "    except SystemExit: pass\n"
        "print(buf.getvalue())\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("NO-TORCH")
    flat = " ".join(out.split())
    for kind in ("prior", "likelihood", "inference", "net", "objective"):
        for name in REGISTRIES[kind].names():
            assert name in flat, (kind, name)


@pytest.mark.parametrize("kind", ["prior", "likelihood", "inference", "net", "objective", "dataset"])
def test_registry_read_from_source_equals_the_imported_registry(kind):
    """What the source parser reads (names and each entry's options) is what importing the
    modules registers: the lazy listing cannot drift from the classes."""
    from vaekit.registry import REGISTRIES

    registry = REGISTRIES[kind]
    loaded = registry.loaded()
    assert sorted(loaded) == registry.names()
    for name, cls in loaded.items():
        assert cls.name == name and cls.options == registry.options(name)


@pytest.mark.parametrize("inference", ["map", "vi", "amortized"])
def test_version_3_config_keeps_the_per_point_rate_it_was_trained_at(tmp_path, inference):
    """Before version 4 the per-point tables of map and vi stepped at the shared --lr: a run
    written then loads (and resumes) with point_lr equal to its lr, not the new default."""
    model = ModelConfig(input_dim=4, inference=inference, n_points=3 if inference != "amortized" else 0)
    config = as_version(RunConfig(model=model, train=TrainConfig(lr=3e-4)).to_dict(), 3)
    assert "point_lr" not in config["model"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = RunConfig.load(tmp_path / "config.json")
    assert loaded.version == CONFIG_VERSION == 10
    if inference == "amortized":
        assert loaded.model.point_lr == 0.2  # an option this model does not use, at its default
    else:
        assert loaded.model.point_lr == 3e-4
        assert ModelConfig(input_dim=4, inference=inference, n_points=3).point_lr == 0.2


@pytest.mark.parametrize("version", [0, -1, True, False, "8", 8.0, None, [8]])
def test_a_version_that_is_not_a_known_integer_is_refused(tmp_path, version):
    """JSON's true is not version 1, nor 8.0 version 8: each was written by hand, not by vaekit."""
    d = _run_config().to_dict()
    d["version"] = version
    path = _write(tmp_path, json.dumps(d))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: config version must be an integer from 1 to {CONFIG_VERSION}, got "):
        RunConfig.load(path)


@pytest.mark.parametrize("version", [CONFIG_VERSION + 1, CONFIG_VERSION + 30])
def test_a_later_version_asks_for_a_newer_vaekit(tmp_path, version):
    import vaekit

    d = _run_config().to_dict()
    d["version"] = version
    path = _write(tmp_path, json.dumps(d))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: config version {version} was written by a newer vaekit "
                       rf"\(this is {re.escape(vaekit.__version__)}, which reads versions 1 to {CONFIG_VERSION}\): upgrade vaekit"):
        RunConfig.load(path)


def test_a_missing_version_is_refused():
    d = _run_config().to_dict()
    del d["version"]
    with pytest.raises(ConfigError, match=f"config version must be an integer from 1 to {CONFIG_VERSION}, got None"):
        RunConfig.from_dict(d)


@pytest.mark.parametrize("version", range(1, CONFIG_VERSION))
def test_a_version_edited_down_is_refused_naming_a_later_field(tmp_path, version):
    """A current file whose version was lowered would be migrated as an old one: version 2's
    step drops the input map and version 1's resets the objective, which makes another model
    from the same weights without a word. Its fields of later versions give it away."""
    d = _run_config().to_dict()
    d["version"] = version
    path = _write(tmp_path, json.dumps(d))
    later = min(v for v in ADDED_FIELDS if v > version)
    section, names = next(iter(ADDED_FIELDS[later].items()))
    with pytest.raises(ConfigError, match=rf"version {version} holds the {section} field\(s\) {names[0]}.*which version {later} added: the version was edited"):
        RunConfig.load(path)
    # The same file as that version wrote it loads, migrated to the current version.
    assert RunConfig.from_dict(as_version(_run_config().to_dict(), version)).version == CONFIG_VERSION


def test_an_unknown_top_level_field_is_refused(tmp_path):
    d = _run_config().to_dict()
    d["optimizer"] = {"lr": 1}
    path = _write(tmp_path, json.dumps(d))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: unknown top-level field\(s\): optimizer$"):
        RunConfig.load(path)


def test_downward_refuses_a_family_without_a_network_of_vectors():
    """p(z_l | z_{l+1}) reads latent vectors: conv's would be mlp's, so --downward conv is
    refused (it would change nothing, and on tables it asked for images)."""
    with pytest.raises(ConfigError, match=re.escape("downward conv: p(z_l | z_{l+1}) reads latent vectors") + ".*choose gated or mlp"):
        ModelConfig(input_dim=4, latent_dim=(3, 2), downward="conv")
    # By default a conv model's downward nets are its family's dense ones: allowed.
    assert ModelConfig(input_dim=16, image_shape=(4, 4), latent_dim=(3, 2), net="conv").downward_net == "conv"


def test_a_run_saved_with_downward_conv_loads_as_mlp():
    """Runs saved while --downward took conv built mlp's modules: they load under that name,
    and the weights' record compares equal to it (checkpoint.check_model_record)."""
    from vaekit.config import canonical_model

    d = RunConfig(model=ModelConfig(input_dim=16, image_shape=(4, 4), latent_dim=(3, 2), net="conv", downward="mlp")).to_dict()
    d["model"]["downward"] = "conv"
    assert RunConfig.from_dict(d).model.downward == "mlp"
    assert canonical_model(d["model"]) == {**d["model"], "downward": "mlp"} and d["model"]["downward"] == "conv"
    assert canonical_model({**d["model"], "downward": None})["downward"] is None
    # Conv chosen by --downward alone: its --channels acted on nothing and go back to their default.
    flat = RunConfig(model=ModelConfig(input_dim=16, latent_dim=(3, 2), downward="mlp")).to_dict()
    flat["model"].update(downward="conv", channels=[8])
    assert RunConfig.from_dict(flat).model.channels == ModelConfig(input_dim=16).channels
    assert canonical_model({**d["model"], "channels": [8]})["channels"] == [8]  # conv is the model's net: kept


def test_feature_names_must_name_every_input_column():
    """A config.json edited (or built) with column names that do not match the model's width
    would write CSV headers that do not fit the rows: refused, in the API and on load."""
    model = ModelConfig(input_dim=3, latent_dim=2, hidden=(4,))
    assert RunConfig(model=model, data=DataConfig(feature_names=("a", "b", "c"))).data.feature_names == ("a", "b", "c")
    with pytest.raises(ConfigError, match=r"^data.feature_names names 2 columns, but model.input_dim is 3$"):
        RunConfig(model=model, data=DataConfig(feature_names=("a", "b")))
    d = RunConfig(model=model).to_dict()
    d["data"]["feature_names"] = ["a", "b", "c", "d"]
    with pytest.raises(ConfigError, match="names 4 columns, but model.input_dim is 3"):
        RunConfig.from_dict(json.loads(json.dumps(d)))
