"""Running the CLI in-process from tests."""

from __future__ import annotations

from vaekit.cli import main


def cli(capsys, *argv) -> tuple[int, str, str]:
    """``vaekit ARGV`` in-process: (exit code, stdout, stderr). An exception other than
    SystemExit (argparse) propagates, so a traceback where an error line is due fails the test."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_train_refused(capsys, tmp_path, argv, culprits) -> None:
    """``vaekit train ... ARGV`` is a usage error: exit 2, one stderr line naming every culprit,
    no traceback, and no run directory left behind."""
    run = tmp_path / "r"
    code, out, err = cli(capsys, "train", "--data", "digits", "--epochs", "1", "--eval-k", "2", "--out", run, *argv)
    assert code == 2
    assert out == "" and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaekit: error: "), err
    for c in culprits:
        assert c in lines[0], (c, lines[0])
    assert not run.exists()


def assert_resume_equals_straight(tmp_path, common: list[str]) -> dict:
    """Train ``common`` for 3 epochs straight, and for 2 then ``--resume`` to 3: the last
    checkpoints hold the same bits (random-number state aside). Returns the straight run's tensors."""
    import torch

    from vaekit.checkpoint import load_tensors

    assert main(["train", *common, "--epochs", "3", "--out", str(tmp_path / "straight")]) == 0
    assert main(["train", *common, "--epochs", "2", "--out", str(tmp_path / "resumed")]) == 0
    assert main(["train", "--out", str(tmp_path / "resumed"), "--resume", "--epochs", "3"]) == 0
    a, _ = load_tensors(tmp_path / "straight" / "last.safetensors")
    b, _ = load_tensors(tmp_path / "resumed" / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if not k.startswith("rng."))
    return a


def assert_encodes_every_group(capsys, run, out, sizes: dict[str, int]) -> dict:
    """``vaekit encode RUN --out OUT.npz --json`` on digits: the report names each latent group
    with its size, and the file holds μ and log σ² of every group, whose μ columns are those of
    the whole draw, in group order. Returns the report."""
    import json

    import numpy as np

    capsys.readouterr()
    assert main(["encode", str(run), "--data", "digits", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["groups"] == sizes
    z, n, start = np.load(out), report["n"], 0
    assert z["mu"].shape == (n, sum(sizes.values()))
    for name, size in sizes.items():
        assert z[f"mu_{name}"].shape == (n, size) and z[f"logvar_{name}"].shape == (n, size)
        np.testing.assert_array_equal(z["mu"][:, start : start + size], z[f"mu_{name}"])
        start += size
    return report
