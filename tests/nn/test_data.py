"""nn.data: loader order and batching, splits, normalisation, built-in sets, IDX/.npz files."""
import gzip
import struct

import numpy as np
import pytest

import kernels
from nn import data
from nn.data import ArrayDataset, DataError, DataLoader, Normalize


def small(n=10, shape=(1, 2, 2)):
    x = np.arange(n * int(np.prod(shape)), dtype=np.float32).reshape((n,) + shape)
    return ArrayDataset(x, np.arange(n, dtype=np.int64))


# ---------------------------------------------------------------------- loader
def test_unshuffled_batches_cover_the_data_in_order():
    ds = small(10)
    loader = DataLoader(ds, batch_size=4)
    batches = list(loader)
    assert len(loader) == 3 == len(batches)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), np.arange(10))
    np.testing.assert_array_equal(batches[0][0], ds.x[:4])


def test_shuffle_is_a_permutation_and_changes_between_epochs():
    loader = DataLoader(small(50), batch_size=8, shuffle=True, seed=3)
    first = np.concatenate([y for _, y in loader])
    second = np.concatenate([y for _, y in loader])
    np.testing.assert_array_equal(np.sort(first), np.arange(50))
    np.testing.assert_array_equal(np.sort(second), np.arange(50))
    assert not np.array_equal(first, np.arange(50))
    assert not np.array_equal(first, second)


def test_samples_stay_paired_with_their_labels():
    ds = small(20)
    for x, y in DataLoader(ds, batch_size=6, shuffle=True, seed=0):
        np.testing.assert_array_equal(x, ds.x[y])


def test_seeded_runs_repeat_and_generator_state_fixes_the_future():
    a = DataLoader(small(30), batch_size=7, shuffle=True, seed=11)
    b = DataLoader(small(30), batch_size=7, shuffle=True, generator=np.random.default_rng(11))
    for _ in range(3):
        np.testing.assert_array_equal(np.concatenate([y for _, y in a]),
                                      np.concatenate([y for _, y in b]))
    # Restoring a saved generator state replays the next epoch exactly (what resume relies on).
    state = a.generator.bit_generator.state
    expected = np.concatenate([y for _, y in a])
    c = DataLoader(small(30), batch_size=7, shuffle=True, seed=999)
    c.generator.bit_generator.state = state
    np.testing.assert_array_equal(np.concatenate([y for _, y in c]), expected)


def test_drop_last():
    loader = DataLoader(small(10), batch_size=4, shuffle=True, drop_last=True, seed=0)
    sizes = [len(y) for _, y in loader]
    assert sizes == [4, 4] and len(loader) == 2
    exact = DataLoader(small(8), batch_size=4, drop_last=True)
    assert [len(y) for _, y in exact] == [4, 4] and len(exact) == 2


def test_batches_are_copies_and_dtype_is_cast():
    ds = small(6)
    loader = DataLoader(ds, batch_size=3, dtype=np.float64)
    x, y = next(iter(loader))
    assert x.dtype == np.float64 and y.dtype == np.int64
    x32, _ = next(iter(DataLoader(ds, batch_size=3)))
    x32[...] = -1
    assert ds.x.min() == 0  # writing into a batch never touches the data set


def test_loader_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(small(4), batch_size=0)
    with pytest.raises(ValueError, match="device"):
        DataLoader(small(4), device="tpu")
    with pytest.raises(TypeError, match="generator"):
        DataLoader(small(4), generator=np.random.RandomState(0))


@pytest.mark.cuda
def test_batches_arrive_on_the_device(cuda_device):
    x, y = next(iter(DataLoader(small(6), batch_size=4, device=cuda_device)))
    assert kernels.device_of(x) == cuda_device and kernels.device_of(y) == cuda_device
    np.testing.assert_array_equal(kernels.to_host(y), np.arange(4))


# ---------------------------------------------------------------------- split / normalise
def test_split_is_disjoint_complete_and_seeded():
    ds = small(101)
    parts = data.split(ds, (0.8, 0.1, 0.1), seed=5)
    assert [len(p) for p in parts] == [81, 10, 10]
    labels = np.concatenate([p.y for p in parts])
    np.testing.assert_array_equal(np.sort(labels), np.arange(101))
    again = data.split(ds, (0.8, 0.1, 0.1), seed=5)
    for p, q in zip(parts, again):
        np.testing.assert_array_equal(p.y, q.y)
    other = data.split(ds, (0.8, 0.1, 0.1), seed=6)
    assert not np.array_equal(parts[1].y, other[1].y)
    assert [len(p) for p in data.split(ds, [90, 11])] == [90, 11]
    with pytest.raises(ValueError, match="sum to 1"):
        data.split(ds, (0.5, 0.2))


