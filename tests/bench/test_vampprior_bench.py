"""bench/vampprior.py: Pythae's VAMP built by the script computes the same prior and
likelihood as the vaekit model it is given (runs where Pythae is installed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from bench_helpers import load_bench


def test_the_pythae_twin_is_the_same_model():
    pytest.importorskip("pythae")
    bench = load_bench("vampprior")
    x_train = (np.random.default_rng(0).random((200, 784)) < 0.3).astype(np.float32)
    model = bench.vaekit_model(None, x_train).eval()
    twin = bench.pythae_twin(model)
    z = torch.randn(7, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # Pythae leaves out the d/2 log 2π that cancels against q's in its log-weights.
        want = model.log_pz(z) + 20 * math.log(2 * math.pi)
        torch.testing.assert_close(twin._log_p_z(z), want, rtol=1e-5, atol=1e-4)
        x = torch.as_tensor(x_train[:7])
        recon = twin.decoder(z)["reconstruction"]
        log_px_z = -torch.nn.functional.binary_cross_entropy(recon, x, reduction="none").sum(-1)
        torch.testing.assert_close(log_px_z, model.log_px_given_z(z, x), rtol=1e-5, atol=1e-3)


def test_a_run_whose_pseudo_inputs_are_mapped_by_sigmoid_is_refused():
    """Pythae maps its pseudo-inputs by hardtanh: the twin of a --pseudo-map sigmoid run would
    read the sigmoid's logits as pixels and be another model (refused before Pythae is read)."""
    bench = load_bench("vampprior")
    model = bench.vaekit_model(None, (np.random.default_rng(0).random((50, 784)) < 0.3).astype(np.float32))
    model.prior.map = "sigmoid"
    with pytest.raises(SystemExit, match=r"Pythae maps pseudo-inputs by hardtanh \(--pseudo-map clamp\); this run has --pseudo-map sigmoid"):
        bench.pythae_twin(model)


def test_the_seed_spread_is_the_standard_deviation_of_the_seeds_estimates():
    import statistics

    bench = load_bench("vampprior")
    x = (np.random.default_rng(0).random((200, 784)) < 0.3).astype(np.float32)
    model = bench.vaekit_model(None, x).eval()
    seed0 = bench.vaekit_log_px(model, x[:3], 20)
    by_seed, spread = bench.seed_spread(model, x[:3], 20, 4, seed0)
    # Seed s is the estimate vaekit gives under that seed; the seeds differ by Monte Carlo noise alone.
    assert by_seed[0] == seed0 and by_seed[2] == bench.vaekit_log_px(model, x[:3], 20, seed=2)
    assert len(set(by_seed)) == 4 and spread == pytest.approx(statistics.stdev(by_seed)) and spread > 0
    assert bench.seed_spread(model, x[:3], 20, 1, seed0) == ([seed0], None)
