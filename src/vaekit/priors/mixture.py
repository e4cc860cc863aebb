from __future__ import annotations

import torch
from torch import nn

from ..distributions import MixtureOfDiagonalNormals
from ..registry import Option
from . import PRIORS, Prior


@PRIORS.register(
    "mixture",
    options={"components": Option(10, "Gaussian components of the mixture prior", minimum=1)},
)
class MixturePrior(Prior):
    """p(z) = Σ_c π_c N(z; μ_c, diag σ_c²), learned with θ: a mixture-of-Gaussians prior
    (Dilokthanakul et al. 2016; the "MoG" prior of Tomczak & Welling 2018, sec. 3).

    π = softmax(logits) starts uniform and every σ_c² at 1; the means start spread as
    N(0, I) draws from torch's global generator, which the run's seed fixes (as it fixes the
    networks' weights), so the components differ and the model is not a standard normal
    prior with C identical copies. Its KL against a Gaussian q has no closed form: the ELBO
    uses the Monte Carlo estimate whatever ``analytic_kl`` says.
    """

    def __init__(self, config, size: int):
        super().__init__(config, size)
        c = self.components = config.components
        self.logits = nn.Parameter(torch.zeros(c))  # (C,)
        self.mu = nn.Parameter(torch.randn(c, size))  # (C, d)
        self.logvar = nn.Parameter(torch.zeros(c, size))  # (C, d), log σ²

    def forward(self, model=None) -> MixtureOfDiagonalNormals:
        return MixtureOfDiagonalNormals(self.logits, self.mu, self.logvar)