def test_normalize_fits_per_channel_and_round_trips_through_json():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3, 4, 4)) * np.array([1.0, 2.0, 5.0])[None, :, None, None] \
        + np.array([0.0, -1.0, 3.0])[None, :, None, None]
    x = x.astype(np.float32)
    norm = Normalize.fit(x)
    np.testing.assert_allclose(norm.mean, x.astype(np.float64).mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(norm.std, x.astype(np.float64).std(axis=(0, 2, 3)))
    z = norm(x)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1, atol=1e-5)
    again = Normalize.from_dict(norm.to_dict())
    np.testing.assert_array_equal(again(x), z)
    # A constant channel is left unscaled rather than divided by zero.
    const = Normalize.fit(np.ones((5, 2)))
    np.testing.assert_array_equal(const.std, [1.0, 1.0])
    with pytest.raises(ValueError, match=r"expected \(N, 3"):
        norm(np.zeros((2, 1, 4, 4), np.float32))


# ---------------------------------------------------------------------- built-in sets
def test_digits():
    ds = data.digits()
    assert ds.x.shape == (1797, 1, 8, 8) and ds.x.dtype == np.float32
    assert ds.y.shape == (1797,) and ds.y.dtype == np.int64
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    assert ds.num_classes == 10
    # The CSV is read directly (fast); it must match what scikit-learn's loader returns.
    from sklearn.datasets import load_digits
    bunch = load_digits()
    np.testing.assert_array_equal(ds.x[:, 0], (bunch.images / 16.0).astype(np.float32))
    np.testing.assert_array_equal(ds.y, bunch.target)


@pytest.mark.parametrize("make, shape", [(data.blobs, (2,)), (data.xor, (2,)),
                                         (data.gaussian_images, (1, 8, 8))])
def test_synthetic_sets_are_seeded(make, shape):
    a, b, c = make(seed=1), make(seed=1), make(seed=2)
    assert a.sample_shape == shape and a.x.dtype == np.float32 and a.y.dtype == np.int64
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)
    assert len(np.unique(a.y)) >= 2


# ---------------------------------------------------------------------- IDX files
def idx_bytes(array, code=0x08):
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape)
    dtype = {0x08: ">u1", 0x0D: ">f4"}[code]
    return header + array.astype(dtype).tobytes()


@pytest.fixture
def mnist_folder(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 5, 6), dtype=np.uint8)
    labels = rng.integers(0, 10, size=12).astype(np.uint8)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(images[:4]))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels[:4]))
    return tmp_path, images, labels


