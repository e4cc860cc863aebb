"""bench/vampprior.py: Pythae's VAMP built by the script computes the same prior and
likelihood as the vaekit model it is given (runs where Pythae is installed)."""

from __future__ import annotations

import math
from pathlib import Path

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


def test_the_script_reports_its_estimate_spread_over_seeds(monkeypatch, capsys):
    pytest.importorskip("pythae")
    import json
    import statistics
    import sys

    if not (Path(__file__).resolve().parents[3] / "shared/data/binarized_mnist/binarized_mnist.npz").is_file():
        pytest.skip("needs ../shared/data/binarized_mnist")
    bench = load_bench("vampprior")
    monkeypatch.setattr(sys, "argv", ["vampprior.py", "--rows", "2", "--k", "20", "--rounds", "1", "--steps", "1", "--seeds", "3"])
    capsys.readouterr()
    bench.main()
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    by_seed = result["vaekit_log_px_by_seed"]
    # Seed 0 is the timed estimate; the others differ from it by Monte Carlo noise alone.
    assert len(by_seed) == 3 and by_seed[0] == result["log_px"]["vaekit"] and len(set(by_seed)) == 3
    assert result["vaekit_log_px_sd"] == pytest.approx(statistics.stdev(by_seed))
    assert f"standard deviation {statistics.stdev(by_seed):.3f} nats" in lines[-2]

