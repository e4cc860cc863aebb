"""Common tests over every registry entry, parametrized from the registries themselves
(scikit-learn's estimator_checks idea): a new prior, likelihood, network, objective or
inference method is tested here without editing this file.

Each entry is put into an otherwise default small model on 8x8 images and checked for shapes,
finite gradients, a training run that resumes bit for bit, a save/load round trip, and, for
densities, normalisation by numerical integration or enumeration.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.distributions import constraints

from vaekit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from vaekit.errors import ConfigError
from vaekit.model import VAEModel
from vaekit.registry import INFERENCE, LIKELIHOODS, NETS, OBJECTIVES, PRIORS

F64 = torch.float64
N_TRAIN, N_VALID = 240, 60


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16.0).astype(np.float32)
    return x[:N_TRAIN], x[N_TRAIN : N_TRAIN + N_VALID]


def _data_for(likelihood: str, x: np.ndarray) -> np.ndarray:
    """The grey levels, or their binarization where the likelihood does not take them."""
    model = VAEModel(ModelConfig(input_dim=x.shape[1], likelihood=likelihood, hidden=(4,)))
    return x if model.likelihood.supported(x).all() else (x > 0.5).astype(np.float32)


def _config(**kw) -> ModelConfig:
    kw.setdefault("likelihood", "continuous_bernoulli")
    if INFERENCE.get(kw.get("inference", "amortized")).per_point:
        kw.setdefault("n_points", N_TRAIN)
    kw.setdefault("latent_dim", 3)
    return ModelConfig(input_dim=64, image_shape=(8, 8), hidden=(16,), **kw)


CASES = (
    [("prior", name, {"prior": name}) for name in PRIORS.names()]
    + [("likelihood", name, {"likelihood": name}) for name in LIKELIHOODS.names()]
    + [("net", name, {"net": name}) for name in NETS.names()]
    + [("inference", name, {"inference": name}) for name in INFERENCE.names()]
    # Every inference method also over a two-layer hierarchy (q over z1, z2; p(z2) p(z1|z2)).
    + [("inference", name, {"inference": name, "latent_dim": (3, 2)}) for name in INFERENCE.names()]
    + [("objective", name, {}) for name in OBJECTIVES.names()]
)


def _train_config(kind, name, **kw) -> TrainConfig:
    return TrainConfig(objective=name if kind == "objective" else "auto", batch_size=64, lr=3e-3, **kw)


def _usable(kind, name, model_kw) -> bool:
    """Entries that cannot serve the default model are left out by their own check: objectives
    that cannot train it (none today), priors that need a source it lacks (``aggregate`` needs
    an earlier run; tests/priors/test_aggregate.py covers it)."""
    if kind != "objective":
        try:
            _config(**model_kw)
        except ConfigError:
            return False
        return True
    torch.manual_seed(0)
    try:
        OBJECTIVES.get(name).check_inference(INFERENCE.get(_config(**model_kw).inference))
    except ConfigError:
        return False
    return True


def _ids(case):
    layers = case[2].get("latent_dim")
    return f"{case[0]}-{case[1]}" + ("" if layers is None else "-" + "x".join(map(str, layers)))


@pytest.mark.parametrize("case", [c for c in CASES if _usable(*c)], ids=_ids)
def test_entry_trains_resumes_bit_for_bit_and_round_trips(case, digits, tmp_path):
    from vaekit.checkpoint import load_run
    from vaekit.train import fit

    kind, name, model_kw = case
    x_train, x_valid = digits
    x_train, x_valid = _data_for(_config(**model_kw).likelihood, x_train), _data_for(_config(**model_kw).likelihood, x_valid)

    def run(epochs, run_dir, resume=False):
        torch.manual_seed(0)
        config = RunConfig(model=_config(**model_kw), train=_train_config(kind, name, epochs=epochs),
                           data=DataConfig(source="array", test_fraction=0.0))  # fmt: skip
        model = VAEModel(config.model)
        history = fit(model, x_train, x_valid, config.train, run_dir, config, resume=resume)
        return model, history

    with torch.random.fork_rng():
        straight, history = run(3, tmp_path / "a")
        run(2, tmp_path / "b")
        resumed, _ = run(3, tmp_path / "b", resume=True)
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["valid_score"]) for r in history)
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs"

    _, loaded = load_run(tmp_path / "a")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in straight.state_dict().items())
    x = torch.as_tensor(x_valid[:5])
    with torch.no_grad():
        torch.testing.assert_close(loaded.posterior(x).mean, straight.posterior(x).mean, rtol=0, atol=0)


@pytest.mark.parametrize("case", [c for c in CASES if _usable(*c)], ids=_ids)
def test_entry_gives_shapes_and_finite_gradients(case):
    kind, name, model_kw = case
    torch.manual_seed(0)
    model = VAEModel(_config(**model_kw)).to(F64)
    objective = OBJECTIVES.get(name if kind == "objective" else model.inference.default_objective)(
        _train_config(kind, name)
    )
    x = torch.rand(5, 64, dtype=F64, generator=torch.Generator().manual_seed(1))
    if model.config.likelihood == "bernoulli":
        x = (x > 0.5).to(F64)
    idx = torch.arange(5) if model.inference.per_point else None
    eps = torch.randn(objective.samples, 5, model.noise_size, dtype=F64)
    loss, value = model(objective, x, idx, eps)
    assert loss.shape == () and value.shape == (5,) and torch.isfinite(value).all()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g.to_dense() if g.is_sparse else g).all() for g in grads)
    # The decoder always learns; so does every network the method owns.
    assert all(p.grad is not None for p in model.decoder.parameters())
    q = model.posterior(x, idx)
    z = q.rsample((2,))
    assert z.shape == (2, 5, model.latent_size)
    assert model.decode(z).log_prob(x).shape == (2, 5)
    assert model.log_pz(z).shape == (2, 5)
    assert model.sample(4).shape == (4, 64)


def _grid(lo, hi, n):
    t = torch.linspace(lo, hi, n, dtype=F64)
    return t, (hi - lo) / (n - 1)


@pytest.mark.parametrize("name", [name for name in PRIORS.names() if _usable("prior", name, {"prior": name})])
@pytest.mark.parametrize("dim", [1, 2])
def test_prior_normalises(name, dim):
    """∫ p(z) dz = 1 by the trapezoid-free Riemann sum on a grid wide enough for every prior's
    mass (|z| ≤ 12); the grid step (0.02 in 1-D, 0.06 in 2-D) bounds the error far below 1e-3
    for densities as smooth as these."""
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=4, latent_dim=dim, hidden=(3,), prior=name)).to(F64)
    with torch.no_grad():
        p = model.top_prior()
        t, h = _grid(-12.0, 12.0, 1201 if dim == 1 else 401)
        z = t[:, None] if dim == 1 else torch.cartesian_prod(t, t)
        mass = torch.exp(p.log_prob(z)).sum() * h**dim
    assert abs(float(mass) - 1.0) < 1e-3


@pytest.mark.parametrize("name", LIKELIHOODS.names())
def test_likelihood_normalises(name):
    """Σ_x p(x|z) = 1 over {0, 1}^3 for discrete likelihoods, ∫ p(x|z) dx = 1 on a fine grid
    over the support for continuous ones (2 features), for random decoder outputs."""
    torch.manual_seed(0)
    dim = 3 if name == "bernoulli" else 2
    model = VAEModel(ModelConfig(input_dim=dim, latent_dim=2, hidden=(4,), likelihood=name)).to(F64)
    with torch.no_grad():
        px = model.decode(torch.randn(4, 2, dtype=F64))  # batch of 4 decoder outputs
        support = px.support
        base = getattr(support, "base_constraint", support)
        if base is constraints.boolean:
            xs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=dim)), dtype=F64)
            h = 1.0
        else:
            lo, hi = (0.0, 1.0) if base is constraints.unit_interval else (-30.0, 30.0)
            t, h = _grid(lo, hi, 1501)
            xs = torch.cartesian_prod(t, t)
            h = h**dim
        mass = torch.exp(px.log_prob(xs[:, None, :])).sum(0) * h  # (4,)
    tol = 1e-6 if base is constraints.boolean else 5e-3
    torch.testing.assert_close(mass, torch.ones(4, dtype=F64), atol=tol, rtol=0)


@pytest.mark.parametrize("name", NETS.names())
def test_net_shapes_on_any_leading_dims(name):
    torch.manual_seed(0)
    config = _config(net=name)
    enc, dec = NETS.get(name).encoder(config, 6), NETS.get(name).decoder(config, 3)
    for lead in ((5,), (2, 5)):
        assert enc(torch.rand(*lead, 64)).shape == (*lead, 6)
        assert dec(torch.randn(*lead, 3)).shape == (*lead, 64)


@pytest.fixture
def outside_prior():
    """A prior registered from a user's module (not vaekit.priors), removed afterwards."""
    from vaekit.distributions import StandardNormal
    from vaekit.priors import Prior

    class UserPrior(Prior):
        def forward(self, model=None):
            return StandardNormal(self.size)

    UserPrior.__module__ = "user_script"
    PRIORS.register("user_prior")(UserPrior)
    try:
        yield UserPrior
    finally:
        PRIORS._entries.pop("user_prior", None)
        PRIORS._outside.pop("user_prior", None)


