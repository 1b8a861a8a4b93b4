"""The weight-sharing supernet, its sandwich training (checkpoints, resume, TensorBoard) and the
sub-network accuracy oracle, on a small slice of scikit-learn's digits."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.accuracy import digits_dataset
from envs.arch_space import MobileNetV2ArchSpace, ResNet18ArchSpace
from envs.supernet import Supernet, shared_slice
from envs.supernet_training import SupernetCheckpointError, heldout_accuracy, spec_for, train_supernet
from envs.zoo import MBBlock
from tests.conftest import small_digits

ROOT = Path(__file__).resolve().parents[1]
SPACE = MobileNetV2ArchSpace()


@pytest.fixture(scope="module")
def data():
    return small_digits()


@pytest.fixture(scope="module")
def few(data):
    """64 training and 32 held-out images: enough to check checkpoints and resuming (a fifth of the
    training time of `data`), not accuracy."""
    from envs.accuracy import Dataset

    return Dataset(data.x_train[:64], data.y_train[:64], data.x_test[:32], data.y_test[:32], "digits-32-first64")


def test_smaller_kernels_are_centre_crops_and_expansions_leading_channels():
    weight = torch.arange(4 * 1 * 7 * 7, dtype=torch.float32).reshape(4, 1, 7, 7)
    crop = shared_slice(weight, (2, 1, 3, 3))
    assert torch.equal(crop, weight[:2, :, 2:5, 2:5])
    assert torch.equal(shared_slice(weight, (4, 1, 5, 5)), weight[:, :, 1:6, 1:6])
    assert torch.equal(shared_slice(torch.arange(10.0), (6,)), torch.arange(6.0))
    with pytest.raises(ValueError, match="too large"):
        shared_slice(weight, (5, 1, 7, 7))
    with pytest.raises(ValueError, match="no centre crop"):
        shared_slice(weight, (4, 1, 4, 4))


@pytest.mark.parametrize("space", [MobileNetV2ArchSpace(), ResNet18ArchSpace()], ids=["mobilenet_v2", "resnet18"])
def test_a_subnetwork_runs_on_the_shared_weights_and_extracts_to_the_same_model(space):
    torch.manual_seed(0)
    supernet = Supernet(space).eval()
    blocks = space.sample(np.random.default_rng(3))
    x = torch.rand(4, 3, 32, 32)
    standalone = supernet.extract(blocks)
    assert standalone.network.name == supernet.subnetwork(blocks).name
    assert sum(p.numel() for p in standalone.parameters()) < sum(p.numel() for p in supernet.parameters())
    torch.testing.assert_close(supernet(x, blocks), standalone(x))


def test_training_a_small_subnetwork_touches_only_its_share_of_the_weights():
    torch.manual_seed(0)
    supernet = Supernet(SPACE).train()
    blocks = tuple(SPACE.ORIGINAL[:1]) + (MBBlock(3, 3),) * (SPACE.blocks - 1)
    supernet(torch.rand(4, 3, 32, 32), blocks).sum().backward()
    dw = supernet.body.layer_module("b5.dw").conv.weight  # 7x7 kernels over 6 x 32 channels
    grad = dw.grad.abs()[:, 0]
    assert grad[: 3 * 32, 2:5, 2:5].sum() > 0  # the centre 3x3 of the first 3 x 32 channels learns
    assert grad[3 * 32 :].eq(0).all() and grad[:, :2].eq(0).all() and grad[:, 5:].eq(0).all()


def test_standalone_subnetwork_scores_what_the_oracle_answers(supernet_oracle, data):
    oracle = supernet_oracle
    for blocks in [SPACE.ORIGINAL, SPACE.smallest(), SPACE.sample(np.random.default_rng(7))]:
        standalone = oracle.standalone(blocks)
        layers = standalone.network.searchable_layers
        assert oracle.accuracy(["fp32"] * len(layers), blocks) == pytest.approx(heldout_accuracy(standalone, data), abs=1e-7)


def test_accuracy_depends_on_architecture_and_precision_and_a_cached_query_is_fast(supernet_oracle):
    oracle = supernet_oracle
    rng = np.random.default_rng(0)
    answers = {}
    for _ in range(6):
        blocks = SPACE.sample(rng)
        n = len(oracle.supernet.subnetwork(blocks).searchable_layers)
        answers[SPACE.labels(blocks)] = oracle.accuracy(["int8"] * n, blocks)
    assert len(set(answers.values())) > 1, answers  # not a constant oracle
    blocks = SPACE.smallest()
    n = len(oracle.supernet.subnetwork(blocks).searchable_layers)
    first = oracle.accuracy(["fp16"] * n, blocks)
    misses = oracle.cache_info().misses
    start = time.perf_counter()
    for _ in range(100):
        assert oracle.accuracy(["fp16"] * n, blocks) == first
    assert (time.perf_counter() - start) / 100 < 0.010
    assert oracle.cache_info().misses == misses
    with pytest.raises(ValueError, match="expected 53 precisions"):
        oracle.accuracy(["fp32"] * 3, SPACE.largest())
    with pytest.raises(ValueError, match="block b2 cannot be skip"):
        oracle.accuracy(["fp32"] * 10, (SPACE.ORIGINAL[0], MBBlock(skip=True)) + SPACE.ORIGINAL[2:])


def test_training_resumes_from_its_checkpoint_to_the_same_weights_and_logs_tensorboard(few, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    straight, _ = train_supernet(SPACE, few, epochs=2, cache_dir=tmp_path / "a")
    first, checkpoint = train_supernet(SPACE, few, epochs=2, cache_dir=tmp_path / "b", stop_after=1, log_dir=tmp_path / "tb")
    assert not checkpoint["complete"] and len(checkpoint["history"]) == 1
    resumed, checkpoint = train_supernet(SPACE, few, epochs=2, cache_dir=tmp_path / "b", log_dir=tmp_path / "tb")
    assert checkpoint["complete"] and len(checkpoint["history"]) == 2
    for (name, a), b in zip(straight.body.state_dict().items(), resumed.body.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    steps = [e.step for e in events.Scalars("supernet/heldout_accuracy_largest")]
    assert steps == [1, 2]
    assert len(events.Scalars("supernet/heldout_accuracy_smallest")) == 2
    again, _ = train_supernet(SPACE, few, epochs=2, cache_dir=tmp_path / "b")  # finished: loaded, not trained
    torch.testing.assert_close(next(again.parameters()), next(resumed.parameters()))


def test_a_corrupt_checkpoint_is_a_clear_error_and_retrained_only_when_asked(few, tmp_path):
    path = spec_for(SPACE, few, 1).path(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(SupernetCheckpointError, match="corrupt or unreadable.*--restart"):
        train_supernet(SPACE, few, epochs=1, cache_dir=tmp_path)
    assert path.read_bytes() == b"not a checkpoint"  # nothing lost or overwritten
    _, checkpoint = train_supernet(SPACE, few, epochs=1, cache_dir=tmp_path, restart=True)
    assert checkpoint["complete"] and torch.load(path, weights_only=True)["complete"]


def _command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "train_supernet.py"), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )


def test_training_command_names_a_corrupt_checkpoint_and_bad_image_folders(tmp_path):
    data = digits_dataset(32)
    path = spec_for(SPACE, data, 2).path(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00" * 10)
    done = _command("--proxy", "digits", "--epochs", "2", "--cache-dir", str(tmp_path), "--logdir", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"error: supernet checkpoint {path} is corrupt" in done.stderr and "--restart" in done.stderr
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    done = _command("--image-folder", str(empty), "--cache-dir", str(tmp_path))
    assert done.returncode == 2 and "has no images" in done.stderr
    one = tmp_path / "one"
    (one / "cat").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(one / "cat" / "a.png")
    done = _command("--image-folder", str(one), "--cache-dir", str(tmp_path))
    assert done.returncode == 2 and "has one class ('cat')" in done.stderr


def test_accuracy_predictor_reports_its_rank_correlation_on_held_out_subnetworks(supernet_oracle):
    from envs.accuracy_predictor import fit_predictor

    predictor = fit_predictor(supernet_oracle, samples=20, held_out=0.25, seed=0)
    report = predictor.report
    assert (report.samples, report.held_out) == (20, 5)
    assert -1 <= report.spearman <= 1 and -1 <= report.kendall <= 1 and 0 <= report.mean_abs_error <= 1
    assert predictor.provenance.startswith("predicted:ridge@20/spearman=") and predictor.provenance.endswith("/supernet")
    assert predictor.baseline_accuracy == supernet_oracle.baseline_accuracy  # the reference stays measured
    blocks = SPACE.sample(np.random.default_rng(11))
    n = len(supernet_oracle.supernet.subnetwork(blocks).searchable_layers)
    misses = supernet_oracle.cache_info().misses
    assert 0 <= predictor.accuracy(["int8"] * n, blocks) <= 1
    assert supernet_oracle.cache_info().misses == misses  # predicting measures nothing
    with pytest.raises(ValueError, match=f"expected {n} precisions"):
        predictor.accuracy(["int8"] * (n + 1), blocks)


def test_answering_a_query_leaves_torchs_random_state_alone(supernet_oracle):
    """A search's agent samples from torch's global RNG: the oracle must not draw from it, or the
    same seed would search differently with a warm cache than with a cold one."""
    blocks = SPACE.sample(np.random.default_rng(99))
    n = len(supernet_oracle.supernet.subnetwork(blocks).searchable_layers)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    supernet_oracle.accuracy(["int8"] * n, blocks)
    assert torch.equal(torch.get_rng_state(), before)
