"""``storage = "stream"``: CIFAR-10 and MNIST read per example through torchvision and a DataLoader,
giving the same batches, and so the same runs, as the in-memory tensors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from conftest import run_until_stopped
from pydantic import ValidationError
from test_datasets import write_fake_cifar, write_fake_mnist

from bnbench import BuildContext, DataBundle, DatasetNotFoundError, hookimpl
from bnbench.checkpoint import Checkpoints
from bnbench.data import DeviceData, StreamData, StreamImages
from bnbench.plugins.datasets.cifar10 import Cifar10Options, load_cifar10
from bnbench.plugins.datasets.common import TorchvisionSource
from bnbench.plugins.datasets.mnist import MnistOptions, load_mnist
from bnbench.runner import Runner
from bnbench.session import open_session

CPU = torch.device("cpu")

STUDY = """
[harness]
results = "results.sqlite"
device = "cpu"

[[studies]]
name = "stream"
model = {{ name = "mlp", widths = [16] }}
dataset = {{ name = "{dataset}", root = "data", storage = {storage}, loader_workers = {workers}{extra} }}
normalizer = "batchnorm"
placement = "all"
input_transform = {{ name = "gaussian_noise", std = 0.1 }}
epochs = 3
batch_size = 4
eval_batch_size = 3
validation_size = 4
metrics = ["train_loss", "train_accuracy", "test_loss", "test_accuracy", "validation_loss",
           {{ name = "robustness", train_sample = 5 }}]
seeds = [0]
deterministic = true

[studies.optimizer]
lr = 0.05
"""


def write_data(dataset: str, root: Path) -> None:
    """20 training and 5 test examples in the real file format (4 steps per epoch once 4 are held out)."""
    if dataset == "mnist":
        write_fake_mnist(root, train_size=20, test_size=5)
    else:
        write_fake_cifar(root, per_batch=4, test_size=5)


def plan(tmp_path: Path, registry, dataset: str, storage: str = '["memory", "stream"]', workers: int = 0):
    write_data(dataset, tmp_path / "data")
    extra = ", verify_checksums = false" if dataset == "cifar10" else ""  # CIFAR-10 augments by default
    path = tmp_path / "manifest.toml"
    path.write_text(textwrap.dedent(STUDY.format(dataset=dataset, storage=storage, workers=workers, extra=extra)))
    manifest = open_session(path, registry=registry).manifest
    return manifest, manifest.runs()


class Weights:
    """Records each run's final weights, in the order the runs end."""

    def __init__(self) -> None:
        self.final: list[dict[str, torch.Tensor]] = []

    @hookimpl
    def bnbench_run_end(self, run, result):
        self.final.append({k: v.detach().clone() for k, v in run.model.state_dict().items()})


def history(result) -> list:
    return [(e.epoch, e.step, e.metrics) for e in result.epochs]