def test_an_entry_registered_from_user_code_is_a_choice(outside_prior, tmp_path):
    from vaekit.estimator import VAE, load

    assert "user_prior" in PRIORS and "user_prior" in PRIORS.names() and PRIORS.options("user_prior") == {}
    model = VAEModel(ModelConfig(input_dim=6, latent_dim=2, hidden=(4,), prior="user_prior"))
    assert isinstance(model.prior, outside_prior)
    x = np.random.default_rng(0).integers(0, 2, (40, 6)).astype(np.float32)
    est = VAE(latent_dim=2, hidden=(4,), epochs=1, prior="user_prior").fit(x)
    est.save(tmp_path / "run")
    np.testing.assert_array_equal(load(tmp_path / "run").score_samples(x[:3]), est.score_samples(x[:3]))


def test_user_registration_refuses_taken_names_and_options(outside_prior):
    from vaekit.priors import Prior
    from vaekit.registry import Option

    other = type("Other", (Prior,), {"__module__": "user_script"})
    with pytest.raises(ConfigError, match="prior 'standard_normal' is vaekit's own; register Other under another name"):
        PRIORS.register("standard_normal")(other)
    with pytest.raises(ConfigError, match="prior 'user_prior' is registered already"):
        PRIORS.register("user_prior")(other)
    with pytest.raises(ConfigError, match="options are declared only by entries in vaekit's vaekit.priors folder"):
        PRIORS.register("another", options={"width": Option(1, "a width")})(other)
    assert "another" not in PRIORS and PRIORS.get("standard_normal").__module__ == "vaekit.priors.standard_normal"
