"""The VampPrior p(z) = (1/K) Σ_k q(z | u_k) (Tomczak & Welling 2018).

References are independent of the code under test: with a linear encoder, (μ_k, log σ_k²) =
W u_k + b is computed by hand from the layer's weights and the mixture is torch.distributions'
own (Independent Normals, log-mean-exp over k); gradients against autograd through that
reference and against float64 finite differences. Persistence and resume are checked bit for
bit; the data start against the training rows themselves; both maps from parameters to
pseudo-inputs (clamp and sigmoid) by the same references; the CLI through exit codes and one
stderr line. Random tests fix their seed and justify the tolerance.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal

import vaekit
from vaekit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from vaekit.errors import ConfigError, VaekitWarning
from vaekit.model import VAEModel
from vaekit.objectives.elbo import elbo
from vaekit.train import fit
from cli_helpers import assert_train_refused, cli as _cli
from config_helpers import as_version
from prior_helpers import assert_round_trip

F64 = torch.float64
# float64 log-densities of a few O(1..100) terms: 1e-10 is far above rounding, far below any wrong term.
TIGHT = dict(rtol=1e-10, atol=1e-10)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _linear_model(k: int = 4, d: int = 2, input_dim: int = 5, pseudo_map: str = "clamp") -> VAEModel:
    """A VampPrior model with a linear encoder (hidden=()), so that q(z|u) can be written by hand,
    and parameters spread over [0, 1] with a few coordinates outside it (clamped when encoded,
    under clamp)."""
    torch.manual_seed(0)
    cfg = ModelConfig(input_dim=input_dim, latent_dim=d, hidden=(), likelihood="gaussian", prior="vampprior",
                      pseudo_inputs=k, pseudo_map=pseudo_map)  # fmt: skip
    model = VAEModel(cfg).to(F64)
    with torch.no_grad():
        u = torch.rand(k, input_dim, generator=_gen(1), dtype=F64)
        u[0, 0], u[-1, 2] = -0.7, 1.6  # outside the data range [0, 1]
        model.prior.pseudo_inputs.copy_(u)
    return model


def _mapped(w: torch.Tensor, pseudo_map: str, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """The pseudo-inputs in data space, written out: clamp(w, lo, hi) or lo + (hi − lo)/(1 + e^(−w))."""
    if pseudo_map == "clamp":
        return torch.where(w < lo, lo, torch.where(w > hi, hi, w))
    return lo + (hi - lo) / (1 + torch.exp(-w))


def _encoder_linear(model) -> nn.Linear:
    layers = [m for m in model.inference.encoder.modules() if isinstance(m, nn.Linear)]
    assert len(layers) == 1
    return layers[0]


def _reference_log_pz(z, w, weight, bias, pseudo_map="clamp"):
    """log (1/K) Σ_k N(z; μ_k, diag σ_k²) with (μ_k, log σ_k²) = W u_k + b, u_k = map(w_k) in
    [0, 1], torch's Normal."""
    out = _mapped(w, pseudo_map) @ weight.T + bias  # (K, 2d)
    mu, logvar = out.chunk(2, -1)
    comp = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)  # batch (K,), event (d,)
    log_p = comp.log_prob(z.unsqueeze(-2))  # (..., K)
    return torch.logsumexp(log_p, -1) - math.log(w.shape[0])


def test_parameters_and_default_start():
    """The pseudo-inputs are one (K, D) parameter; the random start is the paper's N(0.05, 0.01²)
    per pixel: with K·D = 500·64 = 32,000 draws the sample mean lies within 5 standard errors
    (5·0.01/√32000 ≈ 2.8e-4) of 0.05 and the sample sd within 5% of 0.01 (its standard error is
    ~0.4%)."""
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=64, latent_dim=3, prior="vampprior"))
    prior = model.prior
    assert {n for n, _ in prior.named_parameters()} == {"pseudo_inputs"}
    assert prior.pseudo_inputs.shape == (500, 64)
    u = prior.pseudo_inputs.detach().double()
    assert abs(float(u.mean()) - 0.05) < 5 * 0.01 / math.sqrt(u.numel())
    assert abs(float(u.std()) - 0.01) < 0.05 * 0.01
    assert ModelConfig(input_dim=4, prior="vampprior").pseudo_init == "random"
    assert ModelConfig(input_dim=4, prior="vampprior").pseudo_map == "clamp"