@pytest.mark.parametrize(
    ("dataset", "workers", "device"),
    [
        ("mnist", 0, "cpu"),
        ("cifar10", 0, "cpu"),
        ("mnist", 1, "cpu"),
        pytest.param(
            "cifar10", 1, "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
        ),
    ],
)
def test_stream_storage_trains_bitwise_like_memory_storage(tmp_path: Path, registry, dataset, workers, device):
    manifest, runs = plan(tmp_path, registry, dataset, workers=workers)
    memory, stream = runs
    assert manifest.studies[0].axes == ["dataset.storage"]
    assert (memory.spec.dataset.runtime["storage"], stream.spec.dataset.runtime["storage"]) == ("memory", "stream")
    assert memory.run_id == stream.run_id  # how the data is read is not what the run is
    weights = Weights()
    registry.manager.register(weights)
    try:
        runner = Runner(registry, base_dir=manifest.base_dir, device=device)
        results = [runner.run(planned) for planned in runs]
    finally:
        registry.manager.unregister(weights)
    assert [r.status for r in results] == ["done", "done"], [r.error for r in results]
    data = runner.data.get(stream.spec.dataset, runner.device, stream.spec.validation_size)
    assert isinstance(data, StreamData) and isinstance(data.train_images, StreamImages)
    assert data.bundle.loader_workers == workers
    assert type(runner.data.get(memory.spec.dataset, runner.device)) is DeviceData
    assert results[0].info["steps_per_epoch"] == results[1].info["steps_per_epoch"] == 4
    assert history(results[1]) == history(results[0])
    assert "robustness.train_accuracy" in results[1].epochs[-1].metrics  # fixed samples (``sample``) were read
    first, second = weights.final
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_stream_storage_resumes_midway_through_an_epoch(tmp_path: Path, registry):
    manifest, runs = plan(tmp_path, registry, "cifar10", storage='"stream"')
    (planned,) = runs
    uninterrupted = Runner(registry, base_dir=manifest.base_dir, device="cpu").run(planned)
    assert uninterrupted.status == "done", uninterrupted.error
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    stopped = run_until_stopped(registry, planned, manifest.base_dir, checkpoints, at_step=6)  # midway, epoch 2
    assert stopped.step == 6
    resumed = Runner(registry, base_dir=manifest.base_dir, device="cpu", checkpoints=checkpoints).run(planned)
    assert resumed.status == "done" and resumed.info["resumed_from_step"] == 6
    assert history(resumed) == history(uninterrupted)


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_stream_source_reads_each_example_through_torchvision(tmp_path: Path, dataset, monkeypatch):
    write_data(dataset, tmp_path / "data")
    context = BuildContext(base_dir=tmp_path)

    def load(**options) -> DataBundle:
        if dataset == "mnist":
            return load_mnist(MnistOptions(root="data", **options), context)
        return load_cifar10(Cifar10Options(root="data", verify_checksums=False, **options), context)

    memory, stream = load(), load(storage="stream", train_size=18, test_size=4)
    assert not memory.streamed and stream.streamed
    for split, size in (("train", 18), ("test", 4)):
        source, labels = getattr(stream, f"{split}_images"), getattr(stream, f"{split}_labels")
        assert isinstance(source, TorchvisionSource) and len(source) == size
        assert source.image_shape == tuple(memory.train_images.shape[1:])
        images = getattr(memory, f"{split}_images")
        assert all(torch.equal(source[i], images[i]) for i in range(size))  # the same pixels, example by example
        assert torch.equal(labels, getattr(memory, f"{split}_labels")[:size])
        with pytest.raises(IndexError):
            source[size]
    assert stream.info == memory.info and stream.mean == memory.mean
    stream.check(dataset)

    # A training epoch reads exactly its batches' examples, one at a time, in the permutation's order.
    read: list[int] = []
    original = TorchvisionSource.__getitem__

    def counting(self, index):
        read.append(index)
        return original(self, index)

    monkeypatch.setattr(TorchvisionSource, "__getitem__", counting)
    data = DeviceData.from_bundle(stream, CPU)
    order = data.epoch_order(torch.Generator().manual_seed(3))
    batches = list(data.train_batches(5, torch.Generator().manual_seed(4), order, start_batch=1))
    assert len(batches) == 2  # 18 // 5 = 3 batches, the first skipped
    assert read == order[5:15].tolist()


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_stream_options_are_validated_and_missing_files_named(tmp_path: Path, dataset):
    options = MnistOptions if dataset == "mnist" else Cifar10Options
    for field, value in (("storage", "disk"), ("loader_workers", -1), ("loader_workers", "two")):
        with pytest.raises(ValidationError) as info:
            options(**{field: value})
        assert [error["loc"] for error in info.value.errors()] == [(field,)]
    assert options().storage == "memory" and options().loader_workers == 0
    for field in ("storage", "loader_workers"):
        assert options.model_fields[field].description
    loader = load_mnist if dataset == "mnist" else load_cifar10
    with pytest.raises(DatasetNotFoundError) as missing:
        loader(options(root=str(tmp_path), storage="stream"), BuildContext(base_dir=tmp_path))
    assert str(tmp_path) in str(missing.value)


class TensorSource:
    """A ``SampleSource`` over a tensor: the core needs nothing more of a dataset."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images
        self.image_shape = tuple(images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def bundle(train, test, labels: int = 6) -> DataBundle:
    return DataBundle(
        train, torch.zeros(labels, dtype=torch.long), test, torch.zeros(2, dtype=torch.long), 2, (0.5,), (0.5,)
    )


def test_bundle_check_accepts_sources_and_names_their_problems():
    images = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8)
    test = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    good = bundle(TensorSource(images), TensorSource(test))
    good.check("custom")
    assert good.streamed and good.info.input_shape == (1, 4, 4)
    data = DeviceData.from_bundle(good, CPU)
    assert torch.equal(data.train_images[torch.tensor([4, 1])], images[[4, 1]])
    assert torch.equal(data.test_images[:], test)
    problems = {
        "both be tensors or both SampleSource": bundle(TensorSource(images), test),
        "train_labels must be (N,) matching train_images": bundle(TensorSource(images), TensorSource(test), labels=5),
        "train_images must be uint8 or float": bundle(TensorSource(images.long()), TensorSource(test)),
        "test_images must be a tensor or a SampleSource": bundle(images, [test]),
    }
    for message, wrong in problems.items():
        with pytest.raises(ValueError, match="dataset 'custom' returned an invalid DataBundle") as info:
            wrong.check("custom")
        assert message in str(info.value)
    shapeless = TensorSource(images)
    shapeless.image_shape = (1, 4, 5)
    with pytest.raises(ValueError, match=r"train_images\[0\] must be a tensor of image_shape \(1, 4, 5\)"):
        bundle(shapeless, TensorSource(test)).check("custom")
