"""What each epoch's batches are. The loop's contract (train.py's module docstring): the
dataset is reshuffled by one permutation per epoch, and every row is in exactly one batch of
every epoch, the last batch holding the remainder. Checked by recording the row indices every
step receives, against an independent reference for the first epoch (torch.randperm from a
generator seeded with the run's seed, which is what a seeded run must draw first)."""

from __future__ import annotations

import math

import pytest
import torch

from train_helpers import digits_split, small_model
from vaekit.config import TrainConfig
from vaekit.train import fit


def _recorded_batches(model, x_train, x_valid, config):
    """fit(...) with every step's row indices recorded: a list per epoch of index tensors."""
    seen: list[torch.Tensor] = []
    real_forward = model.forward

    def forward(objective, x, idx, eps, beta=1.0):
        seen.append(idx.detach().cpu().clone())
        return real_forward(objective, x, idx, eps, beta)

    model.forward = forward  # nn.Module.__call__ calls the instance's forward
    history = fit(model, x_train, x_valid, config)
    steps = math.ceil(len(x_train) / config.batch_size)
    assert len(seen) == steps * len(history)
    return [seen[e * steps : (e + 1) * steps] for e in range(len(history))]


@pytest.mark.parametrize("n, batch_size", [(1000, 128), (1280, 128), (7, 3)])
def test_every_epoch_is_a_fresh_permutation_and_keeps_the_last_partial_batch(n, batch_size):
    x_train, x_valid = digits_split()
    x_train = x_train[:n]
    config = TrainConfig(epochs=3, batch_size=batch_size, lr=1e-3, seed=4)
    epochs = _recorded_batches(small_model(0), x_train, x_valid, config)
    want_sizes = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    orders = []
    for batches in epochs:
        # Every row once per epoch: none dropped with a short last batch, none repeated.
        assert [len(b) for b in batches] == want_sizes
        order = torch.cat(batches)
        assert torch.equal(torch.sort(order).values, torch.arange(n))
        orders.append(order)
    # The first epoch's order is the seeded run's first draw ...
    assert torch.equal(orders[0], torch.randperm(n, generator=torch.Generator().manual_seed(config.seed)))
    # ... and each epoch is shuffled anew: not the identity, not the epoch before's.
    for a, b in zip(orders, orders[1:]):
        assert not torch.equal(a, b)
    assert all(not torch.equal(o, torch.arange(n)) for o in orders)
