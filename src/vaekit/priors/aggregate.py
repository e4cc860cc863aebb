from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..distributions import DiagonalNormal, MixtureOfDiagonalNormals
from ..errors import ConfigError
from ..registry import Option
from . import PRIORS, Prior

# Draws from the aggregate posterior that the fitted mixture (prior_mixture) learns from, at
# least ten per component.
MIXTURE_DRAWS = 20000


@PRIORS.register(
    "aggregate",
    options={
        "prior_from": Option(None, "run directory whose aggregate posterior (1/N) Σ_i q(z|x_i) over its training rows becomes p(z) (prior aggregate)", type="str", optional=True),
        "prior_components": Option(1000, "most components M of the aggregate prior: the q(z|x_i) of M training rows of the --prior-from run drawn at random (all rows when it has fewer)", minimum=1),
        "prior_mixture": Option(None, "instead of those M posteriors, a diagonal Gaussian mixture of this many components fitted by EM to draws from them", type="int", minimum=1, optional=True),
    },
)
class AggregatePrior(Prior):
    """p(z) = (1/M) Σ_m q(z | x_m): an earlier run's aggregate posterior as this run's prior,
    the posterior becoming the new prior (the notes' last step), so that a model trained on
    more data starts from what the first data taught. The full aggregate (1/N) Σ_i q(z|x_i)
    over the N training rows of the run ``prior_from`` (Hoffman & Johnson 2016, "ELBO
    surgery"; Tomczak & Welling 2018's optimal prior, eq. 7) is subsampled to M =
    ``prior_components`` rows drawn uniformly without replacement, an unbiased mixture
    estimate of it; with N ≤ M it is the full aggregate (the M − N spare components weigh 0).

    With ``prior_mixture`` C the prior is instead a diagonal Gaussian mixture of C components
    fitted by EM (scikit-learn's GaussianMixture) to MIXTURE_DRAWS draws from that aggregate:
    a mixture fitted to the posterior, smoother and cheaper to evaluate than M components when
    C is small.

    Each q(z | x_m) is the earlier model's q for that row (``evaluation_posterior``: the encoder,
    refined or not, or the per-point optimum), a diagonal Gaussian. The mixture's weights,
    means and log-variances are buffers: fixed during training and saved with the weights, so
    a run loads without ``prior_from`` present. They are read once, at the start of a fresh
    run (``init_from_data``); until then the prior is M copies of N(0, I). No closed-form KL:
    the ELBO uses the Monte Carlo estimate, log p(z) is the exact log-sum-exp.
    """

    def __init__(self, config, size: int):
        super().__init__(config, size)
        self.source = config.prior_from
        self.fit_components = config.prior_mixture
        self.rows = config.prior_components
        m = self.components = self.fit_components or self.rows
        self.register_buffer("logits", torch.zeros(m))  # (M,), uniform
        self.register_buffer("mu", torch.zeros(m, size))  # (M, d)
        self.register_buffer("logvar", torch.zeros(m, size))  # (M, d), log σ²

    @classmethod
    def check_config(cls, config) -> None:
        if config.prior_from is None:
            raise ConfigError("prior aggregate needs prior_from, the run directory whose aggregate posterior becomes the prior")
        if config.prior_mixture is not None and config.prior_mixture > config.prior_components:
            raise ConfigError(
                f"prior_mixture must be at most prior_components, the posteriors it is fitted to: got {config.prior_mixture} "
                f"components for {config.prior_components}"
            )

    def check_source(self) -> None:
        """The earlier run is there, a run of this top group's size, trained on rows on disk."""
        from ..checkpoint import CONFIG_FILE
        from ..config import RunConfig
        from ..errors import CheckpointError

        where = f"{self.source} (the run the aggregate prior is read from)"
        path = Path(self.source) / CONFIG_FILE
        if not path.is_file():
            raise CheckpointError(f"{where}: not a run directory (no {CONFIG_FILE})")
        config = RunConfig.load(path)
        sizes = config.model.latent_dim if isinstance(config.model.latent_dim, tuple) else (config.model.latent_dim,)
        if len(sizes) != 1:
            raise ConfigError(
                f"{where}: that run has {len(sizes)} latent groups ({','.join(map(str, sizes))}); the aggregate posterior "
                "is read from a run with one"
            )
        if sizes[0] != self.size:
            raise ConfigError(f"{where}: that run's latent size is {sizes[0]}, this model's top group has {self.size}; they must match")
        if config.data.source == "array":
            raise ConfigError(f"{where}: that run was fitted on an in-memory array, so its training rows are not on disk")

    @torch.no_grad()
    def init_from_data(self, x_train, rng: np.random.Generator) -> None:
        """Read the earlier run: its model and its training rows, M of them drawn by ``rng``.
        This run's own rows ``x_train`` are not used: the prior is what the earlier data taught."""
        from ..checkpoint import load_run
        from ..data import load_dataset
        from ..scaling import model_rows

        where = f"{self.source} (the run the aggregate prior is read from)"
        self.check_source()
        # Rebuilding the earlier model draws initial weights: keep them off this run's stream.
        with torch.random.fork_rng(devices=[]):
            config, model = load_run(self.source)
        data = load_dataset(config.data)
        x = model_rows(config.model, data.train, data.scaling)  # as that model sees them
        n, m = len(x), self.rows
        rows = np.sort(rng.choice(n, size=m, replace=False)) if n > m else np.arange(n)
        xb = torch.as_tensor(np.asarray(x[rows]), dtype=next(model.parameters()).dtype)
        q = model.evaluation_posterior(xb)
        if not isinstance(q, DiagonalNormal):
            raise ConfigError(f"{where}: that run's q(z|x) is a {type(q).__name__}, not a diagonal Gaussian")
        if self.fit_components:
            if self.fit_components > len(rows):
                raise ConfigError(f"{where}: prior_mixture {self.fit_components} is more components than that run's {len(rows)} training rows")
            self._fit_mixture(q, rng)
            return
        k = len(rows)
        # With N <= M every row is a component; the M − N left over get weight 0 (logit −∞)
        # and finite copies of the first, so that log p(z) and its gradient stay finite.
        self.mu.copy_(torch.cat([q.mu, q.mu[:1].expand(m - k, -1)]).to(self.mu))
        self.logvar.copy_(torch.cat([q.logvar, q.logvar[:1].expand(m - k, -1)]).to(self.logvar))
        self.logits.zero_()
        self.logits[k:] = -torch.inf

    def _fit_mixture(self, q: DiagonalNormal, rng: np.random.Generator) -> None:
        """The buffers from a diagonal Gaussian mixture fitted by EM to draws from the mixture
        (1/M) Σ_m q(z|x_m): at least MIXTURE_DRAWS and ten per fitted component, the same
        number from each q."""
        from sklearn.mixture import GaussianMixture

        rows, c = q.mu.shape[0], self.fit_components
        per_row = -(-max(MIXTURE_DRAWS, 10 * c) // rows)
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        z = q.rsample((per_row,), generator=g).reshape(-1, self.size).double().cpu().numpy()
        # reg_covar keeps every component's variance away from 0 (a component on one point).
        fit = GaussianMixture(c, covariance_type="diag", reg_covar=1e-6, random_state=int(rng.integers(2**31))).fit(z)
        self.logits.copy_(torch.as_tensor(np.log(fit.weights_)))
        self.mu.copy_(torch.as_tensor(fit.means_))
        self.logvar.copy_(torch.as_tensor(np.log(fit.covariances_)))

    def forward(self, model=None) -> MixtureOfDiagonalNormals:
        return MixtureOfDiagonalNormals(self.logits, self.mu, self.logvar)
