"""Tests of vaekit.data: loaders give the right numbers, and every user error is a DataError
naming its culprit."""

from __future__ import annotations

import hashlib
import io
import warnings
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from vaekit import data as vdata
from vaekit.config import DataConfig
from vaekit.data import (
    NAMED,
    SPLITS,
    Dataset,
    check_data,
    download_binarized_mnist,
    find_binarized_mnist,
    load_array,
    load_dataset,
)
from vaekit.errors import DataError, VaekitWarning
from vaekit.registry import DATASETS

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared/data/binarized_mnist"
needs_mnist = pytest.mark.skipif(
    not (SHARED_MNIST / "binarized_mnist.npz").is_file(), reason="shared binarized_mnist.npz absent"
)


@pytest.fixture(autouse=True)
def _isolated_locations(tmp_path, monkeypatch):
    """No test may find the user's real cache or VAEKIT_DATA, nor reach the network."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("VAEKIT_DATA", raising=False)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------


def test_digits_shapes_values_and_seeded_split():
    from sklearn.datasets import load_digits

    ds = load_dataset(DataConfig(source="digits", valid_fraction=0.1, test_fraction=0.2, split_seed=3))
    # 1797 rows: round(179.7) = 180 valid, round(359.4) = 359 test, 1258 train.
    assert ds.train.shape == (1258, 64)
    assert ds.valid.shape == (180, 64)
    assert ds.test.shape == (359, 64)
    assert ds.dim == 64 and ds.image_shape == (8, 8) and ds.name == "digits"
    for s in ("train", "valid", "test"):
        x = ds.split(s)
        assert x.dtype == np.float32 and x.flags.c_contiguous
        assert x.min() == 0.0 and x.max() == 16.0  # the raw pixels; a model sees them / 16
    assert ds.scaling == (0.0, 16.0)

    ref = load_digits()
    perm = np.random.default_rng(3).permutation(1797)
    np.testing.assert_array_equal(ds.train, ref.data[perm[:1258]].astype(np.float32))
    np.testing.assert_array_equal(ds.valid, ref.data[perm[1258:1438]].astype(np.float32))
    np.testing.assert_array_equal(ds.test, ref.data[perm[1438:]].astype(np.float32))
    np.testing.assert_array_equal(ds.labels["train"], ref.target[perm[:1258]])
    np.testing.assert_array_equal(ds.split_labels("test"), ref.target[perm[1438:]])

    # 'all' is every row in the dataset's own order, labels with them.
    np.testing.assert_array_equal(ds.split("all"), ref.data.astype(np.float32))
    np.testing.assert_array_equal(ds.split_labels("all"), ref.target)


def test_digits_same_seed_same_split_other_seed_differs():
    a = load_dataset(DataConfig(source="digits", split_seed=7))
    b = load_dataset(DataConfig(source="digits", split_seed=7))
    c = load_dataset(DataConfig(source="digits", split_seed=8))
    for s in ("train", "valid", "test"):
        np.testing.assert_array_equal(a.split(s), b.split(s))
        np.testing.assert_array_equal(a.split_labels(s), b.split_labels(s))
    assert a.train.shape == c.train.shape
    assert not np.array_equal(a.train, c.train)


def test_zero_valid_fraction_gives_empty_valid():
    ds = load_dataset(DataConfig(source="digits", valid_fraction=0.0, test_fraction=0.5))
    assert ds.valid.shape == (0, 64)
    assert ds.test.shape == (899, 64)  # round half up: 898.5 -> 899
    assert ds.train.shape == (898, 64)


@pytest.mark.parametrize(
    "n, fraction, rows",
    [(100, 0.145, 15), (1000, 0.0145, 15), (20, 0.025, 1), (3, 0.5, 2), (7, 0.5, 4), (25, 0.1, 3), (35, 0.1, 4), (100, 0.144, 14), (10, 1 / 3, 3)],
)
def test_split_rows_round_the_fraction_as_written_half_up(n, fraction, rows):
    """n·fraction of the decimal the user gave, half up: float's 100·0.145 = 14.4999… would
    round to 14 where the product written out is 14.5; 2.5 and 3.5 both round up."""
    from vaekit.data.splits import split_sizes

    assert split_sizes(n, fraction, 0.0) == (n - rows, rows, 0)
    assert split_sizes(n, 0.0, fraction) == (n - rows, 0, rows)


def test_unknown_split_lists_choices():
    ds = Dataset("toy", *(np.zeros((2, 1), np.float32),) * 3, None, {"train": None, "valid": None, "test": None})
    with pytest.raises(DataError, match=r"unknown split 'validation'; choose one of: train, valid, test, all"):
        ds.split("validation")
    with pytest.raises(DataError, match="unknown split 'x'"):
        ds.split_labels("x")
    assert ds.split_labels("all") is None
    assert SPLITS == ("train", "valid", "test", "all") and NAMED == ("digits", "swiss_roll", "binarized_mnist")


# --------------------------------------------------------------------------------------
# swiss_roll
# --------------------------------------------------------------------------------------


def test_swiss_roll_lies_on_its_generating_surface():
    """Every point is (t cos t, h, t sin t) / 2 for its t in [1.5π, 4.5π] and |h| ≤ 10.5: t is
    recovered as 2·√(x₁² + x₃²), and cos t, sin t from the direction of (x₁, x₃)."""
    from vaekit.data.named.swiss_roll import swiss_roll

    x, t, labels = swiss_roll(2000, seed=3)
    assert x.shape == (2000, 3) and x.dtype == np.float32 and t.shape == (2000,)
    assert t.min() >= 1.5 * np.pi and t.max() <= 4.5 * np.pi
    xd = x.astype(np.float64) * 2
    radius = np.hypot(xd[:, 0], xd[:, 2])
    np.testing.assert_allclose(radius, t, rtol=1e-6)
    np.testing.assert_allclose(xd[:, 0], t * np.cos(t), atol=1e-5)
    np.testing.assert_allclose(xd[:, 2], t * np.sin(t), atol=1e-5)
    assert np.abs(xd[:, 1]).max() <= 10.5 + 1e-5
    # labels: t in 6 equal bins, 0 at the inner end; each bin holds about a sixth of the points
    np.testing.assert_array_equal(labels, np.floor((t - 1.5 * np.pi) / np.pi * 2).astype(np.int64))
    counts = np.bincount(labels, minlength=6)
    assert len(counts) == 6 and counts.min() > 2000 / 6 * 0.8
    # each coordinate's spread well above the Gaussian likelihood's starting σ = 1
    assert np.all((x.std(axis=0) > 2.8) & (x.std(axis=0) < 3.7))


def test_swiss_roll_is_fixed_by_its_seed():
    from vaekit.data.named.swiss_roll import swiss_roll

    a, b, c = swiss_roll(100, seed=1), swiss_roll(100, seed=1), swiss_roll(100, seed=2)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])


def test_swiss_roll_named_dataset_splits():
    """5000 rows split 3500/500/1000 by the default fractions 0.1 and 0.2, labelled, no image
    shape; the data are the same for any split seed, only their split changes."""
    a = load_dataset(DataConfig(source="swiss_roll"))
    assert a.name == "swiss_roll" and a.image_shape is None and a.dim == 3
    assert [len(a.split(s)) for s in ("train", "valid", "test")] == [3500, 500, 1000]
    assert [a.split_labels(s).shape for s in ("train", "valid", "test")] == [(3500,), (500,), (1000,)]
    b = load_dataset(DataConfig(source="swiss_roll", split_seed=1))
    assert not np.array_equal(a.train, b.train)
    rows = lambda ds: np.sort(ds.split("all").view("V12").ravel())  # noqa: E731  (rows as opaque records)
    np.testing.assert_array_equal(rows(a), rows(b))
    from vaekit.data.named.swiss_roll import swiss_roll

    np.testing.assert_array_equal(rows(a), np.sort(swiss_roll(5000, seed=0)[0].view("V12").ravel()))
    np.testing.assert_array_equal(np.sort(a.split_labels("all")), np.sort(b.split_labels("all")))


# --------------------------------------------------------------------------------------
# user files
# --------------------------------------------------------------------------------------


def test_npy_round_trip_and_fraction_split(tmp_path):
    x = np.arange(200, dtype=np.float64).reshape(50, 4)
    np.save(tmp_path / "x.npy", x)
    ds = load_dataset(DataConfig(source=str(tmp_path / "x.npy"), valid_fraction=0.1, test_fraction=0.2, split_seed=1))
    assert (ds.train.shape, ds.valid.shape, ds.test.shape) == ((35, 4), (5, 4), (10, 4))
    assert ds.image_shape is None and ds.labels == {"train": None, "valid": None, "test": None}
    perm = np.random.default_rng(1).permutation(50)
    np.testing.assert_array_equal(ds.test, x[perm[40:]])
    # float64 values keep their precision until a model's input map (float32 would round them);
    # 'all' is the file's rows in the file's order.
    np.testing.assert_array_equal(ds.split("all"), x)
    assert ds.train.dtype == np.float64

    xa, y, shape = load_array(str(tmp_path / "x.npy"))
    np.testing.assert_array_equal(xa, x)
    assert xa.dtype == np.float64 and y is None and shape is None
    np.save(tmp_path / "x32.npy", x.astype(np.float32))
    assert load_dataset(DataConfig(source=str(tmp_path / "x32.npy"))).train.dtype == np.float32


def test_relative_path_found_in_data_dir(tmp_path):
    np.save(tmp_path / "rel.npy", np.ones((6, 2), np.int16))
    x, _, _ = load_array("rel.npy", data_dir=str(tmp_path))
    assert x.shape == (6, 2) and x.dtype == np.float32 and x.sum() == 12


def test_3d_npy_gets_image_shape_and_4d_keeps_channels(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 2, size=(20, 5, 7), dtype=np.uint8)
    np.save(tmp_path / "imgs.npy", imgs)
    ds = load_dataset(DataConfig(source=str(tmp_path / "imgs.npy")))
    assert ds.image_shape == (5, 7) and ds.dim == 35
    perm = np.random.default_rng(0).permutation(20)
    np.testing.assert_array_equal(ds.train, imgs.reshape(20, 35)[perm[:14]].astype(np.float32))
    np.testing.assert_array_equal(ds.split("all"), imgs.reshape(20, 35).astype(np.float32))

    np.save(tmp_path / "rgb.npy", np.zeros((4, 3, 2, 2), np.float32))
    x, _, shape = load_array(str(tmp_path / "rgb.npy"))
    assert shape == (3, 2, 2) and x.shape == (4, 12)


def test_bool_npy_becomes_float(tmp_path):
    np.save(tmp_path / "b.npy", np.array([[True, False], [False, True], [True, True]]))
    x, _, _ = load_array(str(tmp_path / "b.npy"))
    np.testing.assert_array_equal(x, [[1, 0], [0, 1], [1, 1]])
    assert x.dtype == np.float32


def test_npz_with_explicit_splits_uses_them_exactly(tmp_path):
    rng = np.random.default_rng(0)
    tr, va, te = rng.normal(size=(30, 3)), rng.normal(size=(7, 3)), rng.normal(size=(9, 3))
    np.savez(
        tmp_path / "s.npz", train=tr, valid=va, test=te,
        train_labels=np.arange(30), valid_labels=np.arange(7), test_labels=np.arange(9.0),
    )
    ds = load_dataset(DataConfig(source=str(tmp_path / "s.npz"), valid_fraction=0.5, test_fraction=0.4))
    np.testing.assert_array_equal(ds.train, tr)
    np.testing.assert_array_equal(ds.valid, va)
    np.testing.assert_array_equal(ds.test, te)
    np.testing.assert_array_equal(ds.labels["test"], np.arange(9))
    assert ds.labels["test"].dtype == np.int64
    np.testing.assert_array_equal(ds.split_labels("all"), np.concatenate([np.arange(30), np.arange(7), np.arange(9)]))

    x, y, _ = load_array(str(tmp_path / "s.npz"))
    np.testing.assert_array_equal(x, np.concatenate([tr, va, te]))
    assert y.shape == (46,)


@pytest.mark.parametrize("bad", [np.array([0.0, 1.5, 2.0]), np.array(["a", "b", "c"])], ids=["fractions", "text"])
def test_splits_labels_are_all_read_or_none(tmp_path, bad):
    """One split's labels that are no classes drop every split's, with a warning: labels that
    covered only some rows could not be lined up with split('all') or load_array's rows."""
    from vaekit.errors import VaekitWarning

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "s.npz", train=rng.normal(size=(8, 2)), test=rng.normal(size=(3, 2)), train_labels=np.arange(8), test_labels=bad)
    with pytest.warns(VaekitWarning, match=r"test_labels\]: labels of dtype .* are no integer class labels"):
        x, y, _ = load_array(str(tmp_path / "s.npz"))
    assert x.shape == (11, 2) and y is None
    with pytest.warns(VaekitWarning):
        ds = load_dataset(DataConfig(source=str(tmp_path / "s.npz"), valid_fraction=0.25))
    assert ds.labels == {"train": None, "valid": None, "test": None} and ds.split_labels("all") is None


