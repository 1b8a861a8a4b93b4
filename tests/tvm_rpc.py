"""A real TVM RPC tracker and server on 127.0.0.1 for tests (`python -m tvm.exec.rpc_tracker/server`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RpcCluster:
    """A tracker and one server registered with `key`; `kill_server()` takes the board away."""

    key: str = "deploygym-test"
    tracker_port: int = field(default_factory=free_port)
    server_port: int = field(default_factory=free_port)
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, timeout_s: float = 60.0) -> "RpcCluster":
        self._procs["tracker"] = subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(self.tracker_port),
             "--port-end", str(self.tracker_port + 1), "--silent"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self._wait(lambda: self.summary() is not None, timeout_s, "tracker")
        self._procs["server"] = subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(self.server_port),
             "--port-end", str(self.server_port + 1), "--tracker", f"127.0.0.1:{self.tracker_port}",
             "--key", self.key],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self._wait(lambda: self.key in (self.summary() or {}).get("queue_info", {}), timeout_s, "server")
        return self

    def summary(self) -> dict | None:
        """The tracker's summary, or None if it does not answer."""
        from tvm import rpc

        try:
            return rpc.connect_tracker("127.0.0.1", self.tracker_port).summary()
        except Exception:
            return None

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"RPC {what} did not come up within {timeout_s:.0f} s")
            time.sleep(0.3)

    def kill_server(self) -> None:
        """Kill the board's server and the session processes it forked, as a crash would."""
        proc = self._procs.pop("server", None)
        if proc is not None:
            _kill_group(proc)

    def stop(self) -> None:
        for proc in self._procs.values():
            _kill_group(proc)
        self._procs.clear()


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill a process started with `start_new_session=True` and everything it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)
