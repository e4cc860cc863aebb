"""Adam on normalized gradients (optim.NormalizedAdam, ``--normalized-grad``), checked against
the update written out by hand, and through training and --resume."""

from __future__ import annotations

import math

import pytest
import torch

from vaekit.optim import Adam, NormalizedAdam

F64 = torch.float64


def _reference(params, grads_per_step, lr, betas=(0.9, 0.999), eps=1e-8, normalize=True, weight_decay=0.0):
    """The block-normalized Adam update, by hand: g ← g/(‖g‖ + 1e-7) per tensor (unless not
    ``normalize``), then Adam's bias-corrected moments (Kingma & Ba 2015, Algorithm 1), after
    the decoupled decay p ← p − lr·weight_decay·p (Loshchilov & Hutter 2019, Algorithm 2)."""
    params = [p.clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            g = g / (g.norm() + 1e-7) if normalize else g
            m[i] = betas[0] * m[i] + (1 - betas[0]) * g
            v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
            m_hat, v_hat = m[i] / (1 - betas[0] ** t), v[i] / (1 - betas[1] ** t)
            params[i] = params[i] * (1 - lr * weight_decay) - lr * m_hat / (v_hat.sqrt() + eps)
    return params


def _drive(opt_cls, params, grads_per_step, **kw):
    params = [p.clone().requires_grad_(True) for p in params]
    opt = opt_cls(params, **kw)
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params], opt


