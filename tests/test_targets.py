"""The target registry: which backend answers, and clear errors for targets that cannot be measured."""

from __future__ import annotations

import pytest

from deploy.cpu_model import CpuLatencyModel
from deploy.targets import checked_tvm_target, get_target
from deploy.tvm_backend import TvmBackend
from deploy.tvm_measure import Device


def test_a72_is_modelled_without_a_board_and_measured_with_one():
    a72 = get_target("cortex-a72")
    assert isinstance(a72.backend(), CpuLatencyModel)
    board = a72.backend(Device.parse(rpc="127.0.0.1:9090"))
    assert isinstance(board, TvmBackend) and board.provenance == "measured:rpc:127.0.0.1:9090"
    assert board.target["mtriple"] == "aarch64-linux-gnu"


def test_host_measures_here_with_threads_up_to_its_cores():
    host = get_target("host")
    assert isinstance(host.backend(), TvmBackend) and host.backend().provenance.startswith("measured:local:")
    assert max(d.threads for d in host.search_space().dataflows) <= host.spec.cores


def test_a72_kernels_cannot_be_measured_on_this_machine():
    with pytest.raises(ValueError, match="cannot run on this machine: give a board with --rpc"):
        get_target("cortex-a72").backend(Device())


@pytest.mark.parametrize(
    "target, message",
    [
        ({"kind": "no-such-kind"}, "TVM rejects the target {'kind': 'no-such-kind'}"),
        ({"kind": "llvm", "no-such-option": 1}, "TVM rejects the target"),
    ],
)
def test_a_target_tvm_rejects_is_named(target, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        checked_tvm_target(target)
