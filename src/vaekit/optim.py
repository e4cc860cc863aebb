"""torch's Adam and SparseAdam, less their lazy import of torch._dynamo; and Adam on
normalized gradients.

The stock classes import torch._dynamo (0.9 s once per process on a 2-core CPU) from methods
that only need it while dynamo traces the optimizer. vaekit steps its optimizers eagerly (a
compiled run compiles the model's forward only), so these give bit-identical updates.
"""

from __future__ import annotations

import contextlib
import inspect

import torch


def _undecorated(method):
    """``method`` without torch's torch._dynamo.disable wrapper (itself where it has none)."""
    return getattr(method, "__wrapped__", method)


class _Eager:
    """The optimizer methods that torch wraps in ``torch._dynamo.disable`` (add_param_group,
    zero_grad, state_dict, load_state_dict), called unwrapped. Each wrapper imports
    torch._dynamo on its first call, 0.9 s once per process on this CPU (a 1-epoch fit of the
    digits takes 0.05 s), and otherwise only matters while dynamo traces the optimizer: this
    loop calls it eagerly (``compile`` compiles the model's forward only), so the numbers are
    bit-identical to the stock classes'."""

    add_param_group = _undecorated(torch.optim.Optimizer.add_param_group)
    zero_grad = _undecorated(torch.optim.Optimizer.zero_grad)
    state_dict = _undecorated(torch.optim.Optimizer.state_dict)
    load_state_dict = _undecorated(torch.optim.Optimizer.load_state_dict)


# Adam.step as written, without its decorator (_use_grad_for_differentiable), which imports
# torch._dynamo on every call for two graph breaks around the update.
_ADAM_STEP = inspect.unwrap(torch.optim.Adam.step)


class Adam(_Eager, torch.optim.Adam):
    def step(self, closure=None):
        # What the decorator does besides the graph breaks: grad mode off during the update.
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return _ADAM_STEP(self, closure)


class SparseAdam(_Eager, torch.optim.SparseAdam):
    pass  # its step is only @torch.no_grad()


# Added to each gradient's norm, so that a zero gradient stays zero instead of 0/0.
NORM_EPS = 1e-7


class NormalizedAdam(Adam):
    """Adam on normalized gradients: each parameter tensor's gradient g is replaced by
    g / (‖g‖₂ + 1e-7) before the Adam update (the block-normalized gradient of Yu et al. 2017,
    "Block-normalized gradient method: an empirical study for training deep neural networks";
    Tomczak & Welling 2018 trained the VampPrior models so, as ``AdamNormGrad``). A step's size
    no longer depends on the scale of the loss, and a batch with an outsized gradient moves the
    moments no more than any other. The state is Adam's, so a checkpoint of either loads."""

    @torch.no_grad()
    def normalize_gradients(self) -> None:
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            norms = torch._foreach_norm(grads)
            torch._foreach_add_(norms, NORM_EPS)
            torch._foreach_div_(grads, norms)

    def step(self, closure=None):
        if closure is not None:
            # The closure recomputes the gradients: they are normalized after it, not before.
            with torch.enable_grad():
                loss = closure()
            self.normalize_gradients()
            super().step()
            return loss
        self.normalize_gradients()
        return super().step()


class WeightAverage:
    """An exponential moving average of the shared parameters (θ, φ, pseudo-inputs), the
    exponential form of Polyak & Juditsky's (1992) averaging: after optimizer step t,
    θ̄ ← d_t θ̄ + (1 − d_t) θ with d_t = min(decay, (1 + t)/(10 + t)), the short memory of the
    first steps as in tf.train.ExponentialMovingAverage(num_updates), so that θ̄ does not carry
    the initial weights for 1/(1 − decay) steps. Averaged weights are what one evaluates (Kingma
    et al. 2016 report their likelihoods with them): the noise of the last steps averages out.

    Per-point tables (vi, map) are left out: a row moves once per epoch, so an average over
    steps would only lag it. Buffers are not averaged either (they are not trained).
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie in (0, 1), got {decay!r}")
        local = {id(p) for p in model.inference.local_parameters()}
        named = [(name, p) for name, p in model.named_parameters() if id(p) not in local]
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        # Views of the weights outside autograd, made once: the update runs after every step.
        self.weights = [p.detach() for p in self.params]
        self.average = [w.clone() for w in self.weights]
        self.decay, self.updates = decay, 0

    def rate(self) -> float:
        """d_t of the next update."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current weights in: θ̄ ← θ̄ + (1 − d_t)(θ − θ̄)."""
        torch._foreach_lerp_(self.average, self.weights, 1.0 - self.rate())
        self.updates += 1

    @contextlib.contextmanager
    def applied(self):
        """The model holds the averaged weights inside the block, its own again after it
        (however the block ends)."""
        with torch.no_grad():
            own = [w.clone() for w in self.weights]
            torch._foreach_copy_(self.weights, self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.weights, own)

    def state(self) -> dict[str, torch.Tensor]:
        """The averages by parameter name, for a checkpoint."""
        return dict(zip(self.names, self.average))

    @torch.no_grad()
    def load(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        """Restore ``state()`` and the update count; ValueError where they do not fit the model."""
        missing = [name for name in self.names if name not in tensors]
        if missing:
            raise ValueError(f"no average of {missing[0]}")
        for name, avg, p in zip(self.names, self.average, self.params):
            if tensors[name].shape != p.shape or tensors[name].dtype != p.dtype:
                raise ValueError(
                    f"the average of {name} is {tuple(tensors[name].shape)} {str(tensors[name].dtype).removeprefix('torch.')}, "
                    f"the weight {tuple(p.shape)} {str(p.dtype).removeprefix('torch.')}"
                )
            avg.copy_(tensors[name])
        if type(updates) is not int or updates < 0:
            raise ValueError(f"update count {updates!r}")
        self.updates = updates