@pytest.mark.parametrize("fused", [True, False])
def test_normalized_adam_is_adam_on_unit_norm_gradients(fused):
    """Gradients whose scale jumps by 10^4 between steps: NormalizedAdam follows the hand-written
    update to float64 rounding, and plain Adam does not (the big step dominates its moments)."""
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(5, 3, generator=g, dtype=F64), torch.randn(7, generator=g, dtype=F64)]
    scales = [1.0, 1e4, 1e-3, 1.0, 50.0]
    grads = [[s * torch.randn(p.shape, generator=g, dtype=F64) for p in params] for s in scales]
    ours, _ = _drive(NormalizedAdam, params, grads, lr=0.01, fused=fused)
    for a, b in zip(ours, _reference(params, grads, lr=0.01)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    plain, _ = _drive(Adam, params, grads, lr=0.01, fused=fused)
    assert max(float((a - b).abs().max()) for a, b in zip(plain, ours)) > 1e-3


def test_normalized_adam_leaves_zero_gradients_at_rest_and_shares_adams_state():
    """A tensor whose gradient is exactly zero does not move (no 0/0), and the optimizer state
    is Adam's: a state dict of either loads into the other."""
    p = [torch.ones(4, dtype=F64), torch.ones(2, dtype=F64)]
    grads = [[torch.zeros(4, dtype=F64), torch.tensor([3.0, 4.0], dtype=F64)]] * 2
    (a, b), opt = _drive(NormalizedAdam, p, grads, lr=0.1)
    assert torch.equal(a, p[0]) and torch.isfinite(b).all() and not torch.equal(b, p[1])
    plain = Adam([torch.ones(4, dtype=F64, requires_grad=True), torch.ones(2, dtype=F64, requires_grad=True)], lr=0.1)
    plain.load_state_dict(opt.state_dict())  # no KeyError: the same state keys
    assert torch.equal(plain.state_dict()["state"][1]["exp_avg"], opt.state_dict()["state"][1]["exp_avg"])


def test_normalized_adam_with_a_closure_normalizes_the_closures_gradient():
    p = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)
    opt = NormalizedAdam([p], lr=0.5)

    def closure():
        opt.zero_grad()
        loss = 1e6 * (p**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert math.isclose(float(loss), 5e6)
    # One Adam step on a normalized gradient moves each entry by lr against its sign.
    torch.testing.assert_close(p.detach(), torch.tensor([0.5, -1.5], dtype=F64), rtol=0, atol=1e-6)


def test_normalized_grad_trains_records_and_resumes_bit_for_bit(tmp_path):
    """``--normalized-grad`` reaches the optimizer, is saved in config.json, and a run stopped
    and resumed ends with the straight run's bits; it trains to other weights than plain Adam."""
    import json

    from cli_helpers import assert_resume_equals_straight

    from vaekit.checkpoint import load_tensors
    from vaekit.cli import main

    common = ["--data", "digits", "--latent-dim", "3", "--hidden", "16", "--eval-k", "5", "--seed", "2", "--lr", "1e-2"]
    a = assert_resume_equals_straight(tmp_path, [*common, "--normalized-grad"])
    assert json.loads((tmp_path / "straight" / "config.json").read_text())["train"]["normalized_grad"] is True
    assert main(["train", *common, "--epochs", "3", "--out", str(tmp_path / "plain")]) == 0
    b, _ = load_tensors(tmp_path / "plain" / "last.safetensors")
    assert not torch.equal(a["model.decoder.0.weight"], b["model.decoder.0.weight"])


@pytest.mark.parametrize("normalized", [False, True])
def test_adam_eps_reaches_the_update(normalized):
    """``adam_eps`` is the ε of p ← p − lr·m̂/(√v̂ + ε): with gradients of size ~1e-4 the
    denominator is dominated by ε = 1e-4 (Burda et al.'s) and not by torch's 1e-8, and the
    trajectory is the hand-written one's at that ε."""
    from vaekit.model import VAEModel
    from vaekit.config import ModelConfig
    from vaekit.train import make_optimizers

    model = VAEModel(ModelConfig(input_dim=4, latent_dim=2, hidden=(3,))).to(F64)
    (opt,) = make_optimizers(model, lr=0.01, normalized_grad=normalized, eps=1e-4)
    assert isinstance(opt, NormalizedAdam if normalized else Adam)
    assert all(group["eps"] == 1e-4 for group in opt.param_groups)
    g = torch.Generator().manual_seed(3)
    params = [torch.randn(6, generator=g, dtype=F64)]
    grads = [[1e-4 * torch.randn(6, generator=g, dtype=F64)] for _ in range(4)]
    ours, _ = _drive(Adam, params, grads, lr=0.01, eps=1e-4)
    steps = [(a - p) for a, p in zip(ours, params)]
    by_hand = _reference(params, grads, lr=0.01, eps=1e-4, normalize=False)
    torch.testing.assert_close(ours[0], by_hand[0], rtol=1e-12, atol=1e-15)
    default, _ = _drive(Adam, params, grads, lr=0.01)
    assert float(steps[0].abs().max()) < 0.8 * float((default[0] - params[0]).abs().max())


def test_adam_eps_is_saved_checked_and_fixed_on_resume(tmp_path, capsys):
    import json

    from cli_helpers import cli

    import vaekit

    common = ["--data", "digits", "--latent-dim", "2", "--hidden", "8", "--eval-k", "5", "--epochs", "1"]
    code, _, err = cli(capsys, "train", *common, "--adam-eps", "1e-4", "--out", tmp_path / "run")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["adam_eps"] == 1e-4
    assert vaekit.load(tmp_path / "run").get_params()["adam_eps"] == 1e-4
    code, _, err = cli(capsys, "train", "--out", tmp_path / "run", "--resume", "--epochs", "2", "--adam-eps", "1e-3")
    assert code != 0 and err.count("\n") == 1
    assert err.strip().endswith(f"--adam-eps cannot change when resuming; the run in {tmp_path / 'run'} has adam_eps=0.0001")
    for bad in ("0", "-1e-4", "nan"):
        code, _, err = cli(capsys, "train", *common, "--adam-eps", bad, "--out", tmp_path / "bad")
        assert code != 0 and err.count("\n") == 1 and "--adam-eps" in err, (bad, err)
        assert not (tmp_path / "bad").exists()
    from vaekit.errors import ConfigError

    with pytest.raises(ConfigError, match="adam_eps"):
        vaekit.VAE(adam_eps=0.0, epochs=1).fit(torch.rand(20, 3).numpy())


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("normalized", [False, True])
def test_weight_decay_is_decoupled(normalized, fused):
    """``weight_decay`` is AdamW's: the optimizer of the shared weights follows the hand-written
    p ← p(1 − lr·λ) − lr·m̂/(√v̂ + ε) on gradients of jumping scale (and, on plain gradients,
    torch.optim.AdamW, an independent reference); a weight whose gradient is zero decays by
    (1 − lr·λ) per step; per-point tables get none."""
    from vaekit.config import ModelConfig
    from vaekit.model import VAEModel
    from vaekit.train import make_optimizers

    lr, wd = 0.01, 0.3
    model = VAEModel(ModelConfig(input_dim=4, latent_dim=2, hidden=(3,))).to(F64)
    (opt,) = make_optimizers(model, lr=lr, normalized_grad=normalized, weight_decay=wd)
    assert all(g["weight_decay"] == wd and g["decoupled_weight_decay"] for g in opt.param_groups)
    (plain,) = make_optimizers(model, lr=lr, normalized_grad=normalized)
    assert all(g["weight_decay"] == 0 for g in plain.param_groups)
    kind = NormalizedAdam if normalized else Adam
    g = torch.Generator().manual_seed(5)
    params = [torch.randn(5, 3, generator=g, dtype=F64), torch.randn(7, generator=g, dtype=F64)]
    grads = [[s * torch.randn(p.shape, generator=g, dtype=F64) for p in params] for s in (1.0, 1e3, 1e-2, 1.0)]
    ours, _ = _drive(kind, params, grads, lr=lr, weight_decay=wd, decoupled_weight_decay=True, fused=fused)
    for a, b in zip(ours, _reference(params, grads, lr=lr, normalize=normalized, weight_decay=wd)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    if not normalized:
        adamw, _ = _drive(torch.optim.AdamW, params, grads, lr=lr, weight_decay=wd)
        for a, b in zip(ours, adamw):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    still, _ = _drive(kind, params, [[torch.zeros_like(p) for p in params]] * 3, lr=lr, weight_decay=wd, decoupled_weight_decay=True)
    for a, p in zip(still, params):
        torch.testing.assert_close(a, p * (1 - lr * wd) ** 3, rtol=1e-14, atol=0)
    pointwise = VAEModel(ModelConfig(input_dim=4, latent_dim=2, hidden=(3,), inference="vi", n_points=10))
    shared, tables = make_optimizers(pointwise, lr=lr, weight_decay=wd)
    assert shared.param_groups[0]["weight_decay"] == wd and "weight_decay" not in tables.defaults


def test_weight_decay_is_saved_checked_fixed_on_resume_and_resumes_bit_for_bit(tmp_path, capsys):
    """``--weight-decay`` reaches config.json and the estimator, a run stopped and resumed ends
    with the straight run's bits and other weights than without it, a resume cannot change it,
    and a bad value (negative, not finite, lr·λ >= 1) is one line that writes nothing."""
    import json

    from cli_helpers import assert_resume_equals_straight, cli

    import vaekit
    from vaekit.checkpoint import load_tensors
    from vaekit.cli import main
    from vaekit.errors import ConfigError

    common = ["--data", "digits", "--latent-dim", "3", "--hidden", "16", "--eval-k", "5", "--seed", "2", "--lr", "1e-2"]
    a = assert_resume_equals_straight(tmp_path, [*common, "--weight-decay", "0.5"])
    assert json.loads((tmp_path / "straight" / "config.json").read_text())["train"]["weight_decay"] == 0.5
    assert vaekit.load(tmp_path / "straight").get_params()["weight_decay"] == 0.5
    assert main(["train", *common, "--epochs", "3", "--out", str(tmp_path / "plain")]) == 0
    b, _ = load_tensors(tmp_path / "plain" / "last.safetensors")
    # Decay pulls the weights towards zero: the decayed run's are smaller overall.
    norm = lambda t: sum(float(v.norm() ** 2) for k, v in t.items() if k.startswith("model.") and v.is_floating_point())  # noqa: E731
    assert norm(a) < norm(b)
    capsys.readouterr()
    code, _, err = cli(capsys, "train", "--out", tmp_path / "straight", "--resume", "--epochs", "4", "--weight-decay", "0.1")
    assert code != 0 and err.count("\n") == 1
    assert err.strip().endswith(f"--weight-decay cannot change when resuming; the run in {tmp_path / 'straight'} has weight_decay=0.5")
    for bad, says in (("-0.1", "must be >= 0"), ("nan", "finite"), ("inf", "finite"), ("100", "must be below 1/lr = 100")):
        code, _, err = cli(capsys, "train", *common, "--epochs", "1", "--weight-decay", bad, "--out", tmp_path / "bad")
        assert code != 0 and err.count("\n") == 1 and "--weight-decay" in err and says in err, (bad, err)
        assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match="weight_decay"):
        vaekit.VAE(weight_decay=-1.0, epochs=1).fit(torch.rand(20, 3).numpy())


# ---- the weights' exponential moving average (optim.WeightAverage, --ema) --------------------


def _averaged(decay: float, values: list[float]):
    """A WeightAverage of a one-parameter model driven through ``values`` (the weight after each
    step), and the model."""
    from vaekit.optim import WeightAverage

    class One(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([values[0]], dtype=F64))

            class NoTables:
                def local_parameters(self):
                    return []

            self.inference = NoTables()

    model = One()
    average = WeightAverage(model, decay)
    for v in values[1:]:
        with torch.no_grad():
            model.w.fill_(v)
        average.update()
    return average, model


def test_weight_average_of_a_ramp_lags_by_the_closed_form():
    """An exponential average with constant decay d of a ramp θ_t = t lags it by d/(1 − d) in
    the steady state (the geometric series Σ_s (1 − d) d^s s); the start-up rates
    (1 + t)/(10 + t) only shorten the transient. d = 0.5 lags by 1, d = 0.9 by 9."""
    for decay, lag in ((0.5, 1.0), (0.9, 9.0)):
        average, _ = _averaged(decay, [float(t) for t in range(400)])
        assert average.updates == 399
        assert average.average[0].item() == pytest.approx(399 - lag, abs=1e-9)


def test_weight_average_starts_with_a_short_memory_and_is_an_affine_average():
    """d_t = min(decay, (1 + t)/(10 + t)): the first update keeps 1/10 of the start (d_0 = 0.1),
    the average of a constant is that constant (the weights sum to 1), and it never leaves the
    range of the values averaged."""
    average, _ = _averaged(0.999, [0.0, 1.0])
    assert average.average[0].item() == pytest.approx(0.9, abs=1e-15)
    assert average.rate() == pytest.approx(2 / 11)
    average, _ = _averaged(0.999, [3.25] * 50)
    assert average.average[0].item() == 3.25
    g = torch.Generator().manual_seed(0)
    values = torch.rand(200, generator=g, dtype=F64).tolist()
    average, _ = _averaged(0.95, values)
    assert min(values) <= average.average[0].item() <= max(values)
    # By hand: θ̄ ← d θ̄ + (1 − d) θ with the same rates.
    expected = values[0]
    for t, v in enumerate(values[1:]):
        d = min(0.95, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * v
    assert average.average[0].item() == pytest.approx(expected, rel=1e-12)


def test_weight_average_applied_swaps_in_and_back_out_even_on_error():
    average, model = _averaged(0.5, [0.0, 4.0, 8.0])
    own, avg = model.w.item(), average.average[0].item()
    assert own == 8.0 and avg != own
    version = model.w._version
    with average.applied():
        assert model.w.item() == avg
        # A change in place that version counters see, as an optimizer's step is: what caches
        # keyed on the weights' versions (latents.Structured's draws) must not reuse.
        assert model.w._version > version
    assert model.w.item() == own
    with pytest.raises(KeyError):
        with average.applied():
            raise KeyError("inside")
    assert model.w.item() == own and model.w.requires_grad


def test_weight_average_leaves_per_point_tables_out_and_refuses_what_does_not_fit():
    from vaekit.config import ModelConfig
    from vaekit.model import VAEModel
    from vaekit.optim import WeightAverage

    model = VAEModel(ModelConfig(input_dim=4, latent_dim=2, hidden=(3,), inference="vi", n_points=5))
    average = WeightAverage(model, 0.9)
    tables = {id(p) for p in model.inference.local_parameters()}
    assert tables and not tables & {id(p) for p in average.params}
    assert len(average.params) == len(list(model.parameters())) - len(tables)
    state = average.state()
    name = average.names[0]
    with pytest.raises(ValueError, match=f"no average of {name}"):
        average.load({k: v for k, v in state.items() if k != name}, 3)
    with pytest.raises(ValueError, match="the weight"):
        average.load({**state, name: state[name].double()}, 3)
    with pytest.raises(ValueError, match="update count"):
        average.load(state, -1)
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="decay"):
            WeightAverage(model, bad)


def test_ema_trains_resumes_bit_for_bit_and_is_checked(tmp_path, capsys):
    """``--ema`` is saved in config.json, its average travels in last.safetensors (resume ends
    on the straight run's bits), it cannot change on resume, and bad decays are one-line
    errors that leave nothing behind."""
    import json

    from cli_helpers import assert_resume_equals_straight, cli

    common = ["--data", "digits", "--latent-dim", "3", "--hidden", "16", "--eval-k", "5", "--seed", "2", "--lr", "1e-2"]
    a = assert_resume_equals_straight(tmp_path, [*common, "--ema", "0.9"])
    averaged = {k for k in a if k.startswith("average.")}
    assert averaged and {"average." + k.removeprefix("model.") for k in a if k.startswith("model.")} >= averaged
    assert not torch.equal(a["average.decoder.0.weight"], a["model.decoder.0.weight"])
    assert json.loads((tmp_path / "straight" / "config.json").read_text())["train"]["ema"] == 0.9
    code, _, err = cli(capsys, "train", "--out", tmp_path / "straight", "--resume", "--epochs", "4", "--ema", "0.99")
    assert code != 0 and err.count("\n") == 1
    assert err.strip().endswith(f"--ema cannot change when resuming; the run in {tmp_path / 'straight'} has ema=0.9")
    for bad in ("1", "1.5", "-0.1", "nan"):
        code, _, err = cli(capsys, "train", *common, "--epochs", "1", "--ema", bad, "--out", tmp_path / "bad")
        assert code != 0 and err.count("\n") == 1 and "--ema" in err, (bad, err)
        assert not (tmp_path / "bad").exists()


def test_normalized_adam_with_a_closure_over_steps_of_jumping_scale():
    """Several closure steps whose losses jump in scale (1e6, 1, 1e-3): the closure's own
    gradient is normalized each step, which the hand-written reference says. (A single step
    cannot tell: Adam's first step is lr·sign(g) at any scale.)"""
    g = torch.Generator().manual_seed(0)
    start = torch.randn(5, generator=g, dtype=F64)
    targets = [torch.randn(5, generator=g, dtype=F64) for _ in range(3)]
    scales = [1e6, 1.0, 1e-3]
    p = start.clone().requires_grad_(True)
    opt = NormalizedAdam([p], lr=0.1)
    grads = []
    for s, t in zip(scales, targets):
        def closure(s=s, t=t):
            opt.zero_grad()
            loss = s * ((p - t) ** 2).sum()
            loss.backward()
            grads.append(p.grad.detach().clone())  # the raw gradient at this step's p
            return loss

        opt.step(closure)
    (want,) = _reference([start], [[gr] for gr in grads], lr=0.1)
    torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-14)