def test_idx_round_trip_plain_and_gzip(mnist_folder):
    folder, images, labels = mnist_folder
    train, test = data.load_mnist(folder)
    assert train.x.shape == (12, 1, 5, 6) and train.x.dtype == np.float32
    np.testing.assert_allclose(train.x[:, 0], images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(train.y, labels)
    assert train.y.dtype == np.int64
    assert len(test) == 4
    same, none = data.load_mnist(folder / "train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(same.x, train.x)
    assert none is None
    floats = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    path = folder / "floats.idx"
    path.write_bytes(idx_bytes(floats, code=0x0D))
    got = data.read_idx(path)
    assert got.dtype == np.float32 and got.dtype.isnative
    np.testing.assert_array_equal(got, floats)


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: b[:2], "shorter than the 4-byte magic"),
    (lambda b: b"\x01" + b[1:], "bad IDX magic number 0x01000803"),
    (lambda b: b[:3] + b"\x00" + b[4:], "bad IDX magic number"),
    (lambda b: b[:2] + b"\x07" + b[3:], "bad IDX magic number 0x00000703"),
    (lambda b: b[:10], "truncated IDX header"),
    (lambda b: b[:-5], "truncated: the header says"),
    (lambda b: b + b"\x00", "has trailing bytes"),
])
def test_malformed_idx_files_name_the_file_and_the_problem(tmp_path, corrupt, message):
    good = idx_bytes(np.zeros((3, 4, 4), np.uint8))
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(corrupt(good))
    with pytest.raises(DataError, match=message) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_broken_gzip_and_mismatched_pairs(mnist_folder, tmp_path):
    folder, images, labels = mnist_folder
    gz = (folder / "train-images-idx3-ubyte.gz").read_bytes()
    cut = tmp_path / "cut-images-idx3-ubyte.gz"
    cut.write_bytes(gz[: len(gz) // 2])
    with pytest.raises(DataError, match="corrupt or truncated gzip") as info:
        data.read_idx(cut)
    assert str(cut) in str(info.value)
    fake = tmp_path / "fake.gz"
    fake.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x00")
    with pytest.raises(DataError, match="not gzip-compressed"):
        data.read_idx(fake)
    # Labels for a different number of images.
    (tmp_path / "a-images-idx3-ubyte").write_bytes(idx_bytes(images))
    (tmp_path / "a-labels-idx1-ubyte").write_bytes(idx_bytes(labels[:5]))
    with pytest.raises(DataError, match="12 samples but 5 labels"):
        data.load_mnist(tmp_path / "a-images-idx3-ubyte")
    # Files swapped: a labels file where images belong.
    with pytest.raises(DataError, match="expected an images file with 3 dimensions"):
        data.load_idx(tmp_path / "a-labels-idx1-ubyte", tmp_path / "a-labels-idx1-ubyte")


def test_missing_idx_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        data.read_idx(tmp_path / "nope")
    with pytest.raises(DataError, match="no train-images-idx3-ubyte"):
        data.load_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((2, 2, 2), np.uint8)))
    with pytest.raises(DataError, match="but not train-labels-idx1-ubyte"):
        data.load_mnist(tmp_path)
    with pytest.raises(DataError, match="labels file for"):
        data.load_mnist(tmp_path / "train-images-idx3-ubyte")


# ---------------------------------------------------------------------- .npz files
def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (7, 4, 4), dtype=np.uint8)
    y = np.arange(7) % 3
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y, x_test=x[:2].astype(np.float64) / 255, y_test=y[:2])
    train, test = data.load_npz(path)
    assert train.x.shape == (7, 1, 4, 4) and train.x.dtype == np.float32
    np.testing.assert_allclose(train.x[:, 0], x / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(train.y, y)
    np.testing.assert_allclose(test.x, train.x[:2], rtol=1e-6)
    features = tmp_path / "f.npz"
    np.savez(features, x=rng.standard_normal((5, 3)), y=np.zeros(5, np.int32))
    f_train, f_test = data.load_dataset(str(features))
    assert f_train.x.shape == (5, 3) and f_test is None


def test_malformed_npz_files(tmp_path):
    cases = {
        "nokeys.npz": dict(a=np.zeros(3)),
        "objects.npz": dict(x=np.array([{"a": 1}, None], dtype=object), y=np.zeros(2, int)),
        "count.npz": dict(x=np.zeros((4, 2, 2)), y=np.zeros(3, int)),
        "float_labels.npz": dict(x=np.zeros((3, 2, 2)), y=np.zeros(3)),
        "halftest.npz": dict(x=np.zeros((3, 2, 2)), y=np.zeros(3, int), x_test=np.zeros((1, 2, 2))),
        "shape.npz": dict(x=np.zeros(3), y=np.zeros(3, int)),
    }
    messages = {"nokeys.npz": "expected arrays named 'x' and 'y'",
                "objects.npz": "Python objects", "count.npz": "4 samples but 3 labels",
                "float_labels.npz": "expected integer labels",
                "halftest.npz": "'x_test' without 'y_test'", "shape.npz": "expected samples"}
    for name, arrays in cases.items():
        path = tmp_path / name
        np.savez(path, **arrays)
        with pytest.raises(DataError, match=messages[name]) as info:
            data.load_npz(path)
        assert str(path) in str(info.value)
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((3, 2, 2)), y=np.zeros(3, int))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(DataError) as info:
        data.load_npz(truncated)
    assert str(truncated) in str(info.value)
    with pytest.raises(DataError, match="file not found"):
        data.load_npz(tmp_path / "missing.npz")


def test_load_dataset_names():
    d, test = data.load_dataset("digits")
    assert len(d) == 1797 and test is None
    s, _ = data.load_dataset("synthetic", seed=0)
    assert s.sample_shape == (1, 8, 8)
    with pytest.raises(DataError, match="no such file or folder"):
        data.load_dataset("/definitely/not/here")
