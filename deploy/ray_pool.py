"""Simulations as Ray tasks on a cluster: the `WorkerPool` interface over `ray.remote`.

`RayPool(address)` joins a running Ray cluster (`ray start --head` on one machine, `ray start
--address HEAD:6379` on the others) and ships this project's `deploy` and `envs` packages to its
workers. `map` submits one task per call; results come back to the caller, who stores them (the
measurement database stays where the search runs, so a cluster's results land in the same rows as
local workers'). A task whose node is lost is rerun elsewhere by Ray (`max_retries`); one that fails
or passes its timeout comes back as a `MeasurementError` in its place, as from local workers.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from deploy.workers import PROGRESS_FROM, MeasurementError

_ROOT = Path(__file__).resolve().parents[1]
NODE_LOSS_RETRIES = 3
"""Times Ray reruns a task whose worker or node died."""


class RayPool:
    """Calls as tasks on the Ray cluster at `address` (HOST:PORT of its head, or "auto")."""

    def __init__(self, address: str) -> None:
        try:
            import ray
        except ImportError:
            raise RuntimeError("--ray needs Ray: pip install 'ray==2.60.0'") from None
        self._ray = ray
        try:
            ray.init(address=address, runtime_env={"py_modules": [str(_ROOT / "deploy"), str(_ROOT / "envs")]},
                     logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise ConnectionError(f"cannot join the Ray cluster at {address}: {str(err).splitlines()[0]}") from None
        self.address = address
        self.nodes = len([n for n in ray.nodes() if n["Alive"]])

    def map(self, fn: Callable[..., Any], calls: Sequence[tuple], timeout_s: float, retries: int, what: str) -> list[Any]:
        """`fn(*args)` for each args in `calls` as Ray tasks; a failure (after `retries` more attempts
        of a task that raised, and reruns of tasks on lost nodes) or a task past `timeout_s` (counted
        from the start of the batch's share of the cluster) comes back as a `MeasurementError` in its place."""
        ray = self._ray
        remote = ray.remote(num_cpus=1, max_retries=NODE_LOSS_RETRIES + retries, retry_exceptions=retries > 0)(fn)
        refs = [remote.remote(*args) for args in calls]
        slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        deadline = time.monotonic() + timeout_s * max(1, -(-len(calls) // slots))
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        pending = list(refs)
        from tqdm.auto import tqdm

        with tqdm(total=len(refs), desc=f"{what}s on Ray", unit="call", leave=False, disable=None if len(refs) >= PROGRESS_FROM else True) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
                for ref in done:
                    results[index[ref]] = self._result(ref, what)
                bar.update(len(done))
                if not done and time.monotonic() >= deadline:
                    for ref in pending:
                        ray.cancel(ref, force=True)
                        results[index[ref]] = MeasurementError(f"{what} failed: no answer from the Ray cluster at {self.address} within its timeout", True)
                    break
        return results

    def _result(self, ref: Any, what: str) -> Any:
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as err:
            cause = err.cause if getattr(err, "cause", None) is not None else err
            return MeasurementError(f"{what} failed: {type(cause).__name__}: {str(cause).strip().splitlines()[-1]}")
        except (self._ray.exceptions.WorkerCrashedError, self._ray.exceptions.NodeDiedError, self._ray.exceptions.RayError) as err:
            return MeasurementError(f"{what} failed on the Ray cluster at {self.address}: {type(err).__name__}", True)

    def close(self) -> None:
        """Leave the cluster (it keeps running)."""
        self._ray.shutdown()


@contextlib.contextmanager
def local_head(cpus: int = 2) -> Iterator[str]:
    """A Ray head started on 127.0.0.1 (`ray start --head`, a free port, `cpus` CPUs), its address
    while the block runs; stopped after (`ray stop --force`: every Ray process of this machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray = str(Path(sys.executable).parent / "ray")
    start = subprocess.run([ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", str(cpus),
                            "--include-dashboard", "false", "--disable-usage-stats"], capture_output=True, text=True, timeout=180)
    if start.returncode != 0:
        raise ConnectionError(f"ray start --head failed: {start.stderr.strip().splitlines()[-1] if start.stderr.strip() else start.returncode}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)