def test_sigmoid_start_is_the_papers_logits():
    """Under pseudo_map="sigmoid" the parameters are logits from N(−0.05, 0.01²) (same tolerances
    as above), the pseudo-inputs σ(w) ≈ 0.4875 each; a fresh run's data range [−2, 6] leaves the
    logits alone and moves the inputs to −2 + 8σ(w)."""
    torch.manual_seed(0)
    prior = VAEModel(ModelConfig(input_dim=64, latent_dim=3, prior="vampprior", pseudo_map="sigmoid")).prior
    w = prior.pseudo_inputs.detach().double()
    assert abs(float(w.mean()) + 0.05) < 5 * 0.01 / math.sqrt(w.numel())
    assert abs(float(w.std()) - 0.01) < 0.05 * 0.01
    torch.testing.assert_close(prior.inputs(), _mapped(prior.pseudo_inputs, "sigmoid"), rtol=1e-6, atol=1e-7)
    assert abs(float(prior.inputs().detach().mean()) - 1 / (1 + math.exp(0.05))) < 1e-3
    before = prior.pseudo_inputs.detach().clone()
    prior.init_from_data(np.linspace(-2.0, 6.0, 640, dtype=np.float32).reshape(10, 64), np.random.default_rng(0))
    assert torch.equal(prior.pseudo_inputs.detach(), before)
    torch.testing.assert_close(prior.inputs(), _mapped(before, "sigmoid", -2.0, 6.0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pseudo_map", ["clamp", "sigmoid"])
@pytest.mark.parametrize("k, d", [(1, 1), (4, 2), (7, 3)])
def test_log_pz_matches_torch_mixture_of_encoder_posteriors(k, d, pseudo_map):
    model = _linear_model(k, d, pseudo_map=pseudo_map)
    lin = _encoder_linear(model)
    w = model.prior.pseudo_inputs.detach()
    z = 2.0 * torch.randn(6, 3, d, generator=_gen(2), dtype=F64)  # (S, n, d)
    far = torch.full((2, d), 30.0, dtype=F64) * torch.tensor([[1.0], [-1.0]], dtype=F64)
    with torch.no_grad():
        p = model.top_prior()
        want = _reference_log_pz(z, w, lin.weight, lin.bias, pseudo_map)
        assert p.batch_shape == () and p.event_shape == (d,) and p.components == k
        torch.testing.assert_close(p.log_prob(z), want, **TIGHT)
        torch.testing.assert_close(model.log_pz(z), want, **TIGHT)
        # Far in the tails a naive Σ exp underflows; the log-sum-exp stays finite and exact.
        torch.testing.assert_close(model.log_pz(far), _reference_log_pz(far, w, lin.weight, lin.bias, pseudo_map), rtol=1e-10, atol=0)
        assert model.sample_z(10, generator=_gen(3)).shape == (10, d)


def test_gradients_reach_pseudo_inputs_and_encoder():
    """∇ of −log p(z) (fixed z) in the pseudo-inputs and the encoder's weights against autograd
    through the hand-written reference; and against float64 finite differences (gradcheck) as a
    function of the pseudo-inputs (kept inside (0, 1), where the clamp is the identity)."""
    model = _linear_model(k=3, d=2)
    lin = _encoder_linear(model)
    with torch.no_grad():
        model.prior.pseudo_inputs.clamp_(0.05, 0.95)
    _assert_gradients_match_reference(model, lin, "clamp")


def test_sigmoid_gradients_reach_every_coordinate():
    """Under sigmoid the same checks hold with the parameters left outside [0, 1] (logits), and
    there, where clamp's gradient is exactly zero, the sigmoid's is not."""
    model = _linear_model(k=3, d=2, pseudo_map="sigmoid")
    _assert_gradients_match_reference(model, _encoder_linear(model), "sigmoid")
    z = torch.randn(4, 2, generator=_gen(4), dtype=F64)
    outside = (0, 0), (2, 2)  # the coordinates _linear_model set to −0.7 and 1.6
    (sig,) = torch.autograd.grad(-model.log_pz(z).sum(), [model.prior.pseudo_inputs])
    clamped = _linear_model(k=3, d=2)
    (clamp,) = torch.autograd.grad(-clamped.log_pz(z).sum(), [clamped.prior.pseudo_inputs])
    for i in outside:
        assert clamp[i] == 0 and sig[i].abs() > 1e-6, (i, clamp[i], sig[i])


def _assert_gradients_match_reference(model, lin, pseudo_map):
    z = torch.randn(4, 2, generator=_gen(4), dtype=F64)
    params = [model.prior.pseudo_inputs, lin.weight, lin.bias]
    grads = torch.autograd.grad(-model.log_pz(z).sum(), params)
    ref = [p.detach().clone().requires_grad_() for p in params]
    expected = torch.autograd.grad(-_reference_log_pz(z, *ref, pseudo_map).sum(), ref)
    for name, got, want in zip(["pseudo_inputs", "weight", "bias"], grads, expected):
        assert want.abs().max() > 1e-6, name  # the reference itself is not zero
        torch.testing.assert_close(got, want, **TIGHT, msg=name)

    u0 = model.prior.pseudo_inputs.detach().clone().requires_grad_()
    # The prior module itself, called with u in place of its parameter (differentiable in u).
    log_pz_of = lambda u: torch.func.functional_call(model.prior, {"pseudo_inputs": u}, (model,)).log_prob(z)  # noqa: E731
    assert torch.autograd.gradcheck(log_pz_of, (u0,))


def test_elbo_gradient_in_the_pseudo_inputs_is_the_prior_term():
    """The pseudo-inputs enter the ELBO only through log p(z) (a Monte Carlo KL: no closed form),
    so d(−ELBO)/du = −mean_n mean_s ∇_u log p(z_sn) at the same draws, by the reference."""
    model = _linear_model(k=3, d=2)
    lin = _encoder_linear(model)
    x = torch.randn(5, 5, generator=_gen(5), dtype=F64)
    eps = torch.randn(4, 5, model.noise_size, generator=_gen(6), dtype=F64)  # (S, n, noise)
    (got,) = torch.autograd.grad(-elbo(model, x, eps=eps).elbo.mean(), [model.prior.pseudo_inputs])
    with torch.no_grad():
        z = model.posterior(x).reparameterize(eps)  # (S, n, d)
    u = model.prior.pseudo_inputs.detach().clone().requires_grad_()
    (want,) = torch.autograd.grad(-_reference_log_pz(z, u, lin.weight.detach(), lin.bias.detach()).mean(), [u])
    assert want.abs().max() > 1e-6
    torch.testing.assert_close(got, want, **TIGHT)


# -- the start from data, training, persistence, resume ------------------------------------------


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16.0).astype(np.float32)
    return x[np.random.default_rng(0).permutation(len(x))]


def _model(**kw) -> VAEModel:
    torch.manual_seed(0)
    return VAEModel(ModelConfig(input_dim=64, latent_dim=2, hidden=(16,), likelihood="continuous_bernoulli", prior="vampprior", **kw))


def _row_indices(u: np.ndarray, x: np.ndarray, atol: float = 0.0) -> np.ndarray:
    """For each row of u, the index of the row of x it equals (within atol), or -1."""
    dist = np.abs(u[:, None, :] - x[None, :, :]).max(-1)  # (K, N)
    return np.where(dist.min(1) <= atol, dist.argmin(1), -1)


def test_init_from_data_picks_training_rows_seeded(digits):
    x = digits[:300]
    picks = []
    for seed in (1, 1, 2):
        model = _model(pseudo_inputs=12, pseudo_init="data")
        model.prior.init_from_data(x, np.random.default_rng(seed))
        u = model.prior.pseudo_inputs.detach().numpy()
        rows = _row_indices(u, x)
        assert (rows >= 0).all() and len(set(rows.tolist())) == 12, rows  # 12 distinct training rows
        torch.testing.assert_close(model.prior.data_range, torch.tensor([float(x.min()), float(x.max())]), rtol=0, atol=0)
        picks.append(rows)
    assert np.array_equal(picks[0], picks[1]) and not np.array_equal(picks[0], picks[2])
    # More pseudo-inputs than rows: every row is one, the other 7 copies of rows, which the
    # warning says stay copies (equal inputs of the mixture get equal gradients).
    model = _model(pseudo_inputs=12, pseudo_init="data")
    with pytest.warns(VaekitWarning, match=r"^pseudo_init data: 12 pseudo-inputs from 5 training rows: 7 start as copies of other rows and stay copies; ask for at most 5"):
        model.prior.init_from_data(x[:5], np.random.default_rng(0))
    rows = _row_indices(model.prior.pseudo_inputs.detach().numpy(), x[:5])
    assert (rows >= 0).all() and set(rows.tolist()) == set(range(5))


def test_random_start_moves_to_the_data_range():
    """lo + (hi − lo)·N(0.05, 0.01²) for data in [lo, hi] = [−2, 6]: mean −2 + 8·0.05 = −1.6,
    sd 0.08; with 32,000 draws, 5 standard errors of the mean are 0.0023."""
    model = _model(pseudo_inputs=500)
    x = np.linspace(-2.0, 6.0, 64 * 10, dtype=np.float32).reshape(10, 64)
    model.prior.init_from_data(x, np.random.default_rng(0))
    u = model.prior.pseudo_inputs.detach().double()
    assert abs(float(u.mean()) + 1.6) < 5 * 0.08 / math.sqrt(u.numel())
    assert abs(float(u.std()) - 0.08) < 0.05 * 0.08
    torch.testing.assert_close(model.prior.data_range, torch.tensor([-2.0, 6.0]), rtol=0, atol=0)


def _run(digits, epochs, run_dir=None, resume=False, **model_kw):
    torch.manual_seed(0)
    config = RunConfig(
        model=ModelConfig(input_dim=64, latent_dim=2, hidden=(16,), likelihood="continuous_bernoulli", prior="vampprior", **model_kw),
        train=TrainConfig(epochs=epochs, batch_size=100, lr=3e-3, seed=3),
        data=DataConfig(source="array", test_fraction=0.0),
    )
    model = VAEModel(config.model)
    history = fit(model, digits[:400], digits[400:500], config.train, run_dir, config, resume=resume)
    return model, history


def test_fit_starts_from_training_rows_with_the_run_seed(digits):
    """A fresh fit with pseudo_init="data" starts from training rows: with lr = 1e-9, 4 Adam steps
    move a value by at most ~4e-9, so every pseudo-input is within 1e-6 of a training row (the
    float32 grey levels are multiples of 1/16 apart). The rows depend on the run's seed only."""
    x_train = digits[:400]
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        config = TrainConfig(epochs=1, batch_size=100, lr=1e-9, seed=3)
        model = VAEModel(ModelConfig(input_dim=64, latent_dim=2, hidden=(16,), likelihood="continuous_bernoulli",
                                     prior="vampprior", pseudo_inputs=8, pseudo_init="data"))  # fmt: skip
        fit(model, x_train, digits[400:500], config)
        models.append(model)
    rows = _row_indices(models[0].prior.pseudo_inputs.detach().numpy(), x_train, atol=1e-6)
    assert (rows >= 0).all() and len(set(rows.tolist())) == 8, rows
    assert torch.equal(models[0].prior.pseudo_inputs, models[1].prior.pseudo_inputs)


def test_sigmoid_data_start_is_the_rows_logits(digits):
    """pseudo_init="data" under sigmoid: σ(w) gives back the chosen training rows (the same rows
    as under clamp, for the same generator), every grey level exactly to float32 rounding and
    the 0s and 1s of the range kept 1e-3 inside it; on data in [−2, 6], −2 + 8·(the same)."""
    x = digits[:300]
    for scale in (1.0, 8.0):
        xs = (x * scale - 2.0 * (scale > 1)).astype(np.float32)
        lo, hi = float(xs.min()), float(xs.max())
        models = {m: _model(pseudo_inputs=12, pseudo_init="data", pseudo_map=m) for m in ("clamp", "sigmoid")}
        for model in models.values():
            model.prior.init_from_data(xs, np.random.default_rng(4))
        rows = models["clamp"].prior.pseudo_inputs.detach().double()
        margin = 1e-3 * (hi - lo)
        want = rows.clamp(lo + margin, hi - margin)
        got = models["sigmoid"].prior.inputs().detach().double()
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6 * (hi - lo))
        assert (rows == lo).any() and (rows == hi).any()  # both ends of the range are exercised


