"""A scikit-learn-style face on the PyTorch model, for people who have an array and want
latents, samples and anomaly scores: ``VAE(...).fit(X)``, ``transform``, ``sample``,
``score_samples``, ``save`` and ``vaekit.load``.

``VAE`` is a scikit-learn estimator (``BaseEstimator``, ``TransformerMixin``): it goes into a
``Pipeline``, ``cross_val_score`` (``score`` is the mean log-likelihood) and ``GridSearchCV``,
and passes ``sklearn.utils.estimator_checks`` (tests/test_sklearn.py). As in scikit-learn,
``__init__`` only stores its keyword arguments and fitted state ends in ``_`` (``model_``,
``config_``, ``history_``, ``n_features_in_``, ``feature_names_in_`` for a DataFrame). The fitted
network is the plain ``nn.Module`` ``model_`` (a ``vaekit.model.VAEModel``).
"""

from __future__ import annotations

import functools
import inspect
import threading
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from sklearn import exceptions as sk_exceptions
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin

from .config import K_MAX, RECONSTRUCT_DRAWS, SAMPLE_SOURCES, DataConfig, RunConfig, TrainConfig, check_bool, check_positive_int, inert_options
from .errors import ConfigError, DataError, NotNumbersError, VaekitWarning, first_line, out_of_memory
from .evaluate import numpy_of as _numpy
from .hardware import no_autocast
from .scaling import Scaling, apply

# Rows per forward pass of encode and reconstruct.
BATCH_ROWS = 4096


# Estimator parameters beyond the model's and training's options: the validation share of X
# and the image shape of its rows (``progress``, ``verbose`` and ``scaling`` are the
# estimator's own, added by ``estimator_params``). Options of a run directory have no
# meaning here: eval_k (the CLI's final evaluation), quiet and tensorboard (its logs).
_EXTRA = {"valid_fraction": "data", "image_shape": "model"}
RUN_ONLY = {"eval_k", "quiet", "tensorboard"}


class NotFittedError(ConfigError, sk_exceptions.NotFittedError):
    """A method that needs a fitted model was called before ``fit``: scikit-learn's
    ``NotFittedError`` (so ``check_is_fitted`` users and sklearn's checks recognise it) and a
    ``VaekitError`` (so the CLI prints one line). It lives here, not in errors.py, so that
    importing the CLI does not import scikit-learn."""


def estimator_params() -> dict[str, tuple[str, Any]]:
    """Parameter -> (config section, default), derived from the option declarations."""
    from .config import AUTO, FROM_DATA, section_options

    params: dict[str, tuple[str, Any]] = {}
    for section in ("model", "train"):
        for name, opt in section_options(section).items():
            if name not in FROM_DATA and name not in RUN_ONLY:
                params[name] = (section, AUTO.get(name, opt.default))
    for name, section in _EXTRA.items():
        params[name] = (section, section_options(section)[name].default)
    params["scaling"] = ("estimator", None)
    params["progress"] = ("estimator", False)
    params["verbose"] = ("estimator", False)
    return params


def _signature() -> inspect.Signature:
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature(
        [inspect.Parameter("self", kind)] + [inspect.Parameter(n, kind, default=d) for n, (_, d) in estimator_params().items()]
    )