def test_an_optimizer_without_the_fused_kernel_keeps_weight_decay_and_eps(monkeypatch):
    """Where the fused kernel is refused (a device or dtype without it), make_optimizers falls
    back to the plain kernel with the same ε and decoupled weight decay: the steps are
    torch.optim.AdamW's (an independent reference) at that ε."""
    import vaekit.train as train_mod
    from vaekit.config import ModelConfig
    from vaekit.model import VAEModel

    class NoFused(Adam):
        def __init__(self, params, **kw):
            if kw.get("fused"):
                raise RuntimeError("fused kernel not supported here")
            super().__init__(params, **kw)

    monkeypatch.setattr(train_mod, "Adam", NoFused)
    lr, wd, eps = 0.01, 0.3, 1e-4
    model = VAEModel(ModelConfig(input_dim=4, latent_dim=2, hidden=(3,))).to(F64)
    (opt,) = train_mod.make_optimizers(model, lr=lr, eps=eps, weight_decay=wd)
    assert isinstance(opt, NoFused) and not opt.defaults.get("fused")
    assert all(gr["weight_decay"] == wd and gr["decoupled_weight_decay"] and gr["eps"] == eps for gr in opt.param_groups)
    ref = VAEModel(ModelConfig(input_dim=4, latent_dim=2, hidden=(3,))).to(F64)
    ref.load_state_dict(model.state_dict())
    adamw = torch.optim.AdamW(ref.parameters(), lr=lr, eps=eps, weight_decay=wd)
    for scale in (1.0, 1e-4, 1e2):
        for m, o in ((model, opt), (ref, adamw)):
            o.zero_grad()
            for q in m.parameters():
                q.grad = scale * torch.randn(q.shape, generator=torch.Generator().manual_seed(int(1e6 * scale) % 97), dtype=F64)
            o.step()
    for (k, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15, msg=k)
