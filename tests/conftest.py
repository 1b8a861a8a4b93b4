"""Shared fixtures: the A72 target, its space and a cost table; small networks."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from deploy.cost_table import CostTable
from deploy.targets import get_target
from envs import zoo
from envs.network import Layer, Network, Op


@functools.cache
def load_script(name: str) -> ModuleType:
    """`experiments/<name>.py` imported as the module `name` (once per process)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def a72():
    return get_target("cortex-a72")


@pytest.fixture(scope="session")
def a72_space(a72):
    return a72.search_space()


@pytest.fixture(scope="session")
def a72_table(a72, a72_space):
    return CostTable(a72.backend(), a72_space)


@pytest.fixture(scope="session")
def mobilenet_v2():
    return zoo.get_network("mobilenet_v2")


def tiny_network(size: int = 16) -> Network:
    """conv 3x3 -> depthwise -> pointwise -> residual add -> global pool -> dense (10 classes)."""
    return Network(
        "tiny",
        (3, size, size),
        (
            Layer("stem", Op.CONV, ("input",), (3, size, size), (16, size, size), (3, 3), (1, 1), (1, 1), batch_norm=True, activation="relu"),
            Layer("dw", Op.DEPTHWISE, ("stem",), (16, size, size), (16, size, size), (3, 3), (1, 1), (1, 1), groups=16, batch_norm=True, activation="relu"),
            Layer("pw", Op.POINTWISE, ("dw",), (16, size, size), (16, size, size), batch_norm=True),
            Layer("add", Op.ADD, ("pw", "stem"), (16, size, size), (16, size, size)),
            Layer("conv2", Op.CONV, ("add",), (16, size, size), (32, size // 2, size // 2), (3, 3), (2, 2), (1, 1), batch_norm=True, activation="relu"),
            Layer("pool", Op.POOL, ("conv2",), (32, size // 2, size // 2), (32, 1, 1), pool="global_avg"),
            Layer("fc", Op.DENSE, ("pool",), (32, 1, 1), (10, 1, 1), bias=True),
        ),
    )


@pytest.fixture(scope="session")
def tiny():
    return tiny_network()


@pytest.fixture(scope="session")
def tiny_oracle(tiny):
    """The accuracy oracle of the tiny network (trained once, cached under DEPLOYGYM_CACHE)."""
    from envs.accuracy import oracle_for

    return oracle_for(tiny, epochs=15)


def small_digits():
    """The first 320 training and 120 held-out images of the 32x32 digits: a supernet trains in seconds."""
    from envs.accuracy import Dataset, digits_dataset

    full = digits_dataset(32)
    return Dataset(full.x_train[:320], full.y_train[:320], full.x_test[:120], full.y_test[:120], "digits-32-first320")


def trained_supernet_oracle(space, epochs: int, cache_dir):
    """The supernet of `space` trained for `epochs` on `small_digits`, as an accuracy oracle."""
    from envs.subnet_accuracy import SupernetOracle
    from envs.supernet_training import spec_for, train_supernet

    data = small_digits()
    supernet, _ = train_supernet(space, data, epochs=epochs, cache_dir=cache_dir)
    return SupernetOracle(supernet, data, spec_for(space, data, epochs).key)


@pytest.fixture(scope="session")
def supernet_oracle(tmp_path_factory):
    """The MobileNetV2 supernet trained for 3 epochs on `small_digits`, as an accuracy oracle."""
    from envs.arch_space import MobileNetV2ArchSpace

    return trained_supernet_oracle(MobileNetV2ArchSpace(), 3, tmp_path_factory.mktemp("supernet"))


@pytest.fixture(scope="session")
def resnet_supernet_oracle(tmp_path_factory):
    """The ResNet-18 supernet trained for 1 epoch on `small_digits`, as an accuracy oracle."""
    from envs.arch_space import ResNet18ArchSpace

    return trained_supernet_oracle(ResNet18ArchSpace(), 1, tmp_path_factory.mktemp("resnet_supernet"))


def pytest_configure(config) -> None:
    """Trained accuracy proxies are cached across test runs in .cache/ (not in the user's home)."""
    import os
    from pathlib import Path

    os.environ.setdefault("DEPLOYGYM_CACHE", str(Path(__file__).resolve().parents[1] / ".cache" / "deploygym"))
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one of `make test`'s parallel workers: one core each
        import torch

        torch.set_num_threads(1)


SLOWEST_FIRST = ("test_run_ppo.py", "test_validate.py", "test_nas.py", "test_npu.py", "test_codesign_cli.py", "test_measured_search.py")
"""Test modules that run for minutes (end-to-end searches and builds), longest first."""


def pytest_collection_modifyitems(config, items) -> None:
    """`make test` hands whole modules to two workers (pytest-xdist `--dist loadscope`, so a module's
    fixtures are built once) in collection order: the modules that run for minutes come first, so that
    neither worker starts one near the end while the other sits idle."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


_TORCHVISION_OPS: list = []


def torchvision_models() -> ModuleType:
    """`torchvision.models`, importable beside the CPU build of torch pinned here.

    PyPI's torchvision wheel is built against the CUDA build of torch: its compiled ops do not load
    beside the CPU build, and importing it then fails while registering shapes for `torchvision::nms`
    and `qnms` ("operator ... does not exist"). The model definitions are pure Python and use none of
    those ops, so when that happens the two operator schemas are declared (no kernels) and the import
    is retried.
    """
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
        import torch

        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_OPS.append(library)  # the schemas live as long as the library object
        import torchvision
    return torchvision.models
