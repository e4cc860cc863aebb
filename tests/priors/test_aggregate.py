"""The aggregate prior p(z) = (1/M) Σ_m q(z | x_m) of an earlier run (the posterior as the new
prior). References are independent of the code under test: the earlier run's own q for the
drawn rows, torch.distributions' MixtureSameFamily for log p(z) and the KL, quadrature for
the normalisation; the CLI end to end: train, then train with --prior-from, resume bit for
bit, evaluate without the earlier run present."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

import vaekit
from cli_helpers import assert_resume_equals_straight, cli
from prior_helpers import assert_round_trip
from vaekit.checkpoint import load_run
from vaekit.distributions import DiagonalNormal

F64 = torch.float64
SMALL = ["--data", "digits", "--hidden", "16", "--eval-k", "2", "--batch-size", "256"]


def _first_run(root, dim: int):
    run = root / f"first{dim}"
    from vaekit.cli import main

    assert main(["train", *SMALL, "--latent-dim", str(dim), "--epochs", "2", "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """Earlier runs on the digits with 1- and 2-D latents, trained once for the module."""
    root = tmp_path_factory.mktemp("aggregate")
    return {dim: _first_run(root, dim) for dim in (1, 2)}


def _prior_model(run, components: int = 40, seed: int = 0, mixture: int | None = None):
    """A model with the aggregate prior of ``run`` (or, with ``mixture``, the mixture fitted to
    it), read as a fresh run would."""
    from vaekit.config import ModelConfig
    from vaekit.model import VAEModel

    config, _ = load_run(run)
    torch.manual_seed(seed)
    cfg = ModelConfig(input_dim=64, latent_dim=config.model.latent_dim, hidden=(8,), likelihood="continuous_bernoulli",
                      prior="aggregate", prior_from=str(run), prior_components=components, prior_mixture=mixture)  # fmt: skip
    model = VAEModel(cfg)
    model.prior.init_from_data(None, np.random.default_rng(seed))
    return model.to(F64)


def _reference(prior) -> MixtureSameFamily:
    return MixtureSameFamily(Categorical(logits=prior.logits), Independent(Normal(prior.mu, (0.5 * prior.logvar).exp()), 1))


def test_the_mixture_is_the_earlier_runs_q_of_its_training_rows(first):
    from vaekit.data import load_dataset
    from vaekit.scaling import model_rows

    model = _prior_model(first[2], components=40, seed=3)
    config, earlier = load_run(first[2])
    data = load_dataset(config.data)
    x = model_rows(config.model, data.train, data.scaling)  # pixels / 16, as the earlier model sees them
    rows = np.sort(np.random.default_rng(3).choice(len(x), size=40, replace=False))
    q = earlier.evaluation_posterior(torch.as_tensor(x[rows]))
    assert isinstance(q, DiagonalNormal)
    torch.testing.assert_close(model.prior.mu, q.mu.to(F64), rtol=0, atol=0)
    torch.testing.assert_close(model.prior.logvar, q.logvar.to(F64), rtol=0, atol=0)
    assert torch.equal(model.prior.logits, torch.zeros(40, dtype=F64))
    # Buffers, not parameters: the prior stays what the earlier data taught.
    assert not list(model.prior.parameters())


@pytest.mark.parametrize("mixture", [None, 6], ids=["aggregate", "fitted"])
@pytest.mark.parametrize("dim", [1, 2])
def test_log_density_normalises_and_matches_torch(first, dim, mixture):
    """∫ p(z) dz = 1 by a Riemann sum over |z| ≤ 12 (step 0.01 in 1-D, 0.03 in 2-D); the
    components' scales (σ ≥ 0.05 here) make that sum exact far below 1e-3."""
    model = _prior_model(first[dim], mixture=mixture)
    assert model.prior.mu.shape == (mixture or 40, dim)
    prior = model.top_prior()
    assert float((0.5 * model.prior.logvar).exp().min()) > 0.05
    n = 2401 if dim == 1 else 801
    t = torch.linspace(-12.0, 12.0, n, dtype=F64)
    h = 24.0 / (n - 1)
    z = t[:, None] if dim == 1 else torch.cartesian_prod(t, t)
    with torch.no_grad():
        log_p = prior.log_prob(z)
        mass = float(log_p.exp().sum() * h**dim)
        torch.testing.assert_close(log_p, _reference(model.prior).log_prob(z), rtol=1e-10, atol=1e-10)
    assert abs(mass - 1.0) < 1e-3, mass


