"""The built-in dataset plugins: CIFAR-10 and MNIST on tiny generated files, synthetic data, augmentation."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from fake_datasets import (
    CIFAR_FOLDER,
    CIFAR_TRAIN_BATCHES,
    MNIST_FILES,
    idx_images,
    idx_labels,
    write_cifar10,
    write_mnist,
)
from pydantic import ValidationError

from bnbench import BuildContext, DataBundle, DatasetError, DatasetNotFoundError
from bnbench.plugins.datasets import bnbench_register_datasets
from bnbench.plugins.datasets.augment import cifar_augment, random_crop, random_flip
from bnbench.plugins.datasets.cifar10 import Cifar10Options, load_cifar10, prepare_cifar10
from bnbench.plugins.datasets.mnist import MnistOptions, load_mnist, prepare_mnist
from bnbench.plugins.datasets.synthetic import SyntheticOptions, make_synthetic

CIFAR_FILES = [*CIFAR_TRAIN_BATCHES, "test_batch", "batches.meta"]
MNIST_NAMES = [name for pair in MNIST_FILES.values() for name in pair]
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


@dataclass
class Written:
    """What a fake dataset holds, in the (N, C, H, W) layout the plugins return."""

    root: Path
    folder: Path
    train_images: np.ndarray
    train_labels: list[int]
    test_images: np.ndarray
    test_labels: list[int]


def assert_bundle_matches(bundle: DataBundle, written: Written, train: int | None = None, test: int | None = None):
    train = len(written.train_labels) if train is None else train
    test = len(written.test_labels) if test is None else test
    for images, labels, expected_images, expected_labels in (
        (bundle.train_images, bundle.train_labels, written.train_images[:train], written.train_labels[:train]),
        (bundle.test_images, bundle.test_labels, written.test_images[:test], written.test_labels[:test]),
    ):
        assert images.dtype == torch.uint8
        assert images.shape == expected_images.shape
        assert images.is_contiguous()
        assert torch.equal(images, torch.from_numpy(expected_images))
        assert labels.dtype == torch.long
        assert labels.tolist() == expected_labels
    bundle.check("test")


# -- CIFAR-10 -------------------------------------------------------------------------------


def write_fake_cifar(root: Path, per_batch: int = 2, test_size: int = 3) -> Written:
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (5 * per_batch, 3, 32, 32), dtype=np.uint8)
    test_images = rng.integers(0, 256, (test_size, 3, 32, 32), dtype=np.uint8)
    # Marker pixels at positions where a swapped axis or channel order would read something else.
    train_images[0, :, 0, 1] = (11, 12, 13)
    train_images[0, :, 1, 0] = (21, 22, 23)
    train_images[1, :, 31, 30] = (31, 32, 33)
    test_images[0, :, 5, 9] = (41, 42, 43)
    train_labels = [(3 * i + 1) % 10 for i in range(len(train_images))]
    test_labels = [(7 * i + 2) % 10 for i in range(test_size)]
    batches = [
        (train_images[i * per_batch : (i + 1) * per_batch], train_labels[i * per_batch : (i + 1) * per_batch])
        for i in range(5)
    ]
    folder = write_cifar10(root, batches, (test_images, test_labels))
    return Written(root, folder, train_images, train_labels, test_images, test_labels)


@pytest.fixture
def cifar(tmp_path: Path) -> Written:
    return write_fake_cifar(tmp_path / "data")


def cifar_options(written: Written, **options) -> Cifar10Options:
    return Cifar10Options(root=str(written.root), **{"verify_checksums": False, **options})


def test_cifar10_reads_generated_batches(cifar: Written, tmp_path: Path):
    bundle = load_cifar10(cifar_options(cifar), BuildContext(base_dir=tmp_path))
    assert bundle.train_images.shape == (10, 3, 32, 32)
    assert bundle.test_images.shape == (3, 3, 32, 32)
    assert_bundle_matches(bundle, cifar)
    # The markers, spelled out: image n, channel (R, G, B), row, column.
    assert bundle.train_images[0, :, 0, 1].tolist() == [11, 12, 13]
    assert bundle.train_images[0, :, 1, 0].tolist() == [21, 22, 23]
    assert bundle.train_images[1, :, 31, 30].tolist() == [31, 32, 33]
    assert bundle.test_images[0, :, 5, 9].tolist() == [41, 42, 43]
    # Training batches are concatenated in order data_batch_1 .. data_batch_5.
    assert bundle.train_labels.tolist() == [1, 4, 7, 0, 3, 6, 9, 2, 5, 8]
    assert bundle.test_labels.tolist() == [2, 9, 6]
    assert bundle.num_classes == 10
    assert len(bundle.mean) == len(bundle.std) == 3
    assert all(0 < s < 1 for s in bundle.std)
    assert bundle.train_transform is cifar_augment
    assert str(cifar.root) in bundle.description


def test_cifar10_augment_off_has_no_transform(cifar: Written, tmp_path: Path):
    bundle = load_cifar10(cifar_options(cifar, augment=False), BuildContext(base_dir=tmp_path))
    assert bundle.train_transform is None


def test_cifar10_sizes_take_the_first_examples(cifar: Written, tmp_path: Path):
    # 3 training images cross the boundary between data_batch_1 and data_batch_2.
    bundle = load_cifar10(cifar_options(cifar, train_size=3, test_size=2), BuildContext(base_dir=tmp_path))
    assert bundle.train_images.shape == (3, 3, 32, 32)
    assert bundle.test_images.shape == (2, 3, 32, 32)
    assert_bundle_matches(bundle, cifar, train=3, test=2)
    # Sizes beyond the data keep everything.
    bundle = load_cifar10(cifar_options(cifar, train_size=1000, test_size=1000), BuildContext(base_dir=tmp_path))
    assert_bundle_matches(bundle, cifar)


def test_cifar10_relative_root_resolves_against_base_dir(
    cifar: Written, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the working directory
    bundle = load_cifar10(Cifar10Options(root="data", verify_checksums=False), BuildContext(base_dir=tmp_path))
    assert_bundle_matches(bundle, cifar)
    # The default root is "data" too.
    bundle = load_cifar10(Cifar10Options(verify_checksums=False), BuildContext(base_dir=tmp_path))
    assert_bundle_matches(bundle, cifar)
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(Cifar10Options(root="data"), BuildContext(base_dir=elsewhere))
    assert str(elsewhere / "data" / CIFAR_FOLDER) in str(info.value)


def test_cifar10_checksum_mismatch_is_a_dataset_error(cifar: Written, tmp_path: Path):
    options = Cifar10Options(root=str(cifar.root))
    assert options.verify_checksums
    with pytest.raises(DatasetError) as info:
        load_cifar10(options, BuildContext(base_dir=tmp_path))
    assert type(info.value) is DatasetError  # the files are there, so not DatasetNotFoundError
    assert str(cifar.folder) in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_cifar10_missing_files_name_directory_and_files(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(Cifar10Options(root=str(tmp_path)), BuildContext(base_dir=tmp_path))
    message = str(info.value)
    assert str(tmp_path / CIFAR_FOLDER) in message
    for name in CIFAR_FILES:
        assert name in message
    assert "cifar-10-python.tar.gz" in message


def test_cifar10_lists_only_the_missing_files(cifar: Written, tmp_path: Path):
    (cifar.folder / "data_batch_4").unlink()
    (cifar.folder / "batches.meta").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(cifar_options(cifar), BuildContext(base_dir=tmp_path))
    assert f"missing from {cifar.folder}: data_batch_4, batches.meta. " in str(info.value)
    assert "data_batch_1" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "corrupt"),
    [
        ("data_batch_3", lambda data: np.random.default_rng(1).bytes(len(data))),
        ("data_batch_1", lambda data: data[: len(data) // 2]),
        ("test_batch", lambda data: b""),
        ("test_batch", lambda data: pickle.dumps([1, 2, 3])),
        ("data_batch_5", lambda data: pickle.dumps({"data": np.zeros((2, 3000), np.uint8), "labels": [0, 1]})),
        ("batches.meta", lambda data: b"\x80\x02garbage"),
    ],
    ids=["random-bytes", "truncated", "empty", "not-a-dict", "wrong-row-length", "bad-meta"],
)
def test_cifar10_corrupt_file_is_a_dataset_error(cifar: Written, tmp_path: Path, name, corrupt):
    path = cifar.folder / name
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(DatasetError) as info:
        load_cifar10(cifar_options(cifar), BuildContext(base_dir=tmp_path))
    assert type(info.value) is DatasetError
    assert str(cifar.folder) in str(info.value)
    assert info.value.__cause__ is not None


def test_cifar10_labels_not_matching_images_is_a_dataset_error(cifar: Written, tmp_path: Path):
    path = cifar.folder / "data_batch_2"
    entry = pickle.loads(path.read_bytes())
    entry["labels"] = entry["labels"][:1]
    path.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(DatasetError) as info:
        load_cifar10(cifar_options(cifar), BuildContext(base_dir=tmp_path))
    assert str(cifar.folder) in str(info.value)


# -- MNIST ----------------------------------------------------------------------------------


def write_fake_mnist(root: Path, train_size: int = 5, test_size: int = 3) -> Written:
    rng = np.random.default_rng(2)
    train_images = rng.integers(0, 256, (train_size, 28, 28), dtype=np.uint8)
    test_images = rng.integers(0, 256, (test_size, 28, 28), dtype=np.uint8)
    train_images[0, 0, 1] = 201  # row 0, column 1 ...
    train_images[0, 1, 0] = 202  # ... and its transpose
    test_images[2, 27, 3] = 203
    train_labels = [(3 * i + 5) % 10 for i in range(train_size)]
    test_labels = [(7 * i + 4) % 10 for i in range(test_size)]
    folder = write_mnist(root, (train_images, train_labels), (test_images, test_labels))
    return Written(root, folder, train_images[:, None], train_labels, test_images[:, None], test_labels)


@pytest.fixture
def mnist(tmp_path: Path) -> Written:
    return write_fake_mnist(tmp_path / "data")


def test_mnist_reads_generated_idx_files(mnist: Written, tmp_path: Path):
    bundle = load_mnist(MnistOptions(root=str(mnist.root)), BuildContext(base_dir=tmp_path))
    assert bundle.train_images.shape == (5, 1, 28, 28)
    assert bundle.test_images.shape == (3, 1, 28, 28)
    assert_bundle_matches(bundle, mnist)
    assert bundle.train_images[0, 0, 0, 1] == 201
    assert bundle.train_images[0, 0, 1, 0] == 202
    assert bundle.test_images[2, 0, 27, 3] == 203
    assert bundle.train_labels.tolist() == [5, 8, 1, 4, 7]
    assert bundle.test_labels.tolist() == [4, 1, 8]
    assert bundle.num_classes == 10
    assert len(bundle.mean) == len(bundle.std) == 1
    assert bundle.train_transform is None


def test_mnist_sizes_and_relative_root(mnist: Written, tmp_path: Path):
    bundle = load_mnist(MnistOptions(root="data", train_size=2, test_size=1), BuildContext(base_dir=tmp_path))
    assert bundle.train_images.shape == (2, 1, 28, 28)
    assert bundle.test_images.shape == (1, 1, 28, 28)
    assert_bundle_matches(bundle, mnist, train=2, test=1)


def test_mnist_missing_files_name_directory_and_files(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(MnistOptions(root=str(tmp_path)), BuildContext(base_dir=tmp_path))
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    for name in MNIST_NAMES:
        assert name in message


def test_mnist_compressed_files_alone_are_missing(mnist: Written, tmp_path: Path):
    # The plugin reads the uncompressed files; a stray .gz must not count as present.
    path = mnist.folder / "t10k-labels-idx1-ubyte"
    path.rename(path.with_name(path.name + ".gz"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(MnistOptions(root=str(mnist.root)), BuildContext(base_dir=tmp_path))
    assert "t10k-labels-idx1-ubyte" in str(info.value)
    assert "train-images-idx3-ubyte" not in str(info.value)


def test_preparing_files_already_in_place_downloads_nothing(mnist: Written, cifar: Written, tmp_path, monkeypatch):
    def no_network(self):
        raise AssertionError("downloaded files that were in place")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", no_network)
    prepare_mnist(MnistOptions(root=str(mnist.root), download=True), BuildContext(base_dir=tmp_path))
    prepare_cifar10(Cifar10Options(root=str(cifar.root), download=True), BuildContext(base_dir=tmp_path))


def test_preparing_without_download_lists_the_missing_files_and_how_to_get_them(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-batches-py: data_batch_1.*cifar-10-python\.tar\.gz"):
        prepare_cifar10(Cifar10Options(root=str(tmp_path)), BuildContext(base_dir=tmp_path))
    with pytest.raises(DatasetNotFoundError, match=r"or set download = true"):
        prepare_mnist(MnistOptions(root=str(tmp_path)), BuildContext(base_dir=tmp_path))


def test_a_failed_download_is_one_line_saying_why_with_the_fix(tmp_path: Path, monkeypatch):
    def offline(self):
        print("Downloading https://example/cifar-10-python.tar.gz")
        raise RuntimeError("<urlopen error [Errno -2] Name or service not known>\nsecond line")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(DatasetNotFoundError) as info:
        prepare_cifar10(Cifar10Options(root=str(tmp_path), download=True), BuildContext(base_dir=tmp_path))
    message = str(info.value)
    assert "\n" not in message and "could not fetch them (RuntimeError: <urlopen error" in message
    assert "second line" in message and "cifar-10-python.tar.gz from https://www.cs.toronto.edu" in message


def _truncated_images(data: bytes) -> bytes:
    return data[: 16 + 28 * 28 + 100]  # header says 5 images, body holds 1.13


@pytest.mark.parametrize(
    ("name", "corrupt"),
    [
        ("train-images-idx3-ubyte", _truncated_images),
        ("train-images-idx3-ubyte", lambda data: data[:3]),
        ("t10k-images-idx3-ubyte", lambda data: np.random.default_rng(3).bytes(len(data))),
        ("t10k-labels-idx1-ubyte", lambda data: data[:-1]),
        ("train-labels-idx1-ubyte", lambda data: idx_images(np.zeros((5, 28, 28), np.uint8))),
        ("train-images-idx3-ubyte", lambda data: idx_labels([1, 2, 3, 4, 5])),
    ],
    ids=["truncated-images", "truncated-header", "random-bytes", "truncated-labels", "images-as-labels", "swapped"],
)
def test_mnist_corrupt_file_is_a_dataset_error(mnist: Written, tmp_path: Path, name, corrupt):
    path = mnist.folder / name
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(DatasetError) as info:
        load_mnist(MnistOptions(root=str(mnist.root)), BuildContext(base_dir=tmp_path))
    assert type(info.value) is DatasetError
    assert str(mnist.folder) in str(info.value)
    assert info.value.__cause__ is not None


def test_mnist_labels_not_matching_images_is_a_dataset_error(mnist: Written, tmp_path: Path):
    (mnist.folder / "train-labels-idx1-ubyte").write_bytes(idx_labels([1, 2, 3]))  # 5 images, 3 labels
    with pytest.raises(DatasetError) as info:
        load_mnist(MnistOptions(root=str(mnist.root)), BuildContext(base_dir=tmp_path))
    assert str(mnist.folder) in str(info.value)


# -- options and registration -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (Cifar10Options, {"rooot": "x"}),
        (MnistOptions, {"train_sizes": 10}),
        (SyntheticOptions, {"classes": 3}),
        (Cifar10Options, {"train_size": 0}),
        (SyntheticOptions, {"image_shape": [3, 32]}),
        (SyntheticOptions, {"image_shape": [3, 0, 32]}),
        (SyntheticOptions, {"num_classes": 1}),
    ],
)
def test_options_reject_unknown_and_invalid_fields(model, fields):
    with pytest.raises(ValidationError):
        model(**fields)


def test_plugin_registers_the_three_datasets():
    registered = {}

    def register(name, factory, *, options=None, description=None, describe=None, prepare=None, default=False):
        registered[name] = (factory, options, describe.__name__, prepare and prepare.__name__, default)

    bnbench_register_datasets(register)
    assert registered == {  # synthetic: the dataset the contract kits train on (default=True)
        "cifar10": (load_cifar10, Cifar10Options, "describe_cifar10", "prepare_cifar10", False),
        "mnist": (load_mnist, MnistOptions, "describe_mnist", "prepare_mnist", False),
        "synthetic": (make_synthetic, SyntheticOptions, "describe_synthetic", None, True),
    }


# -- synthetic --------------------------------------------------------------------------------


def synthetic(**options) -> DataBundle:
    return make_synthetic(SyntheticOptions(**options), BuildContext(base_dir=Path.cwd()))


def test_synthetic_is_deterministic_per_seed():
    small = {"image_shape": [2, 8, 6], "num_classes": 3, "train_size": 40, "test_size": 20}
    a, b, c = synthetic(seed=5, **small), synthetic(seed=5, **small), synthetic(seed=6, **small)
    for split in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(a, split), getattr(b, split))
    assert a.mean == b.mean and a.std == b.std
    assert not torch.equal(a.train_images, c.train_images)
    assert not torch.equal(a.test_images, c.test_images)


def test_synthetic_respects_its_options():
    bundle = synthetic(image_shape=[1, 12, 20], num_classes=4, train_size=30, test_size=7)
    assert bundle.train_images.shape == (30, 1, 12, 20)
    assert bundle.test_images.shape == (7, 1, 12, 20)
    assert bundle.train_images.dtype == torch.float32
    assert bundle.train_labels.shape == (30,) and bundle.test_labels.shape == (7,)
    assert bundle.train_labels.dtype == torch.long
    assert bundle.num_classes == 4
    for images in (bundle.train_images, bundle.test_images):
        assert images.min() >= 0 and images.max() <= 1
    for labels in (bundle.train_labels, bundle.test_labels):
        assert labels.min() >= 0 and labels.max() < 4
    assert len(bundle.mean) == len(bundle.std) == 1
    assert bundle.train_transform is None
    assert synthetic(augment=True, train_size=8, test_size=8).train_transform is cifar_augment
    bundle.check("synthetic")


def test_synthetic_default_is_cifar_shaped_and_balanced():
    bundle = synthetic()
    assert bundle.train_images.shape == (2048, 3, 32, 32)
    assert bundle.test_images.shape == (512, 3, 32, 32)
    assert bundle.num_classes == 10
    counts = torch.bincount(bundle.train_labels, minlength=10)
    assert counts.min() > 2048 / 10 / 2  # every class is well represented
    mean = bundle.train_images.mean(dim=(0, 2, 3))
    assert torch.allclose(torch.tensor(bundle.mean), mean, atol=1e-5)
    bundle.check("synthetic")


def nearest_mean_accuracy(bundle: DataBundle) -> float:
    train = bundle.train_images.flatten(1)
    means = torch.stack([train[bundle.train_labels == k].mean(dim=0) for k in range(bundle.num_classes)])
    predicted = torch.cdist(bundle.test_images.flatten(1), means).argmin(dim=1)
    return (predicted == bundle.test_labels).float().mean().item()


@pytest.mark.parametrize("seed", [0, 1])
def test_synthetic_classes_are_learnable(seed):
    assert nearest_mean_accuracy(synthetic(seed=seed)) > 0.5  # chance is 0.1


def test_synthetic_noise_controls_difficulty():
    small = {"image_shape": [1, 8, 8], "train_size": 500, "test_size": 500}
    easy = nearest_mean_accuracy(synthetic(noise=0.0, **small))
    hard = nearest_mean_accuracy(synthetic(noise=2.0, **small))
    assert easy > 0.95
    assert hard < easy


# -- augmentation -----------------------------------------------------------------------------


def generator(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def crop_offsets(images: torch.Tensor, out: torch.Tensor, padding: int) -> list[list[tuple[int, int]]]:
    """For each image, every (dy, dx) whose window of the zero-padded input equals the output."""
    _, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    return [
        [
            (dy, dx)
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + h, dx : dx + w])
        ]
        for i in range(images.shape[0])
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_random_crop_is_a_window_of_the_padded_image(device, dtype):
    images = (torch.rand(24, 2, 5, 7, generator=generator(0)) * 200 + 20).to(dtype).to(device)
    out = random_crop(images, generator(1, device), padding=2)
    assert out.shape == images.shape and out.dtype == dtype and out.device == images.device
    offsets = crop_offsets(images.cpu(), out.cpu(), 2)
    assert all(len(found) == 1 for found in offsets)  # the images are random, so exactly one window fits
    assert len({found[0] for found in offsets}) > 5  # offsets vary across the batch
    assert torch.equal(out, random_crop(images, generator(1, device), padding=2))


def test_random_crop_reaches_every_offset():
    images = torch.rand(400, 1, 4, 4, generator=generator(0)) + 0.5
    offsets = crop_offsets(images, random_crop(images, generator(2), padding=1), 1)
    assert {found[0] for found in offsets} == {(dy, dx) for dy in range(3) for dx in range(3)}


def test_random_crop_without_padding_is_identity():
    images = torch.rand(3, 3, 8, 8)
    assert random_crop(images, generator(0), padding=0) is images


@pytest.mark.parametrize("device", DEVICES)
def test_random_flip_mirrors_about_half(device):
    images = torch.rand(200, 3, 6, 5, generator=generator(0)).to(device)
    out = random_flip(images, generator(3, device))
    assert out.shape == images.shape
    same = (out == images).flatten(1).all(dim=1)
    mirrored = (out == images.flip(3)).flatten(1).all(dim=1)
    assert torch.all(same ^ mirrored)  # each image is one or the other (never its own mirror here)
    assert 50 < mirrored.sum().item() < 150
    assert torch.equal(out, random_flip(images, generator(3, device)))
    assert not torch.equal(out, random_flip(images, generator(4, device)))


def test_cifar_augment_keeps_shape_and_is_seeded():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=generator(0))
    out = cifar_augment(images, generator(5))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out, cifar_augment(images, generator(5)))
    assert not torch.equal(out, cifar_augment(images, generator(6)))
    # Every output is a 4-pixel-padded window of the input or of its mirror.
    direct = crop_offsets(images, out, 4)
    mirrored = crop_offsets(images, out.flip(3), 4)
    assert all(a or b for a, b in zip(direct, mirrored, strict=True))


def test_with_its_defaults_synthetic_separates_normalizers(write_manifest):
    # a comparison on the default synthetic data must be able to say something: with the default
    # MLP, one epoch, batch norm beats no normalization by far (measured: 87 % against 12 %)
    from bnbench.session import open_session
    from bnbench.store import Store
    from bnbench.sweep import run_manifest

    text = """
    [harness]
    results = "r.sqlite"
    device = "cpu"
    [[studies]]
    name = "defaults"
    model = "mlp"
    dataset = "synthetic"
    normalizer = ["none", "batchnorm"]
    placement = "all"
    epochs = 1
    seeds = [0, 1, 2]
    [studies.optimizer]
    lr = 0.1
    """
    manifest = open_session(write_manifest(text)).manifest
    run_manifest(manifest)
    with Store(manifest.results_path) as store:
        runs = store.load(r.run_id for r in manifest.runs()).values()
    accuracy = {name: [r.final("test_accuracy") for r in runs if r.spec["normalizer"]["name"] == name]
                for name in ("none", "batchnorm")}  # fmt: skip
    assert max(accuracy["none"]) < 0.4 and min(accuracy["batchnorm"]) > 0.7, accuracy


def test_descriptions_read_the_training_size_from_the_files_on_disk(mnist: Written, cifar: Written, tmp_path: Path):
    from bnbench.plugins.datasets.cifar10 import describe_cifar10
    from bnbench.plugins.datasets.mnist import describe_mnist

    context = BuildContext(base_dir=tmp_path)
    assert describe_mnist(MnistOptions(root=str(mnist.root)), context).train_size == 5  # the IDX header
    assert describe_mnist(MnistOptions(root=str(tmp_path / "nowhere")), context).train_size == 60_000
    assert describe_mnist(MnistOptions(root=str(mnist.root), train_size=3), context).train_size == 3
    cifar_size = len(cifar.train_labels)
    assert describe_cifar10(Cifar10Options(root=str(cifar.root)), context).train_size == cifar_size


def test_plan_refuses_a_validation_split_larger_than_the_files_on_disk(mnist: Written, tmp_path: Path):
    from bnbench.errors import ManifestError
    from bnbench.plan import check_runs
    from bnbench.registry import load_registry
    from bnbench.session import open_session

    path = tmp_path / "m.toml"
    path.write_text(
        f"""
[[studies]]
name = "digits"
model = {{ name = "mlp", widths = [8] }}
dataset = {{ name = "mnist", root = "{mnist.root}" }}
normalizer = "batchnorm"
placement = "all"
epochs = 1
batch_size = 2
validation_size = 5000
"""
    )
    manifest = open_session(path).manifest
    with pytest.raises(ManifestError, match="validation_size 5000 must be below the 5 training examples"):
        check_runs(manifest.runs(), load_registry(), str(path))


def test_a_packs_batches_augmented_at_once_equal_each_members_own_augmentation_bitwise():
    """cifar_augment.stack draws each member's crop offsets and flips from its own generator, in
    the order its run alone draws them, and applies them all at once."""
    images = torch.rand(3, 8, 3, 6, 6)
    seeds = [5, 6, 7]
    alone = torch.stack([cifar_augment(images[i], generator(seed)) for i, seed in enumerate(seeds)])
    stacked = cifar_augment.stack(images, [generator(seed) for seed in seeds])
    assert torch.equal(stacked, alone)
    assert not torch.equal(stacked[0], cifar_augment(images[0], generator(6)))  # the draws are the member's own
