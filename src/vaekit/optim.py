"""torch's Adam and SparseAdam, less their lazy import of torch._dynamo; and Adam on
normalized gradients.

The stock classes import torch._dynamo (0.9 s once per process on a 2-core CPU) from methods
that only need it while dynamo traces the optimizer. vaekit steps its optimizers eagerly (a
compiled run compiles the model's forward only), so these give bit-identical updates.
"""

from __future__ import annotations

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