@pytest.mark.parametrize("init, pseudo_map", [("data", "clamp"), ("random", "clamp"), ("data", "sigmoid"), ("random", "sigmoid")])
def test_resume_is_bit_identical_including_pseudo_inputs(digits, tmp_path, init, pseudo_map):
    """2 epochs straight vs 1 epoch + resume: every tensor of the state (pseudo-inputs and data
    range included) equal bit for bit; a resume that re-ran the data start would reset the
    pseudo-inputs to the chosen rows and fail this."""
    kw = dict(pseudo_inputs=6, pseudo_init=init, pseudo_map=pseudo_map)
    with torch.random.fork_rng():
        straight, _ = _run(digits, 2, tmp_path / "a", **kw)
        first, _ = _run(digits, 1, tmp_path / "b", **kw)
        after_one = first.prior.pseudo_inputs.detach().clone()
        resumed, _ = _run(digits, 2, tmp_path / "b", resume=True, **kw)
    a, b = straight.state_dict(), resumed.state_dict()
    assert {"prior.pseudo_inputs", "prior.data_range"} <= set(a)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert not torch.equal(resumed.prior.pseudo_inputs.detach(), after_one)  # epoch 2 trained them


def test_vampprior_vae_trains_saves_and_loads(digits, tmp_path):
    """Digits /16, K = 20: the validation ELBO rises over 4 epochs and every pseudo-input moved;
    save/load restores the pseudo-inputs and data range bit for bit, and with them log p(z),
    samples and the importance-weighted log p(x)."""
    est = vaekit.VAE(prior="vampprior", pseudo_inputs=20, latent_dim=2, hidden=(32,), epochs=4, lr=3e-3, seed=0)
    torch.manual_seed(0)
    init = VAEModel(ModelConfig(input_dim=64, latent_dim=2, hidden=(32,), likelihood="continuous_bernoulli", prior="vampprior", pseudo_inputs=20))
    est.fit(digits[:1000])
    prior = est.model_.prior
    assert est.config_.model.prior == "vampprior" and est.config_.model.pseudo_inputs == 20
    assert prior.pseudo_inputs.shape == (20, 64)
    assert (prior.pseudo_inputs.detach() != init.prior.pseudo_inputs.detach()).any(1).all()
    history = [h["valid_elbo"] for h in est.history_]
    assert len(history) == 4 and all(map(math.isfinite, history)) and history[-1] > history[0], history

    loaded = assert_round_trip(est, tmp_path / "m", ("pseudo_inputs", "data_range"), digits[1000:1050])
    assert loaded.config_.model.pseudo_inputs == 20 and loaded.config_.model.pseudo_init == "random"