def _model_precision(method):
    """``method`` with the caller's torch.autocast off: the model computes in its own dtype
    (what ``fit`` trained and ``save`` stores), not in a region's bfloat16."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with no_autocast():
            return method(*args, **kwargs)

    return wrapper


class VAE(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Variational autoencoder p(z) p(x|z; θ) with inference model q(z|x; φ), fitted on the ELBO
    (or the objective named by ``objective``).

    Every model and training option of ``vaekit train`` is a parameter (``latent_dim``,
    ``hidden``, ``likelihood``, ``inference``, ``objective``, ``beta``, ...; ``help(vaekit.VAE)``
    lists them with their defaults), and ``valid_fraction``; the options of files and run
    directories (``--data``, ``--mmap``, ``--eval-k``, ...) are the command line's.
    ``likelihood="auto"`` picks Bernoulli for 0/1 data, continuous Bernoulli for
    values in [0, 1] and Gaussian otherwise; ``standardize="auto"`` then standardises each
    feature by the training rows' mean and std when they are not all in [0, 1] (``scaling_``).
    ``scaling=(shift, scale)`` instead fixes the input map x' = (x − shift)/scale of every
    feature, for data in known units (``(0, 16)`` takes the digits' pixels 0..16 to [0, 1];
    ``vaekit.load`` sets it for a run trained on a named dataset, so that a clone refits in the
    units the run reads); the likelihood and ``standardize="auto"`` are then chosen on x'.
    Every method takes X in its own units and answers in them: samples and reconstructions,
    and log-likelihoods as densities of X (vaekit.scaling). ``X_valid`` (or a
    ``valid_fraction`` of X) gives the validation objective for early stopping and for keeping
    the best model. ``fit`` is silent unless ``verbose`` (one line per epoch on stderr) or
    ``progress`` (a progress bar).
    """

    def __init__(self, *args, **kwargs):
        bound = self.__init__.__signature__.bind(self, *args, **kwargs)
        bound.apply_defaults()
        for name, value in bound.arguments.items():
            if name != "self":
                setattr(self, name, value)

    __init__.__signature__ = _signature()  # type: ignore[attr-defined]

    # -- scikit-learn protocol -----------------------------------------------------------------
    # get_params, set_params, __repr__ and clone come from BaseEstimator, which reads the
    # generated signature of __init__ (inspect.signature honours __signature__).

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False  # unsupervised: y is accepted and ignored
        tags.input_tags.allow_nan = False  # check_data rejects NaN and Inf
        tags.input_tags.sparse = False
        # The output has the model's dtype (the ``dtype`` parameter), whatever the input's.
        tags.transformer_tags.preserves_dtype = []
        return tags

    def _rows(self, X, what: str, reset: bool, min_rows: int = 1):
        """X as check_data returns it, with scikit-learn's bookkeeping of feature names: a
        DataFrame's columns are recorded by fit (``feature_names_in_``) and must match later.
        A fitted model of images also takes them unflattened, (n, H, W) or (n, C, H, W)."""
        from sklearn.utils.validation import validate_data

        from .data import MappedRows, check_data

        if isinstance(X, MappedRows):
            if reset and hasattr(self, "feature_names_in_"):  # rows without column names, as validate_data resets
                del self.feature_names_in_
        else:
            try:
                # ensure_2d=False: only the feature names here; the array checks are check_data's.
                validate_data(self, X, reset=reset, skip_check_array=True, ensure_2d=False)
            except (ValueError, TypeError) as e:  # names that differ from fit's, or of mixed types; sklearn's lines as one
                raise DataError(" ".join(str(e).split())) from None
            X = self._flat_images(_numeric(X, what), what) if not reset else _numeric(X, what)
        return check_data(X, what=what, min_rows=min_rows, dtype=None)  # full precision until the input map

    def _fit_rows(self, X, given_valid: bool):
        """(rows, image_shape) of fit's X: images (n, H, W) or (n, C, H, W) are flattened and
        give the image shape (which must agree with the ``image_shape`` parameter, if set).
        It needs two rows to train on, three when one of them is held out for validation (in
        scikit-learn's words, "samples", which its estimator checks look for)."""
        X = _numeric(X, "X") if not hasattr(X, "columns") else X
        image_shape = self.image_shape
        if getattr(X, "ndim", None) in (3, 4):
            from .data.checks import warn_channels_last

            shape = tuple(int(v) for v in X.shape[1:])
            warn_channels_last("X", shape)
            if image_shape is not None and tuple(image_shape) != shape:
                raise DataError(f"X has images of shape {shape}, but image_shape={tuple(image_shape)}")
            X, image_shape = np.reshape(X, (X.shape[0], -1)), shape
        X = self._rows(X, "X", reset=True, min_rows=0)  # the count is this method's: "at least 1" is not the whole story
        need = 2 if given_valid else 3
        if X.shape[0] < need:
            reason = "" if given_valid else " to hold out a validation set"
            raise DataError(f"X has {X.shape[0]} sample(s) (shape={X.shape}); at least {need} are needed{reason}")
        return X, image_shape

    def _flat_images(self, X, what: str):
        """Images of the fitted model's image_shape as rows; anything else as it is."""
        shape = self.model_.config.image_shape if hasattr(self, "model_") else None
        ndim = getattr(X, "ndim", None)
        if shape is None or ndim not in (3, 4):
            return X
        from .data.checks import check_image_layout

        check_image_layout(what, X.shape[1:], shape)
        return np.reshape(X, (X.shape[0], -1))

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, X, y=None, *, X_valid=None) -> "VAE":
        """Fit on the rows of X (an array, a DataFrame, a tensor); ``y`` is ignored (the
        scikit-learn convention for unsupervised estimators). Validation rows are ``X_valid``,
        else a ``valid_fraction`` of X. Neither torch's nor numpy's global random state moves:
        the seeded parts run under ``torch.random.fork_rng``. A fit that fails leaves the
        estimator as it was (fitted before, still fitted to the same model).

        Fits in several threads of one process run one at a time: torch's random generator,
        thread count and matmul precision belong to the process, so fits that overlapped would
        reseed each other's draws. Each then gives the bits it gives alone; for fits in
        parallel, use processes (each with its own torch)."""
        state = {k: v for k, v in self.__dict__.items() if k in _FITTED}
        try:
            # The model is built and trained with gradients on, whatever the caller's
            # torch.no_grad() or inference_mode() (whose parameters could not be trained).
            # In the precision ``amp`` asks for, whatever the caller's torch.autocast.
            with _FIT_LOCK, torch.inference_mode(False), torch.enable_grad(), no_autocast():
                return self._fit(X, X_valid)
        except BaseException as e:
            for k in _FITTED:
                self.__dict__.pop(k, None)
            self.__dict__.update(state)
            if isinstance(e, RuntimeError) and out_of_memory(e):  # torch's allocator, in its words
                raise MemoryError(f"fit ran out of memory ({first_line(e)}); ask for less at once: a smaller batch_size, k or n_samples") from None
            raise

    def _fit(self, X, X_valid) -> "VAE":
        from .data import MappedRows, check_data
        from .data.splits import split_sizes
        from .hardware import check_model_fits
        from .logs import EpochLog
        from .model import build_model
        from .runs import model_config
        from .train import fit

        # The options first: the seed and valid_fraction are used before the configs are built.
        params = estimator_params()
        check_bool("verbose", self.verbose)
        check_bool("progress", self.progress)
        named = _fixed_scaling(self.scaling, self.standardize)
        options = {s: {n: getattr(self, n) for n, (sec, _) in params.items() if sec == s} for s in ("model", "train")}
        options["model"].pop("image_shape")
        train_config = TrainConfig(**options["train"])
        data_config = DataConfig(source="array", valid_fraction=self.valid_fraction, test_fraction=0.0, split_seed=self.seed)
        given_valid = X_valid is not None
        X, image_shape = self._fit_rows(X, given_valid)
        self.n_features_in_ = X.shape[1]
        if given_valid:
            # 0 says it too (hold no rows of X out); another fraction would act on nothing.
            if self.valid_fraction not in (params["valid_fraction"][1], 0):
                raise ConfigError(f"valid_fraction applies when fit holds rows of X out; X_valid is given (valid_fraction={self.valid_fraction!r})")
            X_valid = self._valid_rows(X_valid, image_shape)
            shape = np.shape(X_valid)
            if len(shape) == 2 and shape[1] != X.shape[1]:  # nothing is trained yet: X sets the width
                raise DataError(f"X_valid has {shape[1]} feature{'' if shape[1] == 1 else 's'} per row, but X has {X.shape[1]}")
            X_valid = check_data(X_valid, what="X_valid", input_dim=X.shape[1], dtype=None)
        else:
            if self.valid_fraction == 0:
                raise DataError("valid_fraction=0 holds out no rows, and fit keeps the epoch that is best on validation rows: give valid_fraction > 0 or X_valid")
            # Rounded as vaekit train rounds its split (vaekit.data.splits).
            n_train, n_valid, _ = split_sizes(X.shape[0], self.valid_fraction, 0.0)
            if n_train < 2 or n_valid < 1:
                raise DataError(f"X has {X.shape[0]} rows; valid_fraction={self.valid_fraction} leaves fewer than 2 to train on or none to validate on")
            perm = np.random.default_rng(self.seed).permutation(X.shape[0])
            if isinstance(X, MappedRows):  # split by row number: both parts stay in the file, at full precision
                X_valid, X = (MappedRows(X.array, X.index[part], X.scaling, X.dtype) for part in (perm[:n_valid], perm[n_valid:]))
            else:
                X_valid, X = X[perm[:n_valid]], X[perm[n_valid:]]
        names = getattr(self, "feature_names_in_", None)
        data_config = replace(data_config, feature_names=None if names is None else tuple(str(n) for n in names))
        # The input map (standardisation) is learned from the training rows alone; the auto
        # choices of likelihood and standardisation read the validation rows too.
        model_config_ = model_config(X, image_shape, options["model"], named=named, held_out=(X_valid,))
        config = RunConfig(model=model_config_, train=train_config, data=data_config)
        # A parameter set away from its default where it acts on nothing is refused, as the CLI
        # refuses the flag (the estimator cannot tell a default given from one left alone).
        changed = {sec: {n for n, value in options[sec].items() if value != params[n][1]} for sec in ("model", "train")}
        bad = inert_options(config, changed)
        if bad:
            raise ConfigError(bad[0])
        scaling = Scaling.of(config.model)
        # float32's resolution of a feature is judged on the training rows (as vaekit train's).
        X, X_valid = (apply(scaling, x, config.train.dtype, what, resolve=what == "X") for x, what in ((X, "X"), (X_valid, "X_valid")))
        # The caller's random streams stay where they were: torch.manual_seed here and in
        # train.fit reseeds only the forked state (CPU, and every CUDA device that exists).
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        check_model_fits(config.model, config.train.dtype, config.train.device)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)  # the initial weights are part of the fit
            model = build_model(config.model, config.train)
            for x, what, resolve in ((X, "X", True), (X_valid, "X_valid" if given_valid else "X", False)):
                if isinstance(x, MappedRows):  # block by block, never read whole
                    check_data(x, what=what, likelihood=model.likelihood, scaling=scaling, resolve=resolve)
                else:
                    model.likelihood.check(x, what, scaling)
            on_epoch = EpochLog(config.train.epochs) if self.verbose else None
            # In-memory rows are this process's own: a torch.distributed group the caller has
            # joined (a DDP script) is not one for this fit to share batches with.
            self.history_ = fit(model, X, X_valid, config.train, progress=self.progress, on_epoch=on_epoch, distributed=False)
        self.model_ = model
        self.config_ = config
        return self

    def _valid_rows(self, X_valid, image_shape):
        """fit's X_valid as X was taken: a DataFrame's columns must be X's, in X's order, and
        images (n, H, W) or (n, C, H, W) must have X's shape."""
        from sklearn.utils.validation import validate_data

        from .data import MappedRows
        from .data.checks import _as_numpy

        if hasattr(X_valid, "columns") or hasattr(self, "feature_names_in_"):
            try:
                validate_data(self, X_valid, reset=False, skip_check_array=True, ensure_2d=False)
            except (ValueError, TypeError) as e:  # names that differ from X's, or of mixed types
                raise DataError(f"X_valid: {' '.join(str(e).split())}") from None
        X_valid = _numeric(X_valid, "X_valid")
        if not isinstance(X_valid, MappedRows):  # a ragged list is refused here, not by np.shape
            X_valid = _as_numpy(X_valid, "X_valid")
        if getattr(X_valid, "ndim", None) in (3, 4):
            shape = tuple(int(v) for v in X_valid.shape[1:])
            if image_shape is None or shape != tuple(image_shape):
                raise DataError(f"X_valid has images of shape {shape}, but X has {'rows' if image_shape is None else 'images of shape ' + str(tuple(image_shape))}")
            X_valid = np.reshape(X_valid, (X_valid.shape[0], -1))
        return X_valid

    # -- using a fitted model -------------------------------------------------------------------
    @property
    def _n_features_out(self) -> int:
        """transform's columns, for get_feature_names_out ("vae0", "vae1", ...) and set_output."""
        return self.model_.latent_size

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")

    @property
    def scaling_(self) -> Scaling | None:
        """The fitted model's input map x' = (x − shift)/scale (vaekit.scaling), None for none."""
        self._check_fitted()
        return Scaling.of(self.model_.config)

    @property
    def _dtype(self) -> np.dtype:
        """The numpy dtype of the fitted model's parameters, in which it reads its input."""
        return np.dtype(np.float64 if next(self.model_.parameters()).dtype == torch.float64 else np.float32)

    def model_input(self, X, what: str = "X"):
        """X checked against the fitted model and mapped into the values it sees (its input
        map): an array, or ``MappedRows`` that stay mapped. ``what`` names X in errors."""
        from .data import MappedRows, check_data

        self._check_fitted()
        scaling = self.scaling_
        # Whether float32 resolves a feature was judged on the training rows: rows read now are
        # not refused by their own spread, which the rows beside them would decide.
        if isinstance(X, MappedRows):  # checked block by block, never read whole
            mapped = apply(scaling, X, self._dtype)
            return check_data(mapped, what=what, input_dim=self.n_features_in_, likelihood=self.model_.likelihood, scaling=scaling, resolve=False)
        x = self._rows(X, what, reset=False)
        if x.shape[1] != self.n_features_in_:  # scikit-learn's wording, which its checks expect
            raise DataError(
                f"{what} has {x.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input"
            )
        x = apply(scaling, x, self._dtype, what, resolve=False)
        self.model_.likelihood.check(x, what, scaling)
        return x

    def _to_user(self, x: np.ndarray) -> np.ndarray:
        """The model's values x' in the user's units: shift + scale · x'."""
        scaling = self.scaling_
        return x if scaling is None else scaling.to_user(x)

    def _posteriors_of(self, x):
        """q(z|x) for consecutive blocks of the rows ``x``, already in the model's values
        (``model_input``), by ``model_.representation`` (a point estimate's own ẑ): memory stays
        bounded whatever the size of X."""
        from .evaluate import batches

        for xb in batches(self.model_, x, BATCH_ROWS):
            yield xb, self.model_.representation(xb)

    @torch.no_grad()
    def encode(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Posterior parameters (μ, log σ²) of q(z|x), each (n, D): every latent group's columns
        side by side, in the order of ``model_.latents`` (for a hierarchy, each group's given
        its parent's mean). For the point estimates (``inference="autoencoder"`` or ``"map"``)
        μ is ẑ itself (the autoencoder's code e(x), MAP's argmax) and log σ² is −inf: q is the
        point mass δ(z − ẑ)."""
        arrays = self.encoded(X)
        return arrays["mu"], arrays["logvar"]

    @torch.no_grad()
    @_model_precision
    def encoded(self, X) -> dict[str, np.ndarray]:
        """Named arrays of q(z|x): ``mu`` and ``logvar`` (n, D) of all groups and, when the model
        has several latent groups, ``mu_<group>`` and ``logvar_<group>`` of each."""
        from .evaluate import PerRow, refuse_overflow
        from .latents import split

        x = self.model_input(X)
        per_row = PerRow(len(x), ("mu", "logvar"), dtype=None)
        for _, q in self._posteriors_of(x):
            p = q.params()
            per_row.put(mu=p["mu"], logvar=p["logvar"].expand_as(p["mu"]))
        out = per_row.result()
        refuse_overflow(out["mu"], "posterior mean", x)
        refuse_overflow(out["logvar"], "posterior log-variance", x, low_inf=True)  # −inf: a point estimate
        groups = self.model_.latents
        if len(groups) > 1:
            for name in ("mu", "logvar"):
                out.update({f"{name}_{g}": v for g, v in split(out[name], groups).items()})
        return out

    def transform(self, X) -> np.ndarray:
        """Posterior means E_q[z|x], (n, latent_dim): the latent representation of each row
        (for the autoencoder, its code e(x); for MAP, ẑ)."""
        return self.encode(X)[0]

    def fit_transform(self, X, y=None, **fit_params) -> np.ndarray:
        """``fit(X, y, **fit_params)`` (e.g. ``X_valid=``), then ``transform(X)``."""
        return self.fit(X, y, **fit_params).transform(X)

    @torch.no_grad()
    @_model_precision
    def inverse_transform(self, Z) -> np.ndarray:
        """E[x|z] under the decoder for latents Z (n, latent_dim), in the user's units."""
        self._check_fitted()
        from .data import check_data

        from .data.checks import _as_numpy

        p = next(self.model_.parameters())
        Z = _as_numpy(_numeric(Z, "Z"), "Z")  # a tensor, a list (refused where ragged), a DataFrame
        if Z.ndim != 2 or Z.shape[1] != self.model_.latent_size:
            raise DataError(f"Z must have shape (n, {self.model_.latent_size}), got {tuple(Z.shape)}")
        # Numbers, finite, in native byte order (torch reads no other); in Z's own precision.
        Z = check_data(Z, what="Z", dtype=None)
        if p.dtype != torch.float64 and Z.dtype == np.float64:  # as the model reads it, not an infinity
            from .data.checks import check_range

            top = float(torch.finfo(p.dtype).max)
            check_range(Z, top, f"Z has values beyond the range of the model's {str(p.dtype).removeprefix('torch.')}", "codes lie near the prior's, |z| of a few units", None)
        # A copy where Z is read-only (a memory map, a DataFrame's values): torch warns otherwise.
        z = torch.as_tensor(Z if Z.flags.writeable else Z.copy(), dtype=p.dtype, device=p.device)
        return self._to_user(_numpy(self.model_.decode(z).mean))

    def reconstruct(self, X, draw: str | None = None, seed: int | None = None) -> np.ndarray:
        """Reconstructions of the rows of X in the user's units: by default E[x|z] at
        z = E_q[z|x], the decoder's mean at the posterior mean.

        ``draw="z"`` draws z ~ q(z|x) instead and returns E[x|z] there; ``draw="x"`` draws
        z ~ q(z|x) and then x ~ p(x|z), a draw of the posterior predictive
        ∫ p(x'|z) q(z|x) dz. Averaged over many draws both approach that predictive's mean
        E_q[E[x'|z]], which equals the default only where E[x|z] is affine in z. A point
        estimate's q is δ(z − ẑ) (``inference="autoencoder"`` or ``"map"``): its z is ẑ drawn or
        not. ``seed`` seeds the draws (one stream for all the rows, as ``sample``'s: equal
        rows get different draws); None draws fresh ones, and a seed without ``draw`` would
        seed nothing, so it is refused."""
        return np.concatenate(list(self.reconstruct_blocks(X, draw=draw, seed=seed)))

    def reconstruct_blocks(self, X, draw: str | None = None, seed: int | None = None):
        """``reconstruct(X, draw, seed)`` as consecutive blocks of at most ``BATCH_ROWS`` rows,
        so that a memory-mapped X larger than memory can be reconstructed into a file block by
        block. The arguments are checked before this returns."""
        from .distributions import draw as draw_from
        from .evaluate import refuse_overflow

        if draw is not None and draw not in RECONSTRUCT_DRAWS:
            raise ConfigError(f"draw must be None (the decoder's mean at the posterior mean) or one of {', '.join(map(repr, RECONSTRUCT_DRAWS))}, got {draw!r}")
        if draw is None and seed is not None:
            raise ConfigError(f"seed seeds the draws of draw='z' or 'x'; without draw the reconstruction has no noise (got seed={seed!r})")
        x = self.model_input(X)
        g = None
        if draw is not None:
            p = next(self.model_.parameters())
            g = torch.Generator(device=p.device)
            g.manual_seed(_seed(seed)) if seed is not None else g.seed()

        def blocks():
            posteriors, start = self._posteriors_of(x), 0
            while True:
                # Grad and autocast modes are thread state: the caller's must rule again while it
                # holds a block.
                with torch.no_grad(), no_autocast():
                    item = next(posteriors, None)
                    if item is None:
                        return
                    q = item[1]
                    px = self.model_.decode(q.mean if draw is None else q.sample(generator=g))
                    rows = draw_from(px, generator=g) if draw == "x" else px.mean
                    block = self._to_user(refuse_overflow(_numpy(rows), "reconstruction", x, start))
                start += len(block)
                yield block

        return blocks()

    def sample(
        self, n: int = 1, seed: int | None = None, mean: bool = True, source: str = "prior", X=None, components: int | None = None
    ) -> np.ndarray:
        """n rows from the model in the user's units: z from ``source``, then E[x|z] (``mean``)
        or x ~ p(x|z).

        ``source``: ``"prior"``, z ~ p(z); ``"aggregate"``, z ~ q(z|x) for rows x drawn uniformly
        from ``X``, i.e. the aggregate posterior (1/N) Σ_i q(z|x_i) (the posterior as the new
        prior, as the notes' last lecture puts it; for the point estimates, autoencoder and map,
        the codes ẑ of the drawn rows); ``"gmm"``, z from a Gaussian mixture with
        ``components`` components fitted to the posterior means of ``X`` (ex-post density
        estimation, Ghosh et al. 2020), which follows the latents the decoder was trained on
        where the prior and the aggregate posterior disagree (default 10 components). ``X`` with
        ``source="prior"``, or ``components`` with another source than ``"gmm"``, would be
        ignored, so they are refused. Rows that could not fit in the free memory (at 4 bytes a
        value) are refused before any is drawn: ``sample_blocks`` streams them.
        """
        from .hardware import available_memory

        blocks = self.sample_blocks(n, seed, mean, source, X, components)  # the arguments checked, nothing drawn
        n = check_positive_int("n", n)
        need, free = n * self.model_.config.input_dim * 4, available_memory("cpu")
        if free is not None and need > free:
            raise ConfigError(
                f"sample(n={n}) needs at least {need / 2**30:.3g} GiB for its rows and the machine has "
                f"{free / 2**30:.3g} GiB free: draw fewer rows, or stream them with sample_blocks"
            )
        try:
            return np.concatenate(list(blocks))
        except (RuntimeError, MemoryError) as e:
            if not out_of_memory(e):
                raise
            raise MemoryError(f"sample(n={n}) ran out of memory ({first_line(e)}); draw fewer rows at a time") from None

    def sample_blocks(
        self, n: int = 1, seed: int | None = None, mean: bool = True, source: str = "prior", X=None, components: int | None = None
    ):
        """``sample(...)`` as consecutive blocks of at most ``BATCH_ROWS`` rows, each drawn
        (z, then x) when it is asked for, so that n rows can go to a file larger than memory;
        ``sample`` is their concatenation. The options are checked, and the mixture of
        ``source="gmm"`` fitted, before this returns."""
        self._check_fitted()
        n, mean = check_positive_int("n", n), check_bool("mean", mean)
        draw = self._sampler(seed, mean, source, X, components)

        def blocks():
            done = 0
            while done < n:
                rows = min(BATCH_ROWS, n - done)
                # Grad and autocast modes are thread state: the caller's must rule again while it
                # holds a block.
                with torch.no_grad(), no_autocast():
                    block = draw(rows)
                done += rows
                yield block

        return blocks()

    def _sampler(self, seed, mean: bool, source: str, X, components):
        """The function that draws ``m`` more rows of ``sample``: one generator for all."""
        if source not in SAMPLE_SOURCES:
            raise ConfigError(f"source must be one of {', '.join(SAMPLE_SOURCES)}, got {source!r}")
        if source == "prior" and X is not None:
            raise ConfigError("X gives the rows of source 'aggregate' or 'gmm'; source='prior' draws z ~ p(z) and reads none")
        if components is not None and source != "gmm":
            raise ConfigError(f"components sets the mixture of source 'gmm'; this draws from source {source!r}")
        p = next(self.model_.parameters())
        g = torch.Generator(device=p.device)
        g.manual_seed(_seed(seed)) if seed is not None else g.seed()
        if source != "prior" and X is None:
            raise ConfigError(f"source={source!r} needs the rows X whose posteriors it samples from")
        if source == "prior":
            latents = lambda m: None  # noqa: E731 (the prior's z: the model draws it)
        elif source == "aggregate":
            from .data import MappedRows

            x = self.model_input(X)

            def latents(m: int) -> torch.Tensor:
                rows = torch.randint(0, x.shape[0], (m,), generator=g, device=p.device).cpu().numpy()
                xb = x.rows(rows) if isinstance(x, MappedRows) else x[rows]
                # A point estimate's q is δ(z − ẑ): its aggregate posterior is the codes.
                return self.model_.representation(torch.as_tensor(xb, dtype=p.dtype, device=p.device)).sample(generator=g)

        elif source == "gmm":
            latents = self._gmm_latents(X, check_positive_int("components", 10 if components is None else components), g)
        return lambda m: self._to_user(_numpy(self.model_.sample(m, generator=g, mean=mean, z=latents(m))))

    def _gmm_latents(self, X, components: int, g: torch.Generator) -> Callable[[int], torch.Tensor]:
        """The function that gives m draws of a full-covariance Gaussian mixture fitted to the
        posterior means of the rows X, given in the user's units (``encode`` maps them into the
        model's)."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import GaussianMixture

        mu = self.encode(X)[0].astype(np.float64)
        if mu.shape[0] < max(components, 2):
            raise DataError(f"X has {mu.shape[0]} row(s); a mixture of {components} component(s) needs at least {max(components, 2)}")
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            try:
                gmm = GaussianMixture(components, covariance_type="full", random_state=seed).fit(mu)
            except ValueError as e:  # a component's covariance not positive definite, in float64
                raise DataError(
                    f"a mixture of {components} component(s) could not be fitted to the posterior means of X: a component's "
                    f"covariance is singular (its rows collapsed onto one point, or means as large as {np.abs(mu).max():.3g} "
                    f"swamp the others); fewer components or source='aggregate' may do"
                ) from e
        for w in caught:  # scikit-learn's (fewer distinct points than components, no convergence) as one line
            if issubclass(w.category, ConvergenceWarning):
                warnings.warn(f"the mixture fitted to the posterior means of X: {' '.join(str(w.message).split())}", VaekitWarning, stacklevel=4)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        # One stream for every block: an int seed would make each block's draws the first's.
        gmm.random_state = np.random.RandomState(seed)
        shuffle = np.random.default_rng(seed)
        p = next(self.model_.parameters())

        def latents(m: int) -> torch.Tensor:
            z, _ = gmm.sample(m)
            # GaussianMixture.sample returns its draws sorted by component: shuffle them.
            return torch.as_tensor(z[shuffle.permutation(m)], dtype=p.dtype, device=p.device)

        return latents

    @_model_precision
    def score_samples(self, X, k: int = 1000, seed: int = 0, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Per-row log p(x), the K-sample importance-weighted estimate (nats), a density of the
        values as given (through the input map: log p'((x − shift)/scale) − Σ_j log scale_j; a
        Bernoulli model's probabilities need no such term).
        Low values flag rows the model finds unlikely, so it serves as an anomaly score. Each
        row draws its noise from a stream seeded by ``seed`` and the row itself, so a row scores
        the same alone or among others, in any order (up to rounding). ``progress``, if given,
        is called with the rows done so far (``vaekit.logs.RowProgress`` draws a bar)."""
        from .evaluate import log_px_per_point, refuse_log_px_overflow

        k, seed = check_positive_int("k", k, maximum=K_MAX), _seed(seed)
        if progress is not None and not callable(progress):
            raise ConfigError(f"progress must be a callable taking the rows done, or None, got {progress!r}")
        x = self.model_input(X)
        return refuse_log_px_overflow(self.model_, log_px_per_point(self.model_, x, k=k, seed=seed, progress=progress), x)

    def score(self, X, y=None, k: int = 1000) -> float:
        """Mean log p(x) over the rows of X (nats)."""
        return float(self.score_samples(X, k=k).mean())

    @_model_precision
    def elbo(self, X, seed: int = 0) -> dict[str, np.ndarray]:
        """Per-row ELBO, E_q[log p(x|z)] and KL(q || p)."""
        from .evaluate import elbo_per_point, refuse_elbo_overflow

        seed = _seed(seed)
        x = self.model_input(X)
        out = elbo_per_point(self.model_, x, seed=seed)
        refuse_elbo_overflow(out, x)
        return out

    @_model_precision
    def evaluate(self, X, k: int = 1000, seed: int = 0) -> dict[str, Any]:
        """elbo, recon, kl, log_likelihood, bits_per_dim, n, k averaged over the rows of X."""
        from .evaluate import evaluate

        k, seed = check_positive_int("k", k, maximum=K_MAX), _seed(seed)
        x = self.model_input(X)
        return evaluate(self.model_, x, k=k, seed=seed)

    # -- persistence ----------------------------------------------------------------------------
    def save(self, run_dir: str | Path, overwrite: bool = False) -> Path:
        """Write RUN_DIR/config.json, RUN_DIR/model.safetensors (no pickle) and the epochs'
        metrics ``history_`` as RUN_DIR/metrics.jsonl, holding the run directory's lock
        (``vaekit.lock``) while writing.

        A directory that holds a saved model alone (those files) is replaced. One that
        holds more, such as a ``vaekit train`` run with its checkpoints, metrics and pictures,
        is refused unless ``overwrite``, which first empties it (``checkpoint.clear_run``), so
        that nothing of the old run stays beside the new model. A directory with files but no
        run is refused whatever ``overwrite`` says: they are not vaekit's to delete, and a
        model saved among them would make them part of a run a later overwrite empties."""
        from .checkpoint import CONFIG_FILE, METRICS_FILE, MODEL_FILE, check_not_foreign, clear_run, run_entries, run_path, save_model, shown
        from .errors import CheckpointError
        from .lock import RunLock

        self._check_fitted()
        overwrite = check_bool("overwrite", overwrite)
        config = _as_held(self.config_, self.model_)  # refused before anything is touched
        run_dir = run_path(run_dir)
        with RunLock(run_dir):
            from .runs import recover_replaced

            recover_replaced(run_dir)  # an overwrite stopped by a kill: one run again
            check_not_foreign(run_dir, "save into a new or empty directory")
            entries = run_entries(run_dir)
            extra = [name for name in entries if name not in (CONFIG_FILE, MODEL_FILE, METRICS_FILE)]
            if CONFIG_FILE in entries and extra:
                if not overwrite:
                    raise CheckpointError(
                        f"{run_dir} holds a run with more than a saved model ({shown(extra)}); saving would replace only part "
                        "of it: pass overwrite=True to replace the whole run"
                    )
                clear_run(run_dir)
            try:
                save_model(run_dir, self.model_, config, history=list(getattr(self, "history_", None) or []))
            except OSError as e:  # a full disk, permissions: the model saved there before is intact
                raise CheckpointError(f"{run_dir}: cannot save ({e.strerror or e}); what it held before is intact") from None
        return run_dir

    @classmethod
    def from_run(cls, run_dir: str | Path) -> "VAE":
        """``vaekit.load``: the fitted model saved in RUN_DIR, its parameters the saved model's."""
        from .checkpoint import load_run, read_metrics

        config, model = load_run(run_dir)
        sections = {"model": config.model, "train": config.train, "data": config.data}
        values = {n: getattr(sections[sec], n) for n, (sec, _) in estimator_params().items() if sec in sections}
        # Loaded onto the CPU, where reduce-overhead's CUDA graphs do nothing (a refit would
        # refuse the option as inert): torch.compile's default mode there.
        if values.get("compile_mode") == "reduce-overhead":
            values["compile_mode"] = "default"
        est = cls(**dict(values, device="cpu", scaling=_named_scaling(config.model)))
        est.model_, est.config_, est.n_features_in_ = model, config, config.model.input_dim
        # The columns the model was fitted on, a DataFrame's (the API) or a CSV header (`vaekit
        # train`): later DataFrames must repeat them, names and order.
        if config.data.feature_names is not None:
            est.feature_names_in_ = np.asarray(config.data.feature_names, dtype=object)
        est.history_ = read_metrics(run_dir)
        return est


def _as_held(config: RunConfig, model: torch.nn.Module) -> RunConfig:
    """``config`` with the dtype ``model``'s parameters have now (a model moved by ``.double()``
    after fitting is saved, and loads back, as float64); CheckpointError for a dtype that a
    saved model cannot have."""
    from .config import DTYPES
    from .errors import CheckpointError

    held = str(next(model.parameters()).dtype).removeprefix("torch.")
    if held == config.train.dtype:
        return config
    if held not in DTYPES:
        raise CheckpointError(f"the model's parameters are {held}; a saved model is one of {', '.join(DTYPES)}: move it with model_.float() first")
    # bf16 autocast runs over float32 weights only: a model moved to float64 steps in float64.
    amp = "off" if held != "float32" and config.train.amp == "bf16" else config.train.amp
    return replace(config, train=replace(config.train, dtype=held, amp=amp))


def _fixed_scaling(scaling, standardize: str) -> tuple[float, float] | None:
    """The ``scaling`` parameter checked: None, or (shift, scale), finite, scale > 0."""
    if scaling is None:
        return None
    try:
        shift, scale = (float(v) for v in scaling)
    except (TypeError, ValueError):
        raise ConfigError(f"scaling must be a pair (shift, scale) of numbers or None, got {scaling!r}") from None
    if not (np.isfinite(shift) and np.isfinite(scale) and scale > 0):
        raise ConfigError(f"scaling must be (shift, scale) with both finite and scale > 0, got {scaling!r}")
    if standardize == "on":
        raise ConfigError("scaling fixes the input map, and standardize='on' would replace it by the training rows' mean and std: give one of them")
    return shift, scale


def _named_scaling(model_config) -> tuple[float, float] | None:
    """The ``scaling`` parameter of a saved model: its input map when that is one fixed (shift,
    scale) for every feature (a named dataset's units, digits' 0..16), not standardisation,
    which a refit learns again."""
    scaling = Scaling.of(model_config)
    if model_config.standardize == "on" or scaling is None or scaling.scale.size != 1 or scaling.shift.size != 1:
        return None
    return float(scaling.shift[0]), float(scaling.scale[0])


def _seed(seed) -> int:
    """A seed as the configs take it (an integer in [0, 2**63), numpy's too), else ConfigError."""
    from .config import TRAIN_OPTIONS

    return TRAIN_OPTIONS["seed"].check("seed", int(seed) if isinstance(seed, np.integer) else seed)


# What fit sets: a failed fit puts back what was there before.
_FITTED = ("n_features_in_", "feature_names_in_", "model_", "config_", "history_")
# One fit at a time per process (see VAE.fit): torch's random state is the process's.
_FIT_LOCK = threading.RLock()


def _numeric(X, what: str):
    """An object-dtype table of numbers (a DataFrame mixing bool and float columns, an array of
    Python floats) as float64, for check_data, which accepts numeric dtypes only."""
    frame = hasattr(X, "to_numpy") and hasattr(X, "columns")  # a DataFrame, without importing pandas
    if hasattr(X, "detach") and hasattr(X, "cpu"):  # a tensor, as numpy: images are reshaped next
        from .data.checks import _as_numpy

        return _as_numpy(X, what)
    if frame:
        _check_numeric_columns(X, what)
    table = X.to_numpy() if frame else X
    if getattr(table, "dtype", None) != object:
        return table
    if not frame and any(isinstance(v, (str, bytes)) for v in np.asarray(table).ravel()):
        # As a DataFrame's text column and an array of strings are: numpy would read '1.5'.
        raise NotNumbersError(f"{what} holds text; expected numbers (bool, int or float)")
    try:
        # pandas' nullable columns hold pd.NA for a missing value: NaN, which check_data locates.
        return X.to_numpy(dtype=np.float64, na_value=np.nan) if frame else np.asarray(table, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise NotNumbersError(f"{what} has entries that are not numbers ({e}); expected a 2-D table of numbers") from None


def _check_numeric_columns(frame, what: str) -> None:
    """A DataFrame's columns hold numbers (or bools, or pandas' nullable numbers): dates,
    durations and text, even text that spells numbers, are refused as a numpy array of them is
    (numpy would turn '1.5' into 1.5 and a date into nanoseconds)."""
    for name, dtype in frame.dtypes.items():
        kind = getattr(dtype, "kind", "O")
        text = kind == "O" and any(isinstance(v, (str, bytes)) for v in frame[name].to_numpy())
        if kind in "MmUS" or text:
            found = "text" if text or kind in "US" else str(dtype)
            raise NotNumbersError(f"{what} column {name!r} holds {found}; expected numbers (bool, int or float)")


def load(run_dir: str | Path) -> VAE:
    """The fitted model saved in RUN_DIR (by ``vaekit train`` or ``VAE.save``), on the CPU.

    Its parameters (``get_params``) are the saved model's own: the choices fit made for
    ``"auto"`` (likelihood, objective, standardize) and for ``threads=0`` are kept as made, so
    a ``clone`` refits the same kind of model; start from ``VAE()`` to have them made again."""
    return VAE.from_run(run_dir)
