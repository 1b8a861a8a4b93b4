"""Running an aarch64 artifact on this machine under qemu-aarch64 user mode (a correctness check only:
emulated time says nothing about speed).

The board side needs no Python: `deploy/driver/run_artifact.cc` loads the library with the TVM runtime
and runs one image. It is cross-compiled with `aarch64-linux-gnu-g++` against the tvm-ffi headers and
the runtime libraries of the aarch64 wheels of the pinned TVM (fetched once from the package registry
with `pip download` into the cache), and run with `qemu-aarch64-static -L /usr/aarch64-linux-gnu`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from envs.accuracy import default_cache_dir

WHEELS = ("apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1")
"""The pinned TVM, whose aarch64 runtime libraries the driver links against."""
DRIVER_SOURCE = Path(__file__).with_name("driver") / "run_artifact.cc"
TOOLS = ("aarch64-linux-gnu-g++", "qemu-aarch64-static")


class EmulationUnavailable(RuntimeError):
    """This machine cannot run aarch64 code: the message names what to install."""


def _runtime(cache: Path) -> Path:
    """A folder with the aarch64 libtvm_runtime.so and libtvm_ffi.so (downloaded and unpacked once)."""
    lib = cache / "aarch64-runtime"
    if (lib / "libtvm_runtime.so").exists() and (lib / "libtvm_ffi.so").exists():
        return lib
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, "--only-binary=:all:",
             "--platform", "manylinux_2_28_aarch64", "--python-version", "3.11", *WHEELS],
            capture_output=True, text=True, timeout=600,
        )
        if result.returncode != 0:
            raise EmulationUnavailable(f"cannot download the aarch64 TVM runtime ({' '.join(WHEELS)}): {result.stderr.strip()[-300:]}")
        lib.mkdir(parents=True, exist_ok=True)
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                for name in archive.namelist():
                    if name.endswith(("lib/libtvm_runtime.so", "lib/libtvm_ffi.so")):
                        (lib / Path(name).name).write_bytes(archive.read(name))
    return lib


def driver(cache: Path | None = None) -> tuple[Path, Path]:
    """The cross-compiled driver and the folder of its aarch64 libraries (built once, cached)."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise EmulationUnavailable(f"running aarch64 code here needs {missing} (Debian: g++-aarch64-linux-gnu qemu-user-static; `make cross-tools`)")
    cache = (cache or default_cache_dir()) / "emulation"
    lib = _runtime(cache)
    binary = cache / "run_artifact"
    if not binary.exists() or binary.stat().st_mtime < DRIVER_SOURCE.stat().st_mtime:
        import tvm_ffi

        include = Path(tvm_ffi.__file__).parent / "include"
        subprocess.run(
            ["aarch64-linux-gnu-g++", "-std=c++17", "-O2", f"-I{include}", f"-I{include.parent / '3rdparty/dlpack/include'}",
             str(DRIVER_SOURCE), "-o", str(binary), f"-L{lib}", "-ltvm_ffi", "-ltvm_runtime"],
            check=True, capture_output=True, timeout=300,
        )
    return binary, lib


def run_emulated(library: Path, image: np.ndarray, cache: Path | None = None) -> np.ndarray:
    """The logits of an aarch64 artifact's library for one (1, C, H, W) float32 image, under qemu."""
    binary, lib = driver(cache)
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "image.f32", Path(tmp) / "logits.f32"
        np.ascontiguousarray(image, np.float32).tofile(source)
        _, c, h, w = image.shape
        result = subprocess.run(
            ["qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu", str(binary), str(library), str(source), str(out),
             str(c), str(h), str(w)],
            capture_output=True, text=True, timeout=600, env={"LD_LIBRARY_PATH": str(lib)},
        )
        if result.returncode != 0:
            raise RuntimeError(f"{library} under qemu-aarch64: {result.stderr.strip()[-500:]}")
        return np.fromfile(out, np.float32)