def test_sigmoid_vampprior_trains_saves_and_loads(digits, tmp_path):
    """The same under pseudo_map="sigmoid": the ELBO rises, the logits move, and a saved run
    restores them and the map; runs saved before the option existed load as clamp."""
    est = vaekit.VAE(prior="vampprior", pseudo_inputs=20, pseudo_map="sigmoid", latent_dim=2, hidden=(32,), epochs=4, lr=3e-3, seed=0)
    torch.manual_seed(0)
    init = VAEModel(ModelConfig(input_dim=64, latent_dim=2, hidden=(32,), likelihood="continuous_bernoulli",
                                prior="vampprior", pseudo_inputs=20, pseudo_map="sigmoid"))  # fmt: skip
    est.fit(digits[:1000])
    history = [h["valid_elbo"] for h in est.history_]
    assert all(map(math.isfinite, history)) and history[-1] > history[0], history
    assert (est.model_.prior.pseudo_inputs.detach() != init.prior.pseudo_inputs.detach()).all()  # every logit moved
    loaded = assert_round_trip(est, tmp_path / "m", ("pseudo_inputs", "data_range"), digits[1000:1050])
    assert loaded.config_.model.pseudo_map == "sigmoid" and loaded.model_.prior.map == "sigmoid"
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["model"]["pseudo_map"]
    as_version(config, 5)  # written before pseudo_map existed: the map those runs had
    assert RunConfig.from_dict(config).model.pseudo_map == "clamp"