@pytest.mark.parametrize("other, said", [
    ("y", "array 'y' is ignored \\(labels of one data array\\); with explicit splits the splits' labels are train_labels, valid_labels, test_labels"),
    ("labels", "array 'labels' is ignored \\(labels of one data array\\)"),
    ("x", "array 'x' is ignored \\(rows of one data array\\); with explicit splits the rows are train, valid and test"),
])
def test_the_other_conventions_arrays_beside_splits_are_ignored_with_a_warning(tmp_path, other, said):
    """y (of any length) beside train/test is the single-array convention's: read neither as
    labels nor as rows, and said so; the splits and their own labels are read as before."""
    import warnings

    from vaekit.errors import VaekitWarning

    tr, te = np.arange(40.0).reshape(20, 2), np.full((5, 2), -1.0)
    np.savez(tmp_path / "s.npz", train=tr, test=te, **{other: np.arange(13)})
    with pytest.warns(VaekitWarning, match=said):
        ds = load_dataset(DataConfig(source=str(tmp_path / "s.npz"), valid_fraction=0.25))
    np.testing.assert_array_equal(ds.test, te.astype(np.float32))
    assert ds.labels["train"] is None and len(ds.train) + len(ds.valid) == 20
    np.savez(tmp_path / "t.npz", train=tr, test=te, train_labels=np.arange(20), test_labels=np.arange(5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(DataConfig(source=str(tmp_path / "t.npz"), valid_fraction=0.25))


def test_npz_without_valid_carves_it_from_train(tmp_path):
    tr, te = np.arange(40.0).reshape(20, 2), np.full((5, 2), -1.0)
    np.savez(tmp_path / "s.npz", train=tr, test=te, train_labels=np.arange(20), test_labels=np.zeros(5, int))
    ds = load_dataset(DataConfig(source=str(tmp_path / "s.npz"), valid_fraction=0.25, test_fraction=0.2, split_seed=2))
    np.testing.assert_array_equal(ds.test, te.astype(np.float32))  # test fraction does not apply
    assert ds.train.shape == (15, 2) and ds.valid.shape == (5, 2)
    perm = np.random.default_rng(2).permutation(20)
    np.testing.assert_array_equal(ds.train, tr[perm[:15]].astype(np.float32))
    np.testing.assert_array_equal(ds.valid, tr[perm[15:]].astype(np.float32))
    # labels follow their rows: row i of tr is (2i, 2i+1) with label i
    np.testing.assert_array_equal(ds.labels["valid"], ds.valid[:, 0] / 2)


def test_npz_single_array_with_labels(tmp_path):
    x = np.arange(30.0).reshape(10, 3)
    np.savez(tmp_path / "one.npz", x=x, y=np.arange(10))
    ds = load_dataset(DataConfig(source=str(tmp_path / "one.npz"), valid_fraction=0.2, test_fraction=0.2))
    for s in ("train", "valid", "test"):
        np.testing.assert_array_equal(ds.split_labels(s), ds.split(s)[:, 0] / 3)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (6, 2, 2)

    np.savez(tmp_path / "anon.npz", np.ones((4, 2)))  # saved as arr_0
    x2, y2, _ = load_array(str(tmp_path / "anon.npz"))
    assert x2.shape == (4, 2) and y2 is None


def test_csv_with_header(tmp_path):
    p = write_text(tmp_path / "h.csv", "a,b,c\n1,2,3\n4,5.5,-6\n7,8,9e1\n")
    x, y, shape = load_array(str(p))
    np.testing.assert_array_equal(x, np.array([[1, 2, 3], [4, 5.5, -6], [7, 8, 90]], np.float32))
    assert y is None and shape is None


def test_csv_without_header_tsv_and_txt(tmp_path):
    p = write_text(tmp_path / "n.csv", "1,2\n3,4\n\n5,6\n")
    np.testing.assert_array_equal(load_array(str(p))[0], [[1, 2], [3, 4], [5, 6]])
    p = write_text(tmp_path / "t.tsv", "x\ty\n1\t2\n3\t4\n")
    np.testing.assert_array_equal(load_array(str(p))[0], [[1, 2], [3, 4]])
    np.savetxt(tmp_path / "s.txt", np.array([[0.5, 1.5], [2.5, 3.5]]), header="u v")  # '# u v' comment
    np.testing.assert_array_equal(load_array(str(tmp_path / "s.txt"))[0], [[0.5, 1.5], [2.5, 3.5]])


def test_semicolon_separated_csv(tmp_path):
    """Spreadsheets in many locales separate cells by ';': read as such when the first row has
    ';' and no ','; a decimal comma is refused with the reason, not taken for a header."""
    p = write_text(tmp_path / "semi.csv", "a;b;c\n1;2;3\n4.5;5;-6\n")
    np.testing.assert_array_equal(load_array(str(p))[0], [[1, 2, 3], [4.5, 5, -6]])
    p = write_text(tmp_path / "bare.csv", "1;2\n3;4\n")
    np.testing.assert_array_equal(load_array(str(p))[0], [[1, 2], [3, 4]])
    p = write_text(tmp_path / "comma.csv", "1,5;2\n3,5;4\n")
    with pytest.raises(DataError, match=r"row 1, column 2 is '5;2'; expected a number \(cells are separated by ','"):
        load_array(str(p))


def test_csv_dataset_split(tmp_path):
    rows = "\n".join(f"{i},{2 * i}" for i in range(10))
    p = write_text(tmp_path / "d.csv", "i,j\n" + rows + "\n")
    ds = load_dataset(DataConfig(source=str(p), valid_fraction=0.1, test_fraction=0.1))
    assert (ds.train.shape, ds.valid.shape, ds.test.shape) == ((8, 2), (1, 2), (1, 2))
    np.testing.assert_array_equal(np.sort(ds.split("all")[:, 0]), np.arange(10))


# --- errors in user files --------------------------------------------------------------


@pytest.mark.parametrize(
    "text, match",
    [
        ("1,2\n3,x\n", r"row 2, column 2 is 'x'; expected a number"),
        ("a,b\n1,2\nfoo,4\n", r"row 3, column 1 is 'foo'"),
        ("1,2\n3,\n", r"row 2, column 2 is empty"),
        ("a,b\n1,2\n3,4,5\n", r"row 3 has 3 columns, but row 2 has 2"),
        ("a,b,c\n1,2\n", r"row 2 has 2 columns, but the header \(row 1\) has 3"),
        ("a,b\n", r"has a header \(row 1\) but no data rows"),
        ("\n\n", r"contains no rows"),
        ("a,b\n1,2\n3,nan\n4,5\n", r"contains NaN \(first at row 3, column 2\)"),
        ("1,2\n3,4\n-inf,5\n", r"contains infinity \(first at row 3, column 1\)"),
        ("1,2\n3,Infinity\n", r"contains infinity \(first at row 2, column 2\)"),
        ("a,b\n1,2\n1_000,4\n", r"row 3, column 1 is '1_000'; expected a number"),
        ("1_000,2\n3,4\n", r"row 1, column 1 is '1_000'; expected a number \(digits grouped by ',' or '_' are no number here: write 1000\)"),  # a data row, not a header
        # A spreadsheet's grouped digits, quoted: a data row too, not a header of names "1,234" and "5".
        ('"1,234",5\n999,4\n', r"row 1, column 1 is '1,234'; expected a number \(digits grouped by ',' or '_' are no number here: write 1234\)"),
        ('a,b\n"-12,345.5",5\n', r"row 2, column 1 is '-12,345.5'; expected a number \(digits grouped"),
        ('a,b,c\n1,2,3\n"1\n2",3,4\n', r"row 3 has 1 columns, but row 2 has 3 \(a quoted cell holds a line break"),
        ("1,2\n3,-1e400\n", r"row 2, column 2 is '-1e400', beyond float64's range"),
        ("a,a,b\n1,2,3\n", r"the header \(row 1\) names columns 1 and 2 both 'a'; give each column a name of its own"),
        ("x,,\n1,2,3\n", r"the header \(row 1\) gives column 2 no name; name every column"),
        # Cells of text throughout: no header with repeated names, but cells that are no numbers.
        ("false,false,true\ntrue,false,false\n", r"row 2, column 1 is 'true'; expected a number \(write truth values as 1 and 0\)"),
        ("a,b\nTRUE,1\n", r"row 2, column 1 is 'TRUE'; expected a number \(write truth values as 1 and 0\)"),
        # A missing value among numbers in row 1 makes it a data row with a gap, not a header.
        ("NA,2,3\n4,5,6\n", r"row 1, column 1 is 'NA'; expected a number \(a missing value: every cell needs a number"),
        ("a,b\n1,?\n", r"row 2, column 2 is '\?'; expected a number \(a missing value"),
        # Integers float64 cannot hold exactly (2^53 + 1), as a .npy of int64 is refused.
        ("id,v\n9007199254740992,1\n9007199254740993,2\n", r"row 3, column 1 is 9007199254740993, an integer beyond ±2\^53"),
        ("1,-90071992547409930\n", r"row 1, column 2 is -90071992547409930, an integer beyond ±2\^53"),
        ("1.5 2.5 3.5\n4 5 6\n", r"row 1 holds numbers separated by spaces, which a \.csv file does not split on; name it \.txt"),
    ],
)
def test_csv_errors_name_row_and_column(tmp_path, text, match):
    p = write_text(tmp_path / "bad.csv", text)
    with pytest.raises(DataError, match=match) as e:
        load_dataset(DataConfig(source=str(p)))
    assert str(p) in str(e.value)


def test_non_utf8_csv(tmp_path):
    p = tmp_path / "bin.csv"
    p.write_bytes(b"\xff\xfe\x00\x81,2\n")
    with pytest.raises(DataError, match=r"bin\.csv: could not be read as text \(not UTF-8\)"):
        load_array(str(p))


def test_nan_in_npy_caught_at_load(tmp_path):
    x = np.ones((10, 3))
    x[4, 2] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(DataError, match=r"nan\.npy contains NaN \(first at row 5, column 3\)"):
        load_dataset(DataConfig(source=str(tmp_path / "nan.npy")))


def test_one_d_npy_gets_reshape_hint(tmp_path):
    np.save(tmp_path / "v.npy", np.arange(5.0))
    with pytest.raises(DataError, match=r"v\.npy: expected a 2-D array \(rows = datapoints\), got 1-D array of shape \(5,\); Reshape your data with x\.reshape\(-1, 1\)"):
        load_array(str(tmp_path / "v.npy"))


def test_five_d_and_string_arrays(tmp_path):
    np.save(tmp_path / "5d.npy", np.zeros((2, 1, 1, 1, 1)))
    with pytest.raises(DataError, match=r"5d\.npy: expected 2-D .* got 5-D array of shape \(2, 1, 1, 1, 1\)"):
        load_array(str(tmp_path / "5d.npy"))
    np.save(tmp_path / "s.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(DataError, match=r"s\.npy has dtype <U1; expected numbers"):
        load_array(str(tmp_path / "s.npy"))


def test_object_npy_is_refused(tmp_path):
    np.save(tmp_path / "o.npy", np.array([[1, None]], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"o\.npy: could not be read as a \.npy array .*Python objects"):
        load_array(str(tmp_path / "o.npy"))


def test_npz_member_of_objects_is_ignored_unless_the_data_are_in_it(tmp_path):
    """Another member of Python objects (metadata, say) is ignored as other arrays are; one
    the data would be read from is refused, named."""
    x = np.random.default_rng(0).random((30, 4))
    meta = np.array([{"source": "lab"}], dtype=object)
    np.savez(tmp_path / "a.npz", x=x, meta=meta)
    np.testing.assert_array_equal(load_array(str(tmp_path / "a.npz"))[0], x)
    np.savez(tmp_path / "b.npz", train=x[:20], test=x[20:], meta=meta)
    ds = load_dataset(DataConfig(source=str(tmp_path / "b.npz"), valid_fraction=0.0))
    np.testing.assert_array_equal(ds.test, x[20:])
    for name, arrays in (("c", {"x": meta}), ("d", {"train": meta, "test": x}), ("e", {"meta": meta})):
        np.savez(tmp_path / f"{name}.npz", **arrays)
        key = next(iter(arrays))
        with pytest.raises(DataError, match=rf"{name}\.npz: array '{key}' could not be read \(.*Python objects"):
            load_dataset(DataConfig(source=str(tmp_path / f"{name}.npz")))


def test_tab_separated_rows_in_a_csv_are_named(tmp_path):
    (tmp_path / "t.csv").write_text("0.1\t0.2\t0.3\n0.4\t0.5\t0.6\n")
    with pytest.raises(DataError, match=r"t\.csv: row 1 holds numbers separated by tabs, .*name it \.tsv"):
        load_array(str(tmp_path / "t.csv"))
    (tmp_path / "t.tsv").write_text((tmp_path / "t.csv").read_text())
    np.testing.assert_array_equal(load_array(str(tmp_path / "t.tsv"))[0], [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])


def test_image_layout_advice_depends_on_the_pixel_count():
    from vaekit.data.checks import check_image_layout

    with pytest.raises(DataError, match=r"reorder their axes"):
        check_image_layout("x", (8, 8, 3), (3, 8, 8))
    with pytest.raises(DataError, match=r"shape \(3, 8, 8\); give it images of that shape$"):
        check_image_layout("x", (1, 8, 8), (3, 8, 8))
    check_image_layout("x", (1, 8, 8), (8, 8))  # axes of size 1 do not count


def test_corrupt_files(tmp_path):
    (tmp_path / "junk.npy").write_bytes(b"this is not numpy")
    with pytest.raises(DataError, match=r"junk\.npy: could not be read as a \.npy array"):
        load_array(str(tmp_path / "junk.npy"))
    good = io.BytesIO()
    np.save(good, np.ones((100, 10)))
    (tmp_path / "trunc.npy").write_bytes(good.getvalue()[:300])
    with pytest.raises(DataError, match=r"trunc\.npy: could not be read as a \.npy array"):
        load_array(str(tmp_path / "trunc.npy"))
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(DataError, match=r"junk\.npz: could not be read as an \.npz archive"):
        load_array(str(tmp_path / "junk.npz"))
    # A valid zip whose member is corrupt fails when read, not later.
    np.savez(tmp_path / "ok.npz", x=np.ones((50, 50)))
    with zipfile.ZipFile(tmp_path / "ok.npz") as z:
        member = z.read("x.npy")
    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as z:
        z.writestr("x.npy", member[:200])
    with pytest.raises(DataError, match=r"bad\.npz: could not be read as an \.npz archive"):
        load_array(str(tmp_path / "bad.npz"))


def test_wrong_container_for_extension(tmp_path):
    np.savez(tmp_path / "z.npz", x=np.ones((3, 2)))
    (tmp_path / "z.npy").write_bytes((tmp_path / "z.npz").read_bytes())
    with pytest.raises(DataError, match=r"z\.npy: is an \.npz archive.*rename it to \.npz"):
        load_array(str(tmp_path / "z.npy"))
    np.save(tmp_path / "a.npy", np.ones((3, 2)))
    (tmp_path / "a.npz").write_bytes((tmp_path / "a.npy").read_bytes())
    with pytest.raises(DataError, match=r"a\.npz: is a \.npy array.*rename it to \.npy"):
        load_array(str(tmp_path / "a.npz"))


@pytest.mark.parametrize("labels", [np.full(4, 0.5), np.array(["a", "b", "a", "c"]), np.array([b"x", b"y", b"x", b"y"]), np.array([0, 1, np.nan, 2])])
def test_labels_that_are_no_classes_are_left_out_with_a_warning(tmp_path, labels):
    """Labels only colour and stratify pictures: text or fractional ones are read without, with
    one warning naming them, in a single array and in fixed splits alike."""
    from vaekit.errors import VaekitWarning

    x = np.arange(16.0).reshape(4, 4) / 16
    np.savez(tmp_path / "one.npz", x=x, y=labels)
    np.savez(tmp_path / "splits.npz", train=x, test=x[:2], train_labels=labels, test_labels=labels[:2])
    for name in ("one.npz", "splits.npz"):
        with pytest.warns(VaekitWarning, match=rf"{name} \[\w+\]: labels of dtype \S+ are no integer class labels; read without them"):
            data = load_dataset(DataConfig(source=str(tmp_path / name), valid_fraction=0.25, test_fraction=0.25))
        assert data.split_labels("train") is None and len(data.split("train")) > 0


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({}, r"contains no arrays"),
        ({"a": np.ones((3, 2)), "b": np.ones((3, 2))}, r"cannot tell which array holds the data \(found a, b\)"),
        ({"x": np.ones((3, 2)), "data": np.ones((3, 2))}, r"has arrays x, data; expected only one data array"),
        ({"x": np.ones((3, 2)), "y": np.ones(3), "labels": np.ones(3)}, r"has both 'y' and 'labels'"),
        ({"x": np.ones((3, 2)), "y": np.ones(4)}, r"\[y\]: has 4 labels, but the data has 3 rows"),
        ({"x": np.ones((3, 2)), "y": np.ones((3, 2))}, r"\[y\]: expected a 1-D array of labels, got shape \(3, 2\)"),
        ({"train": np.ones((3, 2))}, r"both 'train' and 'test' are needed .*missing test"),
        ({"train": np.ones((5, 2)), "test": np.ones((2, 3))}, r"splits have different shapes per row \(train \(2,\), test \(3,\)\)"),
        ({"train": np.ones((5, 2)), "test": np.ones((2, 2)), "train_labels": np.arange(5)}, r"has train_labels but not test_labels"),
        ({"train": np.ones((0, 2)), "valid": np.ones((2, 2)), "test": np.ones((2, 2))}, r"\[train\] has 0 rows \(shape=\(0, 2\)\); at least 1 is needed"),
        ({"train": np.ones((5, 2)), "test": np.ones((2, 2)) * np.inf}, r"\[test\] contains infinity \(first at row 1, column 1\)"),
    ],
)
def test_npz_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "f.npz", **arrays)
    with pytest.raises(DataError, match=match) as e:
        load_dataset(DataConfig(source=str(tmp_path / "f.npz")))
    assert "f.npz" in str(e.value)


def test_a_relative_file_is_looked_for_in_data_dir_then_vaekit_data(tmp_path, monkeypatch):
    """A relative --data file: as given (the working directory), then under data_dir, then
    under $VAEKIT_DATA, as named datasets' files are; missing from all, the error names each
    place looked in. An absolute path is looked for only where it points."""
    from vaekit.data.load import resolve_path

    for d in ("cwd", "dir", "env"):
        (tmp_path / d).mkdir()
        np.save(tmp_path / d / f"{d}.npy", np.zeros((2, 2)))
        np.save(tmp_path / d / "all.npy", np.zeros((2, 2)))
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("VAEKIT_DATA", str(tmp_path / "env"))
    data_dir = str(tmp_path / "dir")
    assert resolve_path("all.npy", data_dir) == Path("all.npy")
    assert resolve_path("dir.npy", data_dir) == tmp_path / "dir" / "dir.npy"
    assert resolve_path("env.npy", data_dir) == tmp_path / "env" / "env.npy"
    assert resolve_path("env.npy", None) == tmp_path / "env" / "env.npy"
    ds = load_dataset(DataConfig(source="env.npy", valid_fraction=0.0, test_fraction=0.0))
    assert ds.train.shape == (2, 2)
    with pytest.raises(DataError, match=rf"^no\.npy: no such file \(looked for in the working directory and in {tmp_path / 'dir'} "
                       rf"\(the data directory\) and {tmp_path / 'env'} \(\$VAEKIT_DATA\)\)$"):  # fmt: skip
        resolve_path("no.npy", data_dir)
    with pytest.raises(DataError, match=rf"^{tmp_path / 'cwd' / 'env.npy'}: no such file$"):
        resolve_path(str(tmp_path / "cwd" / "env.npy"), data_dir)
    monkeypatch.delenv("VAEKIT_DATA")
    with pytest.raises(DataError, match=r"^env\.npy: no such file$"):
        resolve_path("env.npy", None)


def test_an_npz_may_have_an_empty_test_or_valid_array(tmp_path):
    """The file's own valid/test arrays may be empty (no rows there, as a fraction of 0 gives
    none): the dataset has that split empty and says the file fixed it."""
    np.savez(tmp_path / "f.npz", train=np.ones((5, 2)), valid=np.ones((0, 2)), test=np.ones((0, 2)))
    ds = load_dataset(DataConfig(source=str(tmp_path / "f.npz")))
    assert ds.train.shape == (5, 2) and ds.valid.shape == ds.test.shape == (0, 2) and ds.fixed == ("valid", "test")
    assert ds.split("all").shape == (5, 2)


def test_missing_unknown_and_unsupported_sources(tmp_path):
    with pytest.raises(DataError, match=r"^nope/data\.npy: no such file$"):
        load_dataset(DataConfig(source="nope/data.npy"))
    for link, target in (("loop.npy", "loop.npy"), ("gone.npy", "missing.npy")):
        (tmp_path / link).symlink_to(tmp_path / target)
        with pytest.raises(DataError, match=rf"^{tmp_path / link}: a symbolic link to nothing \(its target is missing, or it loops\)$"):
            load_dataset(DataConfig(source=str(tmp_path / link)))
        with pytest.raises(DataError, match=rf"^{tmp_path / link}: a symbolic link to nothing"):  # found in --data-dir
            load_dataset(DataConfig(source=link, data_dir=str(tmp_path)))
    with pytest.raises(DataError, match=r"^unknown dataset 'foo': not a file, and not one of digits, swiss_roll, binarized_mnist$"):
        load_dataset(DataConfig(source="foo"))
    p = write_text(tmp_path / "d.json", "[]")
    with pytest.raises(DataError, match=r"d\.json: unsupported file type '\.json'; expected one of \.npy, \.npz, \.csv, \.tsv, \.txt"):
        load_dataset(DataConfig(source=str(p)))
    with pytest.raises(DataError, match=r"is a directory"):
        load_array(str(tmp_path))


def test_too_few_rows_for_fractions(tmp_path):
    np.save(tmp_path / "small.npy", np.ones((3, 2)))
    # 3 rows, valid and test take 1 each (fractions > 0), leaving 1 < 2 for training.
    with pytest.raises(DataError, match=r"small\.npy: dataset has 3 rows; at least 4 needed for valid_fraction=0\.1 and test_fraction=0\.2"):
        load_dataset(DataConfig(source=str(tmp_path / "small.npy")))
    np.save(tmp_path / "two.npy", np.ones((2, 2)))
    with pytest.raises(DataError, match=r"dataset has 2 rows; at least 4 needed"):
        load_dataset(DataConfig(source=str(tmp_path / "two.npy")))
    # With no valid/test wanted, 2 rows are enough.
    ds = load_dataset(DataConfig(source=str(tmp_path / "two.npy"), valid_fraction=0.0, test_fraction=0.0))
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (2, 0, 0)
    np.save(tmp_path / "four.npy", np.ones((4, 2)))
    ds = load_dataset(DataConfig(source=str(tmp_path / "four.npy")))
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (2, 1, 1)


# --------------------------------------------------------------------------------------
# check_data
# --------------------------------------------------------------------------------------


def test_check_data_returns_contiguous_float32():
    x = check_data([[1, 2], [3, 4]])
    assert x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_array_equal(x, [[1, 2], [3, 4]])
    a = np.ones((3, 2), np.float32)
    assert check_data(a) is a  # already fine: a view, no copy
    f = np.asfortranarray(np.ones((3, 2), np.float64))
    assert check_data(f).flags.c_contiguous


def test_check_data_accepts_torch_tensors():
    import torch

    t = torch.arange(6.0, requires_grad=True).reshape(3, 2)
    x = check_data(t)
    np.testing.assert_array_equal(x, [[0, 1], [2, 3], [4, 5]])
    x = check_data(torch.ones(2, 2, dtype=torch.bfloat16))
    assert x.dtype == np.float32 and x.sum() == 4


@pytest.mark.parametrize(
    "x, kwargs, match",
    [
        (np.array([["a"]]), {}, r"^X has dtype <U1; expected numbers"),
        (np.array([1 + 2j]).reshape(1, 1), {}, r"Complex data not supported \(dtype complex128\)"),
        ([[1, None]], {}, r"dtype object; expected numbers"),
        # numpy < 1.24 makes a ragged list an object array (refused for its dtype), later ones refuse it.
        ([[1, 2], [3]], {}, r"X could not be converted to an array|X has dtype object"),
        (np.float32(3), {}, r"expected a 2-D array \(rows = datapoints\), got a scalar"),
        (np.arange(5.0), {}, r"got 1-D array of shape \(5,\); Reshape your data with x\.reshape\(-1, 1\)"),
        (np.ones((2, 3, 4)), {}, r"got 3-D array of shape \(2, 3, 4\); flatten with x\.reshape\(len\(x\), -1\)"),
        (np.ones((0, 5)), {}, r"^X has 0 rows \(shape=\(0, 5\)\); at least 1 is needed$"),
        (np.ones((1, 5)), {"min_rows": 2}, r"X has 1 row \(shape=\(1, 5\)\); at least 2 are needed"),
        (np.ones((3, 0)), {}, r"X has 0 feature\(s\) \(shape=\(3, 0\)\) while a minimum of 1 is required"),
        (np.array([[0, 1], [1, 0], [1, np.nan]]), {}, r"X contains NaN \(first at row 3, column 2\)"),
        (np.array([[0, -np.inf], [np.nan, 0]]), {}, r"X contains infinity \(first at row 1, column 2\)"),
        (np.array([[1e300, 0]]), {}, r"^X has values beyond ±1e\+150, where float64 arithmetic overflows \(first at row 1, column 1: 1e\+300\)"),
        (np.array([[1e50, 0]]), {}, r"^X has values too large for a float32 model \(first at row 1, column 1: 1e\+50\); .*--dtype float64"),
        (np.ones((2, 10)), {"input_dim": 64}, r"^X has 10 features per row, but the model was trained on 64$"),
        (np.ones((2, 1)), {"input_dim": 5}, r"^X has 1 feature per row, but the model was trained on 5$"),
    ],
)
def test_check_data_errors(x, kwargs, match):
    with pytest.raises(DataError, match=match):
        check_data(x, what="X", **kwargs)


def test_check_data_refuses_integers_float64_rounds():
    """int64 or uint64 beyond ±2^53 lose their last digits in float64, where the input map and
    a float64 model compute: 2^63 + 0..999 would become one constant column. Refused, whichever
    sign; up to 2^53 they pass, in float64 for a float64 model."""
    for x in (np.full((4, 2), 2**63, dtype=np.uint64) + np.arange(8, dtype=np.uint64).reshape(4, 2),
              -(2**62 + np.arange(8, dtype=np.int64).reshape(4, 2)),
              np.array([[0, 2**53 + 1]], dtype=np.int64)):  # fmt: skip
        with pytest.raises(DataError, match=r"^X has integers beyond ±2\^53, which float64 rounds \(first at row 1, column \d: -?\d+\); subtract"):
            check_data(x, what="X", dtype=np.float64)
    edge = np.array([[2**53, -(2**53)], [0, 1]], dtype=np.int64)
    np.testing.assert_array_equal(check_data(edge, dtype=np.float64), edge.astype(np.float64))
    assert check_data(np.array([[2**53]], dtype=np.uint64), dtype=np.float64)[0, 0] == 2.0**53


def test_check_data_refuses_features_float32_cannot_resolve():
    """1e5 ± 1e-3 in float64 would reach the model rounded to a few values (float32 steps by
    0.008 there); large integer ids likewise. A day of Unix timestamps, or 1000 ± 1, pass."""
    rng = np.random.default_rng(0)
    tight = np.column_stack([rng.normal(size=200), 1e5 + 1e-3 * rng.normal(size=200)])
    with pytest.raises(DataError, match=r"X: column 2 varies by 0\.001\d* \(standard deviation\) around 100000, finer than float32"):
        check_data(tight, what="X")
    ids = np.arange(2**40, 2**40 + 50, dtype=np.int64)[:, None]
    with pytest.raises(DataError, match=r"column 1 .*rounding by up to"):
        check_data(ids, what="X")
    for fine in (1.7e9 + rng.uniform(0, 86400, size=(200, 1)), 1000 + rng.normal(size=(200, 3)), np.arange(2**20, dtype=np.int64)[:, None]):
        assert check_data(fine).dtype == np.float32
    assert check_data(tight - tight.mean(axis=0)).shape == (200, 2)  # the remedy the message names


def test_check_data_keeps_precision_for_the_input_map():
    """dtype=None: float64 and integers wider than 16 bits stay float64 (an input map reads them
    in float64), narrower types become float32, which holds them exactly; the values float32
    cannot resolve pass there and are refused where a float32 cast is asked for."""
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    cases = {np.float16: f32, np.float32: f32, bool: f32, np.int8: f32, np.uint8: f32, np.int16: f32, np.uint16: f32,
             np.int32: f64, np.uint32: f64, np.int64: f64, np.float64: f64}  # fmt: skip
    for given, kept in cases.items():
        values = np.arange(6).reshape(3, 2).astype(given) if given is not bool else np.eye(2, dtype=bool)
        out = check_data(values, dtype=None)
        assert out.dtype == kept and np.array_equal(out, values.astype(kept)), given
        assert check_data(values).dtype == f32 and check_data(values, dtype=np.float64).dtype == f64
    tight = 1e5 + 1e-3 * np.random.default_rng(0).normal(size=(100, 2))
    assert np.shares_memory(check_data(tight, dtype=None), tight)  # float64, C-contiguous: a view
    with pytest.raises(DataError, match="finer than float32"):
        check_data(tight)
    with pytest.raises(DataError, match=r"beyond ±1e\+150, where float64 arithmetic overflows \(first at row 1, column 1"):
        check_data(np.array([[1e300, 0.0]]), dtype=None)  # the input map's variance would overflow
    huge = np.array([[1e50, 0.0], [-3e149, 1.0]])
    assert np.shares_memory(check_data(huge, dtype=None), huge) and np.shares_memory(check_data(huge, dtype=np.float64), huge)  # a map or a float64 model reads it
    with pytest.raises(DataError, match=r"too large for a float32 model \(first at row 1, column 1: 1e\+50\)"):
        check_data(huge)


def test_check_data_order_dtype_before_shape_before_rows():
    with pytest.raises(DataError, match="dtype"):
        check_data(np.array(["a", "b"]))  # 1-D and non-numeric: dtype reported first
    with pytest.raises(DataError, match="1-D"):
        check_data(np.zeros(0))  # 1-D and empty: shape reported first


def test_check_data_calls_likelihood_support():
    from vaekit.config import ModelConfig
    from vaekit.likelihoods import LIKELIHOODS

    bern = LIKELIHOODS.get("bernoulli")(ModelConfig(input_dim=2))
    x = check_data(np.array([[0, 1], [1, 1]]), likelihood=bern)
    assert x.dtype == np.float32
    with pytest.raises(DataError, match=r"^test set has values outside the support of the bernoulli likelihood .*0\.5"):
        check_data(np.array([[0, 0.5]]), what="test set", likelihood=bern)


# --------------------------------------------------------------------------------------
# binarized MNIST
# --------------------------------------------------------------------------------------


@needs_mnist
def test_binarized_mnist_via_data_dir():
    ds = load_dataset(DataConfig(source="binarized_mnist", data_dir=str(SHARED_MNIST)))
    assert ds.train.shape == (50000, 784)
    assert ds.valid.shape == (10000, 784)
    assert ds.test.shape == (10000, 784)
    assert ds.image_shape == (28, 28) and ds.dim == 784
    assert ds.labels == {"train": None, "valid": None, "test": None}
    assert ds.train.dtype == np.float32 and ds.train.flags.c_contiguous
    assert set(np.unique(ds.test)) == {0.0, 1.0}
    assert ds.train.mean(dtype=np.float64) == pytest.approx(0.1306, abs=1e-4)


@needs_mnist
def test_binarized_mnist_search_order(tmp_path, monkeypatch):
    monkeypatch.setenv("VAEKIT_DATA", str(SHARED_MNIST))
    assert find_binarized_mnist() == SHARED_MNIST / "binarized_mnist.npz"
    # parent directory: found as binarized_mnist/binarized_mnist.npz
    assert find_binarized_mnist(str(SHARED_MNIST.parent)) == SHARED_MNIST / "binarized_mnist.npz"
    # data_dir comes before VAEKIT_DATA
    other = tmp_path / "mine"
    other.mkdir()
    (other / "binarized_mnist.npz").write_bytes(b"")
    assert find_binarized_mnist(str(other)) == other / "binarized_mnist.npz"
    # VAEKIT_DATA comes before the cache
    cache = tmp_path / "xdg-cache" / "vaekit"
    cache.mkdir(parents=True)
    (cache / "binarized_mnist.npz").write_bytes(b"")
    assert find_binarized_mnist() == SHARED_MNIST / "binarized_mnist.npz"
    monkeypatch.delenv("VAEKIT_DATA")
    assert find_binarized_mnist() == cache / "binarized_mnist.npz"


@needs_mnist
def test_binarized_mnist_tampered_file_fails_checksum(tmp_path):
    with np.load(SHARED_MNIST / "binarized_mnist.npz") as z:
        arrays = {k: z[k] for k in ("train", "valid", "test")}
    arrays["valid"][123, 456] ^= 1
    np.savez_compressed(tmp_path / "binarized_mnist.npz", **arrays)
    with pytest.raises(DataError, match=r"binarized_mnist\.npz: content checksum sha256 .* does not match"):
        load_dataset(DataConfig(source="binarized_mnist", data_dir=str(tmp_path)))


def test_binarized_mnist_unreadable_or_wrong_shape(tmp_path):
    (tmp_path / "binarized_mnist.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"binarized_mnist\.npz: could not be read as binarized MNIST"):
        load_dataset(DataConfig(source="binarized_mnist", data_dir=str(tmp_path)))
    np.savez(tmp_path / "binarized_mnist.npz", train=np.zeros((2, 784)), valid=np.zeros((2, 10)), test=np.zeros((1, 784)))
    with pytest.raises(DataError, match=r"valid has shape \(2, 10\); expected \(n, 784\)"):
        load_dataset(DataConfig(source="binarized_mnist", data_dir=str(tmp_path)))
    np.savez(tmp_path / "binarized_mnist.npz", train=np.zeros((2, 784)))
    with pytest.raises(DataError, match=r"missing valid, test"):
        load_dataset(DataConfig(source="binarized_mnist", data_dir=str(tmp_path)))


def test_binarized_mnist_download_failure_says_how_to_fix(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(source="binarized_mnist", data_dir=str(empty)))
    msg = str(e.value)
    assert "\n" not in msg
    assert str(empty) in msg and str(tmp_path / "xdg-cache" / "vaekit") in msg  # where it looked
    assert "download" in msg and "network disabled in tests" in msg  # that it failed, and why
    assert "--data-dir" in msg and "VAEKIT_DATA" in msg  # how to fix
    assert not (tmp_path / "xdg-cache" / "vaekit" / "binarized_mnist.npz").exists()


def _fake_amat(rows: np.ndarray) -> bytes:
    return "".join(" ".join(str(v) for v in r) + "\n" for r in rows).encode()


def test_binarized_mnist_download_success(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    fake = {s: rng.integers(0, 2, size=(n, 784), dtype=np.uint8) for s, n in (("train", 5), ("valid", 2), ("test", 3))}
    digest = hashlib.sha256(fake["train"].tobytes() + fake["valid"].tobytes() + fake["test"].tobytes()).hexdigest()
    monkeypatch.setattr(vdata.named.binarized_mnist, "BINARIZED_MNIST_SHA256", digest)
    served = []

    def urlopen(url, timeout=None):
        served.append((url, timeout))
        split = url.rsplit("_", 1)[1].removesuffix(".amat")
        return io.BytesIO(_fake_amat(fake[split]))

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    ds = load_dataset(DataConfig(source="binarized_mnist"))
    assert [u for u, _ in served] == [
        f"http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{s}.amat"
        for s in ("train", "valid", "test")
    ]
    assert all(t is not None and t <= 60 for _, t in served)
    cache = tmp_path / "xdg-cache" / "vaekit"
    assert sorted(p.name for p in cache.iterdir()) == ["binarized_mnist.npz"]  # no temp file left
    for s in ("train", "valid", "test"):
        np.testing.assert_array_equal(ds.split(s), fake[s].astype(np.float32))
    # The second load finds the cached file and does not download again.
    served.clear()
    ds2 = load_dataset(DataConfig(source="binarized_mnist"))
    assert served == [] and ds2.test.shape == (3, 784)


def test_binarized_mnist_download_checksum_and_format_errors(tmp_path, monkeypatch):
    rows = np.zeros((2, 784), np.uint8)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(_fake_amat(rows)))
    with pytest.raises(DataError, match=r"content sha256 .*expected 07ad6da6ba68"):
        download_binarized_mnist(tmp_path / "c")
    assert not (tmp_path / "c" / "binarized_mnist.npz").exists()
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"0 1 2\n"))
    with pytest.raises(DataError, match=r"binarized_mnist_train\.amat failed \(not a table of single 0/1 values\)"):
        download_binarized_mnist(tmp_path / "c")
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"0 1 1\n"))
    with pytest.raises(DataError, match=r"expected 784 values per line"):
        download_binarized_mnist(tmp_path / "c")


