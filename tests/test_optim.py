"""Adam on normalized gradients (optim.NormalizedAdam, ``--normalized-grad``), checked against
the update written out by hand, and through training and --resume."""

from __future__ import annotations

import math

import pytest
import torch

from vaekit.optim import Adam, NormalizedAdam

F64 = torch.float64


def _reference(params, grads_per_step, lr, betas=(0.9, 0.999), eps=1e-8, normalize=True):
    """The block-normalized Adam update, by hand: g ← g/(‖g‖ + 1e-7) per tensor (unless not
    ``normalize``), then Adam's bias-corrected moments (Kingma & Ba 2015, Algorithm 1)."""
    params = [p.clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            g = g / (g.norm() + 1e-7) if normalize else g
            m[i] = betas[0] * m[i] + (1 - betas[0]) * g
            v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
            m_hat, v_hat = m[i] / (1 - betas[0] ** t), v[i] / (1 - betas[1] ** t)
            params[i] = params[i] - lr * m_hat / (v_hat.sqrt() + eps)
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