def test_kl_estimate_matches_a_monte_carlo_reference(first):
    """model.kl (the ELBO's Monte Carlo KL) against log q − log p by torch's own Normal and
    MixtureSameFamily on independent draws; both means of S draws, so they agree within a
    few standard errors of their difference."""
    model = _prior_model(first[2])
    g = torch.Generator().manual_seed(0)
    q = DiagonalNormal(torch.randn(4, 2, generator=g, dtype=F64), torch.randn(4, 2, generator=g, dtype=F64) - 1.0)
    s = 20000
    with torch.no_grad():
        ours = model.kl(q, q.rsample((s,), generator=torch.Generator().manual_seed(1)))
        ref_q = Independent(Normal(q.mu, (0.5 * q.logvar).exp()), 1)
        z = ref_q.sample((s,))
        terms = ref_q.log_prob(z) - _reference(model.prior).log_prob(z)  # (S, 4)
    se = terms.std(0) / s**0.5
    assert ((ours - terms.mean(0)).abs() < 5 * 2**0.5 * se).all(), (ours, terms.mean(0), se)
    assert (terms.mean(0) > 0).all()


def test_round_trip_without_the_earlier_run(first, tmp_path):
    from sklearn.datasets import load_digits

    x = (load_digits().data[:300] / 16.0).astype(np.float32)
    copy = tmp_path / "earlier"
    shutil.copytree(first[2], copy)
    est = vaekit.VAE(latent_dim=2, hidden=(8,), epochs=1, prior="aggregate", prior_from=str(copy), prior_components=30).fit(x)
    shutil.rmtree(copy)  # the prior lives in the new run's weights
    assert_round_trip(est, tmp_path / "saved", ("logits", "mu", "logvar"), x[:5])