# -- evaluation builds the prior once ------------------------------------------------------------


def _counting_prior_calls(model) -> list[int]:
    calls = [0]
    model.prior.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_fixed_prior_builds_once_without_gradient_and_nests():
    model = _linear_model(k=4, d=2)
    calls = _counting_prior_calls(model)
    z = torch.randn(3, 2, generator=_gen(6), dtype=F64, requires_grad=True)
    outside = model.log_pz(z)
    assert calls[0] == 1 and outside.requires_grad
    with model.fixed_prior() as p:
        assert calls[0] == 2
        with model.fixed_prior() as inner:
            assert inner is p
        inside = model.log_pz(z)
        assert model.top_prior() is p and calls[0] == 2
        assert not p.mu.requires_grad and not p.logvar.requires_grad
        # z still carries a gradient (q*'s optimisation inside evaluation needs it), the
        # pseudo-inputs none.
        (grad_z,) = torch.autograd.grad(inside.sum(), z)
        torch.testing.assert_close(grad_z, torch.autograd.grad(outside.sum(), z)[0], **TIGHT)
    torch.testing.assert_close(inside, outside, **TIGHT)
    # Gone after the block, also when it ends in an error.
    with pytest.raises(RuntimeError, match="stop"), model.fixed_prior():
        raise RuntimeError("stop")
    assert model.log_pz(z).requires_grad and calls[0] == 4