# --------------------------------------------------------------------------------------
# the registry of named datasets
# --------------------------------------------------------------------------------------


def test_dataset_names_read_from_source_equal_those_registered_on_import():
    from vaekit.data.named import NamedDataset

    loaded = DATASETS.loaded()
    assert DATASETS.names() == sorted(loaded)
    assert {"digits", "binarized_mnist"} <= set(loaded)
    for name, cls in loaded.items():
        assert issubclass(cls, NamedDataset) and cls.name == name
        assert "load" in vars(cls), f"{name} does not define load"
    # NAMED lists every registered name once: those that need no download first.
    assert sorted(NAMED) == sorted(loaded)
    downloads = [loaded[n].downloads for n in NAMED]
    assert downloads == sorted(downloads)


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_named_dataset_loads_checked_splits(name):
    """Common checks over the registry: a new named dataset is tested without editing a test.
    Those that need a download are loaded only when a copy is at hand."""
    try:
        ds = load_dataset(DataConfig(source=name, data_dir=str(SHARED_MNIST)))
    except DataError as e:
        if DATASETS.get(name).downloads and "download" in str(e):
            pytest.skip(f"{name}: no copy at hand and no network in tests")
        raise
    assert ds.name == name
    for s in ("train", "valid", "test"):
        x = ds.split(s)
        assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == ds.dim and x.flags.c_contiguous
        assert len(x) >= (2 if s == "train" else 1)
        labels = ds.split_labels(s)
        assert labels is None or (labels.dtype == np.int64 and labels.shape == (len(x),))
    assert ds.image_shape is None or int(np.prod(ds.image_shape)) == ds.dim