def test_cli_trains_resumes_and_evaluates_with_the_prior_from_an_earlier_run(first, tmp_path, capsys):
    earlier = tmp_path / "earlier"
    shutil.copytree(first[2], earlier)
    common = [*SMALL, "--latent-dim", "2", "--prior", "aggregate", "--prior-from", earlier, "--prior-components", "50"]
    tensors = assert_resume_equals_straight(tmp_path, [str(a) for a in common])
    assert tensors["model.prior.mu"].shape == (50, 2) and tensors["model.prior.mu"].abs().sum() > 0
    shutil.rmtree(earlier)
    code, out, err = cli(capsys, "evaluate", tmp_path / "straight", "--k", "5", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert np.isfinite(result["log_likelihood"]) and result["n"] == 359
    saved = json.loads((tmp_path / "straight" / "config.json").read_text())["model"]
    assert saved["prior"] == "aggregate" and saved["prior_components"] == 50


def test_cli_refuses_a_latent_size_mismatch_and_a_missing_source(first, tmp_path, capsys):
    code, out, err = cli(capsys, "train", *SMALL, "--latent-dim", "3", "--epochs", "1", "--out", tmp_path / "r",
                         "--prior", "aggregate", "--prior-from", first[2])  # fmt: skip
    assert code != 0 and out == "" and len(err.splitlines()) == 1, err
    assert "latent size is 2" in err and "has 3" in err and "Traceback" not in err
    code, out, err = cli(capsys, "train", *SMALL, "--epochs", "1", "--out", tmp_path / "s", "--prior", "aggregate")
    assert code != 0 and len(err.splitlines()) == 1 and "--prior aggregate needs --prior-from" in err, err
    # A run of two latent groups has no one q(z|x) to aggregate, whatever this model's size.
    two = tmp_path / "two"
    two.mkdir()
    config = json.loads((first[2] / "config.json").read_text())
    config["model"].update(latent_dim=[2, 1], inference="topdown")
    (two / "config.json").write_text(json.dumps(config))
    for size in ("1", "2", "3"):
        code, out, err = cli(capsys, "train", *SMALL, "--latent-dim", size, "--epochs", "1", "--out", tmp_path / "t",
                             "--prior", "aggregate", "--prior-from", two)  # fmt: skip
        assert code != 0 and err.strip() == f"vaekit: error: {two} (the run the aggregate prior is read from): that run has 2 latent " \
            "groups (2,1); the aggregate posterior is read from a run with one", err
    # Option names in a library message become the flags the user typed.
    code, out, err = cli(capsys, "train", *SMALL, "--epochs", "1", "--out", tmp_path / "u", "--prior", "aggregate", "--prior-from", first[2],
                         "--prior-components", "10", "--prior-mixture", "20")  # fmt: skip
    assert err.strip() == ("vaekit: error: --prior-mixture must be at most --prior-components, the posteriors it is fitted to: got 20 "
                           "components for 10"), err


def test_overwrite_refuses_a_prior_run_inside_the_run_directory(first, tmp_path, capsys):
    """--overwrite empties --out before training reads --prior-from: a prior run there (the run
    itself, or one below it) would be gone. Refused before anything is touched."""
    run = tmp_path / "run"
    shutil.copytree(first[2], run)
    shutil.copytree(first[2], run / "earlier")
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    for source in (run, run / "earlier"):
        code, out, err = cli(capsys, "train", *SMALL, "--latent-dim", "2", "--epochs", "1", "--out", run, "--overwrite",
                             "--prior", "aggregate", "--prior-from", source)  # fmt: skip
        assert code == 2 and out == "" and len(err.splitlines()) == 1, err
        assert f"--prior-from {source} lies inside --out {run}" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before


def test_fewer_rows_than_components_give_the_full_aggregate(first):
    """N ≤ M: every training row is one component of weight 1/N, the spare ones weigh 0."""
    from vaekit.data import load_dataset
    from vaekit.scaling import model_rows

    config, earlier = load_run(first[1])
    data = load_dataset(config.data)
    x = model_rows(config.model, data.train, data.scaling)  # pixels / 16, as the earlier model sees them
    n = len(x)
    model = _prior_model(first[1], components=n + 7)
    q = earlier.evaluation_posterior(torch.as_tensor(x))
    prior = model.prior
    torch.testing.assert_close(prior.mu[:n], q.mu.to(F64), rtol=0, atol=0)
    assert torch.equal(prior.logits[:n], torch.zeros(n, dtype=F64)) and torch.isneginf(prior.logits[n:]).all()
    z = torch.linspace(-4, 4, 9, dtype=F64)[:, None].requires_grad_(True)
    log_p = model.top_prior().log_prob(z)
    full = MixtureSameFamily(Categorical(logits=torch.zeros(n, dtype=F64)),
                             Independent(Normal(q.mu.to(F64), (0.5 * q.logvar.to(F64)).exp()), 1))  # fmt: skip
    torch.testing.assert_close(log_p, full.log_prob(z), rtol=1e-10, atol=1e-10)
    (grad,) = torch.autograd.grad(log_p.sum(), z)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("dim", [1, 2])
def test_the_fitted_mixture_is_close_to_the_aggregate_it_was_fitted_to(first, dim):
    """An aggregate with structure (40 posteriors in three clusters) and the 6-component mixture
    fitted to it: KL(aggregate || fitted), by Monte Carlo on fresh draws of the aggregate with
    torch's MixtureSameFamily for both densities, is a tenth of a nat at most, under a tenth
    of the moment-matched Gaussian's (what a 1-component fit gives); weights sum to 1."""
    prior = _prior_model(first[dim], mixture=6).prior
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]], dtype=F64)[:, :dim]
    mu = centres[torch.arange(40) % 3] + 0.5 * torch.randn(40, dim, generator=g, dtype=F64)
    q = DiagonalNormal(mu, torch.full((40, dim), 2 * np.log(0.3), dtype=F64))
    prior._fit_mixture(q, np.random.default_rng(0))
    aggregate = MixtureSameFamily(Categorical(logits=torch.zeros(40, dtype=F64)), Independent(Normal(mu, 0.3), 1))
    assert abs(float(prior.logits.exp().sum()) - 1.0) < 1e-6  # float32 buffers
    z = aggregate.sample((50000,))
    gaussian = Independent(Normal(aggregate.mean, aggregate.variance.sqrt()), 1)
    kl_fit = float((aggregate.log_prob(z) - _reference(prior).log_prob(z)).mean())
    kl_gaussian = float((aggregate.log_prob(z) - gaussian.log_prob(z)).mean())
    # Observed: 0.002 against 0.43 (1-D), 0.097 against 1.50 (2-D).
    assert -0.01 < kl_fit < 0.15 and kl_gaussian > 10 * kl_fit, (kl_fit, kl_gaussian)