def test_importance_weighted_evaluation_encodes_the_pseudo_inputs_once():
    """log_px_per_point builds the prior once per call; and the K = 40 estimate in chunks of 3
    samples (block 3·7·8: the 4 components' float64 terms, 8 elements a row, are wider than
    D = 5) is the same, to float64 rounding, with the prior built once as rebuilt for each of
    its 14 chunks."""
    from vaekit.evaluate import _generator, log_px_per_point
    from vaekit.objectives.iwae import iwae

    model = _linear_model(k=4, d=2)
    x = torch.rand(7, 5, generator=_gen(8), dtype=F64)
    calls = _counting_prior_calls(model)
    log_px_per_point(model, x.numpy(), k=40, seed=3)
    assert calls[0] == 1
    model.eval()
    with torch.no_grad():
        with model.fixed_prior():
            once = iwae(model, x, 40, generator=_generator(model, 3), block=3 * 7 * 8)
        assert calls[0] == 2
        rebuilt = iwae(model, x, 40, generator=_generator(model, 3), block=3 * 7 * 8)
        assert calls[0] == 2 + 14
    torch.testing.assert_close(once, rebuilt, rtol=1e-12, atol=1e-12)


# -- config and CLI ------------------------------------------------------------------------------


def test_config_refusals():
    with pytest.raises(ConfigError, match="pseudo_inputs applies to prior vampprior only"):
        ModelConfig(input_dim=4, prior="standard_normal", pseudo_inputs=3)
    with pytest.raises(ConfigError, match="pseudo_inputs must be an integer >= 1, got 0"):
        ModelConfig(input_dim=4, prior="vampprior", pseudo_inputs=0)
    with pytest.raises(ConfigError, match="pseudo_init must be one of random, data, got 'rows'"):
        ModelConfig(input_dim=4, prior="vampprior", pseudo_init="rows")
    with pytest.raises(ConfigError, match="pseudo_map must be one of clamp, sigmoid, got 'tanh'"):
        ModelConfig(input_dim=4, prior="vampprior", pseudo_map="tanh")
    with pytest.raises(ConfigError, match="pseudo_map applies to prior vampprior only"):
        ModelConfig(input_dim=4, pseudo_map="sigmoid")
    for inference in ("vi", "map", "autoencoder"):
        with pytest.raises(ConfigError, match=f"prior vampprior needs an encoder.*inference '{inference}'"):
            ModelConfig(input_dim=4, prior="vampprior", inference=inference, n_points=10)
    with pytest.raises(ConfigError, match=r"prior vampprior on latent_dim \(4, 2\) \(2 layers\) needs q\(z_L\|x\) of x alone; "
                       r"inference 'amortized' draws the top layer from the ones below \(use inference topdown or ladder\)"):
        ModelConfig(input_dim=4, prior="vampprior", latent_dim=(4, 2))
    for inference in ("topdown", "ladder"):
        assert ModelConfig(input_dim=4, prior="vampprior", latent_dim=(4, 2), inference=inference).prior == "vampprior"


