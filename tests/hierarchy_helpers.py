"""Linear-Gaussian models whose marginal likelihood is exact: one layer with the exact posterior
as its encoder, and a two-layer hierarchy."""

from __future__ import annotations

import math

import torch
from torch.distributions import MultivariateNormal

from vaekit.config import ModelConfig
from vaekit.model import VAEModel

F64 = torch.float64


def linear_hierarchy(seed: int = 0, **model_kw):
    """(model, exact marginal of x): z2 ~ N(0, I), z1 = A z2 + c + σ1 ε1, x = W z1 + b + σ ε,
    every net linear and the likelihood Gaussian with σ fixed, so that
    x ~ N(W c + b, W (AAᵀ + σ1² I) Wᵀ + σ² I) exactly. ``model_kw`` picks the inference method."""
    torch.manual_seed(seed)
    sigma, sigma1 = 0.6, 0.5
    config = ModelConfig(input_dim=6, latent_dim=(3, 2), hidden=(), likelihood="gaussian", variance="fixed",
                         fixed_std=sigma, **model_kw)  # fmt: skip
    model = VAEModel(config).to(F64)
    g = torch.Generator().manual_seed(seed)
    A, c = torch.randn(3, 2, generator=g, dtype=F64), 0.3 * torch.randn(3, generator=g, dtype=F64)
    W, b = torch.randn(6, 3, generator=g, dtype=F64), torch.randn(6, generator=g, dtype=F64)
    with torch.no_grad():
        down = model.downward[0].net[0]  # Linear(2, 2·3): rows [:3] give μ, rows [3:] log σ1²
        down.weight.zero_()
        down.weight[:3] = A
        down.bias[:3] = c
        down.bias[3:] = 2 * math.log(sigma1)
        model.decoder[0].weight.copy_(W)
        model.decoder[0].bias.copy_(b)
    cov1 = A @ A.T + sigma1**2 * torch.eye(3, dtype=F64)
    marginal = MultivariateNormal(W @ c + b, W @ cov1 @ W.T + sigma**2 * torch.eye(6, dtype=F64))
    return model, marginal


def fit_inference(model, x, steps: int = 800, seed: int = 8):
    """Fit only the inference nets of ``model`` to the points x (Adam on the 8-sample ELBO,
    lr 0.1, then 0.01 for the last quarter to let the noisy steps settle); the generative
    nets are held fixed. Runs in a forked random state."""
    from vaekit.objectives import elbo

    with torch.random.fork_rng():
        generative = [p for n, p in model.named_parameters() if not n.startswith("inference.")]
        for p in generative:
            p.requires_grad_(False)
        opt = torch.optim.Adam(model.inference.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(seed)
        for step in range(steps):
            if step == 3 * steps // 4:
                opt.param_groups[0]["lr"] = 0.01
            opt.zero_grad()
            eps = torch.randn(8, *x.shape[:-1], model.noise_size, generator=g, dtype=x.dtype)
            (-elbo(model, x, eps=eps).elbo.mean()).backward()
            opt.step()
        for p in generative:
            p.requires_grad_(True)
    return model


def set_exact_linear_gaussian(model, w, b, sigma2: float) -> None:
    """Make a one-layer linear model (hidden=(), Gaussian likelihood with shared variance) the
    exact p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I), and its encoder the exact posterior
    N(Σ Wᵀ(x − b)/σ², Σ), Σ = (I + WᵀW/σ²)⁻¹, diagonal when W has orthogonal columns: then
    log p(x,z) − log q(z|x) = log p(x) for every z, and IWAE is exact for any K."""
    import numpy as np

    d = w.shape[1]
    post_var = 1.0 / (1.0 + (w**2).sum(0) / sigma2)  # diag Σ
    enc_w = post_var[:, None] * w.T / sigma2  # E[z|x] = enc_w (x − b)
    (dec,) = [layer for layer in model.decoder if isinstance(layer, torch.nn.Linear)]
    (enc,) = [layer for layer in model.inference.modules() if isinstance(layer, torch.nn.Linear)]
    with torch.no_grad():
        dec.weight.copy_(torch.from_numpy(w))
        dec.bias.copy_(torch.from_numpy(b))
        model.likelihood.logvar.fill_(math.log(sigma2))
        enc.weight.zero_()
        enc.weight[:d] = torch.from_numpy(enc_w)
        enc.bias[:d] = torch.from_numpy(-enc_w @ b)
        enc.bias[d:] = torch.from_numpy(np.log(post_var))


def top_down_reference(model, x, eps, conditional):
    """(z, [q_l], [z_l]) of a top-down posterior drawn by hand: for l = L … 1,
    q_l = conditional(model, x, l, z_{l+1}) (parent None for the top group), a
    torch.distributions Normal, and z_l = mean of q_l + ε_l·its stddev."""
    groups = model.latents
    qs, zs = [None] * len(groups), [None] * len(groups)
    for l in reversed(range(len(groups))):
        qs[l] = conditional(model, x, l, zs[l + 1] if l + 1 < len(groups) else None)
        zs[l] = qs[l].mean + eps[..., groups[l].columns] * qs[l].stddev
    return torch.cat(zs, -1), qs, zs