def test_cli_trains_and_resumes_with_a_fitted_mixture(first, tmp_path):
    earlier = tmp_path / "earlier"
    shutil.copytree(first[2], earlier)
    common = [*SMALL, "--latent-dim", "2", "--prior", "aggregate", "--prior-from", earlier, "--prior-mixture", "4"]
    tensors = assert_resume_equals_straight(tmp_path, [str(a) for a in common])
    assert tensors["model.prior.mu"].shape == (4, 2)
    torch.testing.assert_close(tensors["model.prior.logits"].exp().sum().double(), torch.tensor(1.0, dtype=F64))


def test_prior_from_is_kept_absolute_and_repeated_as_any_path_on_resume(first, tmp_path, capsys, monkeypatch):
    shutil.copytree(first[2], tmp_path / "earlier")
    monkeypatch.chdir(tmp_path)
    common = [*SMALL, "--latent-dim", "2", "--prior", "aggregate", "--prior-components", "20", "--quiet"]
    code, _, err = cli(capsys, "train", *common, "--epochs", "1", "--prior-from", "earlier", "--out", "run")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["prior_from"] == str(tmp_path / "earlier")
    for epochs, given in ((2, "./earlier"), (3, str(tmp_path / "earlier"))):
        code, _, err = cli(capsys, "train", "--out", "run", "--resume", "--epochs", str(epochs), "--prior-from", given, "--quiet")
        assert code == 0, err
    code, _, err = cli(capsys, "train", "--out", "run", "--resume", "--epochs", "4", "--prior-from", "run", "--quiet")
    assert code == 2 and "--prior-from cannot change when resuming" in err, err


def test_the_estimator_keeps_prior_from_absolute_and_takes_a_path(first, tmp_path, monkeypatch):
    """prior_from given relative (or as a Path) is kept absolute, as vaekit train keeps it: a
    clone of the loaded model refits from another working directory. get_params keeps the
    value as given (scikit-learn's clone checks it)."""
    from pathlib import Path

    from sklearn.base import clone
    from sklearn.datasets import load_digits

    x = (load_digits().data[:300] / 16.0).astype(np.float32)
    shutil.copytree(first[2], tmp_path / "earlier")
    monkeypatch.chdir(tmp_path)
    kw = dict(latent_dim=2, hidden=(8,), epochs=1, prior="aggregate", prior_components=30)
    est = vaekit.VAE(**kw, prior_from="earlier").fit(x)
    assert est.get_params()["prior_from"] == "earlier"
    assert est.config_.model.prior_from == str(tmp_path / "earlier")
    est.save(tmp_path / "saved")
    monkeypatch.chdir(tmp_path / "saved")  # "earlier" is not here: the absolute path finds it
    refit = clone(vaekit.load(tmp_path / "saved")).fit(x)
    assert refit.config_.model.prior_from == str(tmp_path / "earlier")
    by_path = vaekit.VAE(**kw, prior_from=Path("..") / "earlier").fit(x)
    assert by_path.config_.model.prior_from == str(tmp_path / "earlier")
    np.testing.assert_array_equal(by_path.transform(x[:5]), est.transform(x[:5]))


@pytest.fixture(scope="module")
def refined_run(tmp_path_factory):
    from vaekit.cli import main

    run = tmp_path_factory.mktemp("aggregate_refined") / "first"
    assert main(["train", *SMALL, "--latent-dim", "2", "--epochs", "2", "--refine-steps", "5", "--out", str(run)]) == 0
    return run


def test_the_components_are_the_earlier_runs_refined_q(refined_run):
    """An earlier run with --refine-steps: its q(z|x) of a row is the refined one, and the
    mixture's components are those, not the bare encoder's."""
    from vaekit.data import load_dataset
    from vaekit.scaling import model_rows

    model = _prior_model(refined_run, components=30, seed=2)
    config, earlier = load_run(refined_run)
    data = load_dataset(config.data)
    x = model_rows(config.model, data.train, data.scaling)
    rows = np.sort(np.random.default_rng(2).choice(len(x), size=30, replace=False))
    q = earlier.evaluation_posterior(torch.as_tensor(x[rows]))
    bare = earlier.posterior(torch.as_tensor(x[rows]))
    assert not torch.allclose(q.mu, bare.mu)  # the refinement moved them, so the test can tell the two apart
    torch.testing.assert_close(model.prior.mu, q.mu.to(F64), rtol=0, atol=0)
    torch.testing.assert_close(model.prior.logvar, q.logvar.to(F64), rtol=0, atol=0)