def test_cli_trains_a_vampprior(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = _cli(capsys, "train", "--data", "digits", "--prior", "vampprior", "--pseudo-inputs", "10",
                        "--epochs", "2", "--eval-k", "5", "--out", out)  # fmt: skip
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["prior"] == "vampprior" and config["model"]["pseudo_inputs"] == 10
    assert vaekit.load(out).model_.prior.pseudo_inputs.shape == (10, 64)


@pytest.mark.parametrize(
    "argv, culprits",
    [
        (["--prior", "vampprior", "--pseudo-inputs", "0"], ["--pseudo-inputs", "must be an integer >= 1", "0"]),
        (["--prior", "vampprior", "--pseudo-map", "tanh"], ["--pseudo-map", "clamp, sigmoid", "tanh"]),
        (["--pseudo-map", "sigmoid"], ["--pseudo-map", "vampprior"]),
        (["--prior", "vampprior", "--inference", "vi"], ["vampprior", "encoder", "'vi'"]),
        (["--prior", "vampprior", "--latent-dim", "4,2"], ["vampprior", "(4, 2)", "topdown or ladder"]),
    ],
)
def test_cli_bad_vampprior(argv, culprits, tmp_path, capsys):
    assert_train_refused(capsys, tmp_path, argv, culprits)


def test_data_range_covers_rows_beyond_the_first_block():
    """The training data's range is read in blocks of 65 536 rows: extremes in a later block
    set it too."""
    model = VAEModel(ModelConfig(input_dim=3, latent_dim=2, hidden=(4,), prior="vampprior", pseudo_inputs=4))
    x = np.full((70000, 3), 0.5, dtype=np.float32)
    x[0, 0], x[69999, 1], x[65536, 2] = 0.25, -3.0, 7.0
    model.prior.init_from_data(x, np.random.default_rng(0))
    torch.testing.assert_close(model.prior.data_range, torch.tensor([-3.0, 7.0]), rtol=0, atol=0)
