"""Run a DeployGym artifact on this machine (copied into each artifact as `run.py`).

Needs only TVM (`pip install apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1`, as on the
machine that built it) and numpy:

    python run.py image.npy                 # logits and top-5 of one image, (C, H, W) or (1, C, H, W) float32
    python run.py --time 50                 # also the whole network's latency: median of 50 runs
    python run.py image.npy --json          # one JSON line instead of text

The library's sha256 is checked against `manifest.json` before it is loaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", nargs="?", help=".npy image (default: zeros)")
    parser.add_argument("--time", type=int, default=0, metavar="N", help="time N runs of the whole network")
    parser.add_argument("--threads", type=int, help="thread pool size: each layer runs on the count it chose, at most this (default: the manifest's)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    manifest = json.loads((HERE / "manifest.json").read_text())
    library = HERE / "deployment.so"
    if hashlib.sha256(library.read_bytes()).hexdigest() != manifest["files"]["deployment.so"]:
        print(f"error: {library}: sha256 differs from manifest.json (edited or corrupted)", file=sys.stderr)
        return 2
    threads = args.threads or manifest["threads"]
    os.environ["TVM_NUM_THREADS"] = str(threads)  # the pool's size, read when TVM starts
    import tvm
    from tvm import relax

    tvm.get_global_func("runtime.config_threadpool")(1, threads)
    shape = tuple(manifest["input"]["shape"])
    image = np.zeros(shape, np.float32) if args.image is None else np.load(args.image).astype(np.float32)
    if image.shape != shape:
        if image.size != np.prod(shape):
            print(f"error: {args.image}: shape {image.shape}, the network takes {shape}", file=sys.stderr)
            return 2
        image = image.reshape(shape)
    dev = tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), dev)
    data = tvm.runtime.tensor(image, dev)
    logits = vm["main"](data).numpy()[0]
    top5 = [int(i) for i in np.argsort(-logits)[:5]]
    result = {"network": manifest["network"], "target": manifest["target"], "threads": threads, "top5": top5,
              "logits": [float(v) for v in logits]}
    if args.time:
        timer = vm.time_evaluator("main", dev, number=1, repeat=args.time, min_repeat_ms=0)
        results = np.array(timer(data).results) * 1e3
        result["latency_ms"] = {"median": float(np.median(results)), "p25": float(np.percentile(results, 25)),
                                "p75": float(np.percentile(results, 75)), "repeats": args.time}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{manifest['network']} on {manifest['target']} ({threads} threads): top-5 classes {top5}")
        if "latency_ms" in result:
            lat = result["latency_ms"]
            print(f"latency {lat['median']:.3f} ms median of {lat['repeats']} (IQR {lat['p25']:.3f}-{lat['p75']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
