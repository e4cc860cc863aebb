"""vaekit.checkpoint: atomic writes, safetensors with a checksum, run directories, resume state."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from vaekit import checkpoint as ckpt
from vaekit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from vaekit.errors import CheckpointError, VaekitWarning
from vaekit.evaluate import log_px_per_point
from vaekit.model import VAEModel
from vaekit.optim import WeightAverage


def esc(path) -> str:
    return re.escape(str(path))


def temp_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def small_model(seed: int = 0, **kw) -> VAEModel:
    cfg = dict(input_dim=6, latent_dim=2, hidden=(5,), likelihood="bernoulli")
    cfg.update(kw)
    torch.manual_seed(seed)
    return VAEModel(ModelConfig(**cfg))


# ---- atomic_write_bytes ------------------------------------------------------------------------


def test_atomic_write_creates_and_replaces(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    ckpt.atomic_write_bytes(path, b"first")
    assert path.read_bytes() == b"first"
    ckpt.atomic_write_bytes(path, b"second, longer")
    assert path.read_bytes() == b"second, longer"
    assert temp_files(path.parent) == []


def test_atomic_write_through_a_symbolic_link_replaces_its_target(tmp_path):
    """As open() writes through a link: the target gets the new bytes (atomically, beside it)
    and the link stays a link."""
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "out.csv"
    target.write_bytes(b"old")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    ckpt.atomic_write_bytes(link, b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"
    assert temp_files(tmp_path) == temp_files(tmp_path / "real") == []


class Boom(BaseException):
    """A BaseException, like the KeyboardInterrupt of a Ctrl-C in the middle of a write."""


@pytest.mark.parametrize("fail_at", ["write", "fsync", "replace"])
@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), Boom()])
def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path, monkeypatch, fail_at, error):
    error = type(error)(*error.args)  # a fresh one: the write may name its file in it
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old contents")
    if fail_at == "write":
        real_fdopen = os.fdopen

        class HalfWriter:
            """Writes the first half of the data, then fails (a full disk, a signal)."""

            def __init__(self, f):
                self.f = f

            def write(self, data):
                self.f.write(data[: len(data) // 2])
                self.f.flush()
                raise error

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()
                return False

        monkeypatch.setattr(os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    else:

        def fail(*args, **kwargs):
            raise error

        monkeypatch.setattr(os, fail_at, fail)
    with pytest.raises(type(error)) as info:
        ckpt.atomic_write_bytes(path, b"new contents that never land" * 100)
    monkeypatch.undo()
    if isinstance(error, OSError) and fail_at != "replace":
        # A write on a descriptor names no file: the message names the file being written.
        assert info.value.filename == str(path)
    assert path.read_bytes() == b"old contents"
    assert temp_files(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


# ---- save_tensors / load_tensors ---------------------------------------------------------------


def sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(3, 4, generator=g),
        "w_t": torch.randn(4, 3, generator=g).t(),  # not contiguous
        "d": torch.randn(5, dtype=torch.float64, generator=g),
        "scalar": torch.tensor(-1.25),
        "step": torch.tensor(17.0),
        "i64": torch.arange(-3, 9, dtype=torch.int64).reshape(3, 4),
        "i0": torch.tensor(123456789012, dtype=torch.int64),
        "i32": torch.tensor([1, -2, 3], dtype=torch.int32),
        "u8": torch.get_rng_state()[:50],
        "b": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
        "special": torch.tensor([float("inf"), -float("inf"), -0.0, 1e-45]),
    }


def test_save_load_round_trip_is_exact(tmp_path):
    tensors = sample_tensors()
    meta = {"epoch": 3, "best_valid": -101.5, "history": [{"a": 1.0}], "name": "ünïcode"}
    path = tmp_path / "t.safetensors"
    ckpt.save_tensors(path, tensors, meta)
    loaded, loaded_meta = ckpt.load_tensors(path)
    assert loaded_meta == meta
    assert sorted(loaded) == sorted(tensors)
    for k, v in tensors.items():
        assert loaded[k].dtype == v.dtype, k
        assert loaded[k].shape == v.shape, k
        # torch.equal is False for NaN; bitwise comparison also tells -0.0 from 0.0.
        assert loaded[k].reshape(-1).view(torch.uint8).tolist() == v.reshape(-1).view(torch.uint8).tolist(), k
    assert temp_files(tmp_path) == []
    # No metadata given: an empty dict comes back.
    ckpt.save_tensors(path, {"x": torch.ones(2)})
    assert ckpt.load_tensors(path)[1] == {}


def _saved(tmp_path: Path) -> Path:
    path = tmp_path / "last.safetensors"
    ckpt.save_tensors(path, sample_tensors(), {"epoch": 3, "lr": 0.001})
    return path


@pytest.mark.parametrize("keep", [0, 4, 8, 60, 0.5, -1])
def test_truncated_file_is_refused_naming_the_path(tmp_path, keep):
    path = _saved(tmp_path)
    data = path.read_bytes()
    n = int(keep * len(data)) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    path.write_bytes(data[:n])
    with pytest.raises(CheckpointError, match=esc(path)):
        ckpt.load_tensors(path)


def test_tampered_tensor_byte_is_refused(tmp_path):
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")
    for pos in (header_end, (header_end + len(data)) // 2, len(data) - 1):
        tampered = bytearray(data)
        tampered[pos] ^= 0x01  # one bit of one tensor value
        path.write_bytes(bytes(tampered))
        with pytest.raises(CheckpointError, match=rf"{esc(path)}.*checksum"):
            ckpt.load_tensors(path)


def test_every_single_byte_flip_in_tensors_or_header_is_refused_or_harmless(tmp_path):
    """Flip each byte of a small checkpoint outside the `meta` JSON: the load must refuse it
    with CheckpointError (never another exception), or give back exactly what was saved."""
    path = tmp_path / "small.safetensors"
    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "s": torch.tensor(3.5), "i": torch.tensor(7)}
    ckpt.save_tensors(path, tensors, {"epoch": 3})
    data = path.read_bytes()
    meta_start = data.index(b'"meta"')
    meta_end = data.index(b'}"', meta_start) + 2
    flipped = bad = 0
    for pos in range(len(data)):
        if meta_start <= pos < meta_end:
            continue
        for bit in (0x01, 0x20):
            b = bytearray(data)
            b[pos] ^= bit
            path.write_bytes(bytes(b))
            flipped += 1
            try:
                got, meta = ckpt.load_tensors(path)
            except CheckpointError as e:
                assert str(path) in str(e)
                continue
            bad += not (meta == {"epoch": 3} and sorted(got) == sorted(tensors) and all(torch.equal(got[k], v) for k, v in tensors.items()))
    assert flipped > 500 and bad == 0


@pytest.mark.parametrize("meta", ["null", "[1]", "3", '"text"'])
def test_metadata_that_is_json_but_no_object_is_refused_by_its_checksum(tmp_path, meta):
    """A header whose meta string was edited into JSON of another kind: read_meta, which reads
    the header unverified, gives {} (its callers look names up in it), and the load names the
    file and its checksum."""
    path = _saved(tmp_path)
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    assert ckpt.read_meta(path) == {"epoch": 3, "lr": 0.001}
    header["__metadata__"]["meta"] = meta
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n
    path.write_bytes(data[:8] + text.ljust(n) + data[8 + n :])  # the same length, padded as safetensors allows
    assert ckpt.read_meta(path) == {}
    with pytest.raises(CheckpointError, match=rf"{esc(path)}.*checksum"):
        ckpt.load_tensors(path)


def test_tampered_metadata_is_refused(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    assert data.count(b"0.001") == 1
    path.write_bytes(data.replace(b"0.001", b"0.101"))  # lr 0.001 -> 0.101, same length
    with pytest.raises(CheckpointError, match=esc(path)):
        ckpt.load_tensors(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, this is not a checkpoint\n", bytes(range(256)) * 4, b"\xff" * 8 + b"{}"],
    ids=["empty", "text", "binary", "huge-header-length"],
)
def test_non_safetensors_file_is_refused(tmp_path, content):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=esc(path)):
        ckpt.load_tensors(path)


def test_torch_pickle_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "model.safetensors"
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match=esc(path)):
        ckpt.load_tensors(path)


def test_plain_safetensors_without_our_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(2, 3)}, str(path))
    with pytest.raises(CheckpointError, match=rf"{esc(path)}.*not a vaekit checkpoint"):
        ckpt.load_tensors(path)
    # Foreign metadata is no better.
    save_file({"w": torch.ones(2, 3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"{esc(path)}.*not a vaekit checkpoint"):
        ckpt.load_tensors(path)


def test_missing_file_is_refused_naming_the_path(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError, match=rf"{esc(path)}.*no such file"):
        ckpt.load_tensors(path)


# ---- run directories ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory):
    """A VAE fitted on a few epochs of digits and saved with VAE.save."""
    from sklearn.datasets import load_digits

    from vaekit import VAE

    x = (load_digits().data[:400] / 16.0).astype(np.float32)
    est = VAE(latent_dim=3, hidden=(16,), epochs=3, seed=0).fit(x)
    run_dir = est.save(tmp_path_factory.mktemp("run") / "saved")
    return est, run_dir, x


def test_load_run_gives_identical_outputs(fitted_run):
    est, run_dir, x = fitted_run
    assert sorted(p.name for p in run_dir.iterdir()) == [ckpt.CONFIG_FILE, ckpt.METRICS_FILE, ckpt.MODEL_FILE]
    config, model = ckpt.load_run(run_dir)
    assert config.to_dict() == est.config_.to_dict()
    assert model.training is False
    xt = torch.as_tensor(x[:50])
    with torch.no_grad():
        mu_a, mu_b = est.model_.posterior(xt).mean, model.posterior(xt).mean
        assert torch.equal(mu_a, mu_b)
        assert torch.equal(est.model_.posterior(xt).logvar, model.posterior(xt).logvar)
        assert torch.equal(est.model_.decode(mu_a).mean, model.decode(mu_b).mean)
    for seed in (0, 1):
        a = log_px_per_point(est.model_, x[:50], k=64, seed=seed)
        b = log_px_per_point(model, x[:50], k=64, seed=seed)
        np.testing.assert_array_equal(a, b)
    saved, _ = ckpt.load_tensors(run_dir / ckpt.MODEL_FILE)
    for k, v in est.model_.state_dict().items():
        assert torch.equal(saved[k], v), k


def test_weights_that_disagree_with_config_are_refused(fitted_run, tmp_path):
    _, run_dir, _ = fitted_run
    config = json.loads((run_dir / ckpt.CONFIG_FILE).read_text())
    for field, value in (("latent_dim", 4), ("hidden", [17])):
        bad = tmp_path / f"bad_{field}"
        bad.mkdir()
        # Weights without the record of their config (as older versions saved them): the
        # shapes still say when they cannot be this config's.
        ckpt.save_tensors(bad / ckpt.MODEL_FILE, ckpt.load_tensors(run_dir / ckpt.MODEL_FILE)[0])
        changed = json.loads(json.dumps(config))
        changed["model"][field] = value
        (bad / ckpt.CONFIG_FILE).write_text(json.dumps(changed))
        with pytest.raises(CheckpointError, match=rf"{esc(bad / ckpt.MODEL_FILE)}: tensor \S+ has shape \([\d, ]+\), config.json implies \([\d, ]+\)"):
            ckpt.load_run(bad)
    # A tensor missing from the file, or one the model does not have.
    state = dict(ckpt.load_tensors(run_dir / ckpt.MODEL_FILE)[0])
    for name, tensors, what in (
        ("missing", {k: v for k, v in state.items() if k != "decoder.0.bias"}, "missing"),
        ("extra", dict(state, **{"decoder.9.weight": torch.zeros(2)}), "unexpected"),
    ):
        d = tmp_path / name
        d.mkdir()
        (d / ckpt.CONFIG_FILE).write_text(json.dumps(config))
        ckpt.save_tensors(d / ckpt.MODEL_FILE, tensors)
        with pytest.raises(CheckpointError, match=rf"{esc(d / ckpt.MODEL_FILE)}.*{what}"):
            ckpt.load_run(d)


@pytest.mark.parametrize(
    "field, value",
    [("input_scale", [17.0]), ("likelihood", "bernoulli"), ("latent_dim", 4), ("logvar_max", 2.0), ("local_steps", 7)],
)
def test_a_config_changed_after_its_weights_were_saved_is_refused(fitted_run, tmp_path, field, value):
    """The weights keep the model section they were saved with: a config.json edited or damaged
    afterwards (a scale that would shift every density, a likelihood that reads the same
    weights as another model) is refused, naming the field, by load_run and VAE.from_run."""
    from vaekit import VAE

    _, run_dir, _ = fitted_run
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / ckpt.MODEL_FILE).write_bytes((run_dir / ckpt.MODEL_FILE).read_bytes())
    config = json.loads((run_dir / ckpt.CONFIG_FILE).read_text())
    saved = config["model"][field]
    config["model"][field] = value
    (bad / ckpt.CONFIG_FILE).write_text(json.dumps(config))
    message = rf"{esc(bad / ckpt.CONFIG_FILE)}: model.{field} is {re.escape(json.dumps(value))}, but model.safetensors was saved with {re.escape(json.dumps(saved))}"
    with pytest.raises(CheckpointError, match=message):
        ckpt.load_run(bad)
    with pytest.raises(CheckpointError, match=message):
        VAE.from_run(bad)
    # Put back, it loads; a field the saved record lacks (another version's) is not compared.
    config["model"][field] = saved
    config["model"]["a_later_option"] = 1
    (bad / ckpt.CONFIG_FILE).write_text(json.dumps(config))
    record = {k: v for k, v in config["model"].items() if k != "a_later_option"}
    assert ckpt.load_tensors(bad / ckpt.MODEL_FILE)[1]["model_config"] == record
    ckpt.check_model_record(bad / ckpt.CONFIG_FILE, bad / ckpt.MODEL_FILE, {"model_config": record})


def test_load_run_errors_name_the_directory(tmp_path):
    with pytest.raises(CheckpointError, match=rf"{esc(tmp_path / 'absent')}.*no such directory"):
        ckpt.load_run(tmp_path / "absent")
    with pytest.raises(CheckpointError, match=rf"{esc(tmp_path)}: not a run directory \(no config.json\)"):
        ckpt.load_run(tmp_path)
    (tmp_path / "config.json").mkdir()  # something there, but no file of settings
    with pytest.raises(CheckpointError, match=rf"{esc(tmp_path / 'config.json')}: not a file \(a folder, a broken link or a device\)"):
        ckpt.load_run(tmp_path)


def test_load_run_reads_the_model_part_of_last_safetensors(tmp_path):
    model = small_model(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    config = RunConfig(model=model.config, train=TrainConfig(), data=DataConfig())
    config.save(tmp_path / ckpt.CONFIG_FILE)
    ckpt.save_tensors(tmp_path / ckpt.LAST_FILE, *ckpt.training_state(model, [opt], {"epoch": 1}))
    _, loaded = ckpt.load_run(tmp_path, which=ckpt.LAST_FILE)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


# ---- training state ----------------------------------------------------------------------------


def _train_steps(model, opt, n: int, seed: int) -> None:
    from vaekit.objectives import elbo

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the ELBO's reparameterization noise comes from the global RNG
    for _ in range(n):
        x = torch.bernoulli(torch.full((8, model.config.input_dim), 0.3), generator=g)
        opt.zero_grad()
        (-elbo(model, x).elbo.mean()).backward()
        opt.step()


def test_training_state_round_trip_restores_adam_and_rng(tmp_path):
    model = small_model(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    _train_steps(model, opt, 3, seed=1)
    meta = {"epoch": 3, "best_valid": -4.5, "history": [{"epoch": 1}]}
    torch.manual_seed(99)
    torch.rand(5)  # move the stream somewhere arbitrary
    path = tmp_path / ckpt.LAST_FILE
    ckpt.save_tensors(path, *ckpt.training_state(model, [opt], meta))
    expected_rand = torch.rand(7)
    expected_state = {k: {kk: vv.clone() if torch.is_tensor(vv) else vv for kk, vv in st.items()} for k, st in opt.state_dict()["state"].items()}

    other = small_model(5)
    other_opt = torch.optim.Adam(other.parameters(), lr=1e-2, betas=(0.8, 0.95))
    torch.manual_seed(1234)
    got_meta = ckpt.restore_training_state(path, other, other_opt)  # one optimizer or a list
    assert torch.equal(torch.rand(7), expected_rand)
    assert {k: got_meta[k] for k in meta} == meta
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
    restored = other_opt.state_dict()
    assert restored["param_groups"][0]["lr"] == 1e-2
    assert tuple(restored["param_groups"][0]["betas"]) == (0.8, 0.95)
    assert sorted(restored["state"]) == sorted(expected_state)
    for pid, st in expected_state.items():
        assert sorted(restored["state"][pid]) == sorted(st)  # step, exp_avg, exp_avg_sq
        for key, value in st.items():
            assert torch.equal(restored["state"][pid][key], value), (pid, key)
    # The restored pair takes the same next steps as the original.
    _train_steps(model, opt, 2, seed=2)
    _train_steps(other, other_opt, 2, seed=2)
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)


def test_restore_into_a_different_model_is_refused(tmp_path):
    model = small_model(0)
    opt = torch.optim.Adam(model.parameters())
    _train_steps(model, opt, 1, seed=0)
    path = tmp_path / ckpt.LAST_FILE
    ckpt.save_tensors(path, *ckpt.training_state(model, [opt], {"epoch": 1}))
    wider = small_model(0, hidden=(7,))
    with pytest.raises(CheckpointError, match=esc(path)):
        ckpt.restore_training_state(path, wider, [torch.optim.Adam(wider.parameters())])
    same = small_model(0)
    with pytest.raises(CheckpointError, match=rf"{esc(path)}.*optimizer"):
        ckpt.restore_training_state(path, same, [torch.optim.Adam(same.parameters()), torch.optim.Adam(same.parameters())])


# ---- emptying a run directory for a new run -------------------------------------------------


def test_clear_run_empties_a_run_but_its_lock(tmp_path):
    from vaekit.lock import LOCK_FILE

    run = tmp_path / "run"
    ckpt.save_model(run, small_model(), RunConfig(model=small_model().config))
    (run / "samples.png").write_bytes(b"x")
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events").write_bytes(b"x")
    (run / LOCK_FILE).write_text("1\n")
    ckpt.clear_run(run)
    assert [p.name for p in run.iterdir()] == [LOCK_FILE]
    ckpt.clear_run(run)  # an empty directory, and none at all, are fine
    ckpt.clear_run(tmp_path / "absent")


def test_clear_run_refuses_what_is_no_run(tmp_path):
    (tmp_path / "a.txt").write_text("mine")
    with pytest.raises(CheckpointError, match=rf"^{esc(tmp_path)} does not look like a vaekit run \(no config.json; it holds a.txt\); not deleting it$"):
        ckpt.clear_run(tmp_path)
    (tmp_path / "config.json").write_text("[]")
    with pytest.raises(CheckpointError, match="does not look like a vaekit run .*config must be a JSON object"):
        ckpt.clear_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "config.json"]


def test_metrics_with_bytes_that_are_not_text_end_where_they_begin(tmp_path):
    """A damaged metrics.jsonl (bytes that are not UTF-8, lines that are no record) is read up
    to the damage with a warning; a last line cut by a kill is dropped quietly; the model
    itself loads as before."""
    import vaekit
    from vaekit.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--epochs", "3", "--hidden", "16", "--latent-dim", "2", "--eval-k", "2", "--quiet", "--out", str(run)]) == 0
    est, x = vaekit.load(run), np.random.default_rng(0).uniform(0, 16, size=(5, 64))
    records = ckpt.read_metrics(run)
    assert len(records) == 3
    lines = (run / ckpt.METRICS_FILE).read_bytes().splitlines(keepends=True)
    (run / ckpt.METRICS_FILE).write_bytes(b"".join(lines[:2]) + b"\x00\xff garbage\n" + lines[2])
    with pytest.warns(VaekitWarning, match=r"metrics.jsonl: line 3 is not an epoch's record \(damaged\); read the 2 before it"):
        assert ckpt.read_metrics(run) == records[:2]
    for damaged in (b"\x00\xff garbage\n", b"[1, 2]\n", b"garbage\n" + lines[0]):
        (run / ckpt.METRICS_FILE).write_bytes(damaged)
        with pytest.warns(VaekitWarning, match="line 1 is not an epoch's record"):
            assert ckpt.read_metrics(run) == []
    # A last line cut short by a kill (no newline after it) is dropped without a word.
    (run / ckpt.METRICS_FILE).write_bytes(b"".join(lines[:2]) + lines[2][:10])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ckpt.read_metrics(run) == records[:2]
        np.testing.assert_array_equal(vaekit.load(run).transform(x[:5]), est.transform(x[:5]))


def test_a_save_that_fails_halfway_leaves_the_saved_model_loadable(tmp_path, monkeypatch):
    """config.json and the weights are written together: a full disk while the second file is
    flushed changes neither (a new config beside the old weights would no longer load), leaves
    no temporary file, and is a CheckpointError naming the directory."""
    import errno

    import vaekit
    from vaekit import VAE, files
    from vaekit.errors import CheckpointError

    x = np.random.default_rng(0).uniform(size=(60, 5))
    a = VAE(latent_dim=2, hidden=(16,), epochs=1).fit(x)
    b = VAE(latent_dim=2, hidden=(48,), epochs=1).fit(x)
    run = a.save(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    flushed = []

    def fsync(fd):
        flushed.append(fd)
        if len(flushed) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", fsync)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(run))}: cannot save \(No space left on device\); what it held before is intact$"):
        b.save(run)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    np.testing.assert_array_equal(vaekit.load(run).transform(x[:5]), a.transform(x[:5]))
    b.save(run)
    np.testing.assert_array_equal(vaekit.load(run).transform(x[:5]), b.transform(x[:5]))


def test_the_same_checkpoint_is_the_same_bytes_in_every_process(tmp_path):
    """safetensors orders its header's metadata by a hash map that changes per process; vaekit
    writes it sorted, so equal weights and metadata give equal files (in this process and in
    another one), and the file still loads with its checksum."""
    import subprocess
    import sys

    code = (
        "import sys, torch; from vaekit.checkpoint import tensor_bytes; "
        "sys.stdout.buffer.write(tensor_bytes({'w': torch.arange(6.0).reshape(2, 3), 'b': torch.ones(3, dtype=torch.float64)}, {'epoch': 3, 'z': [1, 2]}))"
    )
    blobs = {subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout for _ in range(4)}
    assert len(blobs) == 1
    blob = blobs.pop()
    n = int.from_bytes(blob[:8], "little")
    assert n % 8 == 0 and list(json.loads(blob[8 : 8 + n])["__metadata__"]) == ["format", "meta", "sha256"]
    (tmp_path / "c.safetensors").write_bytes(blob)
    tensors, meta = ckpt.load_tensors(tmp_path / "c.safetensors")
    assert meta == {"epoch": 3, "z": [1, 2]} and torch.equal(tensors["w"], torch.arange(6.0).reshape(2, 3))


def test_a_weights_record_of_downward_conv_matches_a_config_of_mlp(tmp_path):
    """Resuming a run saved with --downward conv rewrites config.json with its present name
    (mlp); model.safetensors, kept from the best epoch, still says conv: the same model."""
    config = RunConfig(model=ModelConfig(input_dim=16, image_shape=(4, 4), latent_dim=(3, 2), net="conv", downward="mlp"))
    config.save(tmp_path / ckpt.CONFIG_FILE)
    record = {**json.loads(config.to_bytes())["model"], "downward": "conv"}
    ckpt.check_model_record(tmp_path / ckpt.CONFIG_FILE, tmp_path / ckpt.MODEL_FILE, {"model_config": record})
    with pytest.raises(CheckpointError, match="model.downward is \"mlp\", but model.safetensors was saved with \"gated\""):
        ckpt.check_model_record(tmp_path / ckpt.CONFIG_FILE, tmp_path / ckpt.MODEL_FILE, {"model_config": {**record, "downward": "gated"}})


def test_load_run_of_last_safetensors_of_an_averaged_run_reads_the_steps_own_weights(tmp_path):
    """last.safetensors of a run with --ema holds the weights' average beside the model
    (``average.*``): load_run of it gives the model part, the step's own weights, and passes
    over the average (and the optimizer and RNG state) instead of refusing the file."""
    model = small_model(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    average = WeightAverage(model, 0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the weights move away from their average
    average.update()
    config = RunConfig(model=model.config, train=TrainConfig(ema=0.9), data=DataConfig())
    config.save(tmp_path / ckpt.CONFIG_FILE)
    ckpt.save_tensors(tmp_path / ckpt.LAST_FILE, *ckpt.training_state(model, [opt], {"epoch": 1}, average))
    assert any(k.startswith("average.") for k in ckpt.load_tensors(tmp_path / ckpt.LAST_FILE)[0])
    _, loaded = ckpt.load_run(tmp_path, which=ckpt.LAST_FILE)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