def test_unknown_dataset_name_through_the_cli(tmp_path, capsys, monkeypatch):
    """A bare word that is neither a file nor a registered name: exit 1, one stderr line that
    lists the registered names, no traceback, no run written."""
    from vaekit.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["train", "--data", "mnist_typo", "--out", str(tmp_path / "run"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("vaekit: error: unknown dataset 'mnist_typo': not a file, and not one of ")
    assert sorted(err.strip().rsplit("not one of ", 1)[1].split(", ")) == DATASETS.names()
    assert not (tmp_path / "run" / "config.json").exists()


def test_split_all_is_the_source_order_when_valid_is_carved_from_train(tmp_path):
    """An .npz with train and test arrays: valid is carved from train, and 'all' gives the
    file's rows as it holds them, train's then test's, labels with them."""
    tr, te = np.arange(40.0).reshape(20, 2), -np.arange(10.0).reshape(5, 2)
    np.savez(tmp_path / "tt.npz", train=tr, test=te, train_labels=np.arange(20), test_labels=np.arange(20, 25))
    ds = load_dataset(DataConfig(source=str(tmp_path / "tt.npz"), valid_fraction=0.25))
    assert len(ds.valid) == 5 and len(ds.train) == 15
    np.testing.assert_array_equal(ds.split("all"), np.concatenate([tr, te]))
    np.testing.assert_array_equal(ds.split_labels("all"), np.arange(25))


@pytest.mark.parametrize("mmap", [False, True])
def test_channels_last_images_are_warned_about_once(tmp_path, mmap):
    """(n, H, W, C) arrays, numpy's and TensorFlow's layout, would train as H channels of W x C
    pixels: the command line says so once, the API warns; (n, C, H, W) and (n, H, W) pass quietly."""
    import subprocess
    import sys
    import warnings

    from vaekit import VAE
    from vaekit.errors import VaekitWarning

    rng = np.random.default_rng(0)
    cases = (("hwc", (40, 6, 5, 3), True), ("chw", (40, 3, 6, 5), False), ("hw", (40, 6, 5), False), ("c2", (40, 2, 4, 4), False))
    for name, shape, warned in cases:
        np.save(tmp_path / f"{name}.npy", rng.random(shape).astype(np.float32))
        flags = ["--mmap"] if mmap else []
        proc = subprocess.run(
            [sys.executable, "-m", "vaekit", "train", "--data", str(tmp_path / f"{name}.npy"), "--out", str(tmp_path / f"r_{name}{mmap}"),
             "--epochs", "1", "--hidden", "8", "--eval-k", "2", "--quiet", *flags],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if "moveaxis" in line]
        assert lines == ([f"vaekit: warning: {name}.npy holds images of shape (6, 5, 3), read as 6 channels of 5x3 pixels (n, C, H, W); "
                          "if the last axis holds the channels, move it first: numpy.moveaxis(x, -1, 1)"] if warned else [])  # fmt: skip
        if mmap:
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            VAE(latent_dim=2, hidden=(8,), epochs=1).fit(np.load(tmp_path / f"{name}.npy"))
        assert [w.category for w in caught if "moveaxis" in str(w.message)] == ([VaekitWarning] if warned else [])


def test_a_verb_reading_images_for_a_trained_model_does_not_warn_about_channels(tmp_path):
    """The channels-last warning is about the shape a run takes from its file. A verb reads rows
    for the model's own shape: (n, H, W, 1) rows for a (1, H, W) model are its pixels in its
    order, scored as the (n, 1, H, W) file is, without a word, streamed or read whole."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    first = (rng.random((40, 1, 6, 5)) < 0.3).astype(np.uint8)
    np.save(tmp_path / "chw.npy", first)
    np.save(tmp_path / "hwc.npy", np.moveaxis(first, 1, -1))
    vaekit = [sys.executable, "-m", "vaekit"]
    run = tmp_path / "run"
    subprocess.run([*vaekit, "train", "--data", tmp_path / "chw.npy", "--out", run, "--epochs", "1", "--hidden", "8", "--eval-k", "2", "--quiet"],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    scores = {}
    for name, flags in (("chw", []), ("hwc", []), ("hwc", ["--mmap"])):
        out = tmp_path / f"{name}{len(flags)}.npy"
        proc = subprocess.run([*vaekit, "score", run, "--data", tmp_path / f"{name}.npy", "--k", "3", "--out", out, *flags],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
        scores[name, len(flags)] = np.load(out)
    np.testing.assert_array_equal(scores["chw", 0], scores["hwc", 0])
    np.testing.assert_array_equal(scores["chw", 0], scores["hwc", 1])


@pytest.mark.parametrize("mmap", [False, True])
def test_images_with_an_empty_split_read_as_tables_do(tmp_path, mmap):
    """An (0, H, W) split is an empty split of H·W features, not a reshape error: an image
    .npz with an empty test split loads; an image .npy of no rows is refused in one line."""
    x = np.random.default_rng(0).random((12, 3, 4)).astype(np.float32)
    np.savez(tmp_path / "img.npz", train=x[:8], valid=x[8:], test=x[:0])
    ds = load_dataset(DataConfig(source=str(tmp_path / "img.npz")))
    assert ds.test.shape == (0, 12) and ds.train.shape == (8, 12) and ds.image_shape == (3, 4)
    np.save(tmp_path / "img0.npy", x[:0])
    with pytest.raises(DataError, match=r"img0.npy:? (dataset )?has 0 rows"):
        load_dataset(DataConfig(source=str(tmp_path / "img0.npy"), mmap=mmap))


def test_csv_unnamed_first_column_is_pandas_row_index_and_left_out(tmp_path):
    """DataFrame.to_csv writes the row index first, under an empty header cell: it is left out
    with a warning, whatever the index holds (numbers or dates), and the header names the
    features that remain. Other unnamed columns are refused; messages number the file's columns."""
    from vaekit.data.readers import table_header

    for name, index in (("numbers.csv", ["0", "1", "2"]), ("dates.csv", ["2020-01-01", "2020-01-02", "2020-01-03"])):
        rows = [f"{i},{j + 0.5},{-j},{2 * j}" for j, i in enumerate(index)]
        p = write_text(tmp_path / name, ",a,b,c\n" + "\n".join(rows) + "\n")
        with pytest.warns(VaekitWarning, match=r"column 1 has no name in the header \(row 1\): it is read as the row index that DataFrame.to_csv writes"):
            x, _, _ = load_array(str(p))
        np.testing.assert_array_equal(x, [[0.5, 0, 0], [1.5, -1, 2], [2.5, -2, 4]])
        assert table_header(p) == ("a", "b", "c")
    p = write_text(tmp_path / "nan.csv", ",a,b\n0,1,nan\n1,3,4\n")
    with pytest.warns(VaekitWarning), pytest.raises(DataError, match=r"contains NaN \(first at row 2, column 3\)"):
        load_array(str(p))
    for text, column in ((",a,\n0,1,2\n1,3,4\n", 1), ("a,,c\n0,1,2\n1,3,4\n", 2)):
        p = write_text(tmp_path / "gap.csv", text)
        with pytest.raises(DataError, match=rf"the header \(row 1\) gives column {column} no name; name every column"):
            load_array(str(p))


def test_csv_first_row_of_column_numbers_warns_but_reads_as_data(tmp_path):
    """pandas writes 0, 1, …, D−1 as a header by default; no test tells it from data, so it is
    read as a row, with a warning naming the likely cause. 2^53 itself is exact in float64."""
    p = write_text(tmp_path / "p.csv", "0,1,2\n0.5,0.25,0.125\n0.75,0.5,9007199254740992\n")
    with pytest.warns(VaekitWarning, match=r"row 1 reads 0, 1, 2, … 2, the column numbers pandas writes as a header; it is read as data"):
        ds = load_dataset(DataConfig(source=str(p), valid_fraction=0.0, test_fraction=0.0))
    assert ds.train.shape == (3, 3) and 2.0**53 in ds.train  # rows in the split's order
    q = write_text(tmp_path / "q.csv", "0,1,2\n3,4,5\n")  # integers throughout: a table of counts, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(DataConfig(source=str(q), valid_fraction=0.0, test_fraction=0.0))


def test_npz_labels_of_python_objects_are_left_out_with_a_warning(tmp_path):
    x = np.random.default_rng(0).random((6, 2)).astype(np.float32)
    np.savez(tmp_path / "o.npz", x=x, y=np.array(["cat", "dog"] * 3, dtype=object))
    with pytest.warns(VaekitWarning, match=r"labels 'y' could not be read \(.*Python objects.*\); read without labels"):
        ds = load_dataset(DataConfig(source=str(tmp_path / "o.npz"), valid_fraction=0.0, test_fraction=0.0))
    np.testing.assert_array_equal(np.sort(ds.train, axis=0), np.sort(x, axis=0))  # rows in the split's order
    assert ds.labels["train"] is None


def test_a_streamed_split_is_resolved_by_its_own_spread_not_a_blocks(tmp_path, monkeypatch):
    """Streamed, a split is checked block by block, but float32's resolution is judged against
    the whole split's spread, as in memory: a last block of two rows 1e-4 apart at 1e5 hardly
    varies by itself, and must not refuse a split that varies by 1; a split that varies by
    1e-3 throughout is refused whichever block shows it."""
    import vaekit.data.containers as containers
    from vaekit.data import MappedRows

    monkeypatch.setattr(containers, "CHUNK_ROWS", 8)
    rng = np.random.default_rng(0)
    x = 1e5 + rng.normal(size=(10, 2))
    x[8:] = 1e5 + np.array([[0.1, 0.2], [0.1001, 0.2001]])
    assert check_data(x).dtype == np.float32  # in memory
    np.save(tmp_path / "x.npy", x)
    mapped = MappedRows(np.load(tmp_path / "x.npy", mmap_mode="r"), dtype=np.float32)
    assert check_data(mapped, what="X", dtype=np.float32) is mapped
    np.save(tmp_path / "t.npy", 1e5 + 1e-3 * rng.normal(size=(20, 2)))
    tight = MappedRows(np.load(tmp_path / "t.npy", mmap_mode="r"), dtype=np.float32)
    with pytest.raises(DataError, match=r"^X: column 1 varies by 0\.00\d* \(standard deviation\) around 100000, finer than float32"):
        check_data(tight, what="X", dtype=np.float32)
    assert check_data(tight, what="X", dtype=None) is tight  # its input map is yet to come


def test_check_resolution_threshold_is_one_percent_of_the_spread():
    """float32 steps by 2**-7 at 1e5 (rounding error up to 0.0039): a spread of 0.1 (error/std
    about 0.04, over 1%) is refused, a spread of 1.0 (about 0.004) is kept as float32."""
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="finer than float32"):
        check_data(1e5 + 0.1 * rng.normal(size=(500, 1)))
    assert check_data(1e5 + 1.0 * rng.normal(size=(500, 1))).dtype == np.float32
