"""Build a deployment into one TVM library for its board, and check it against the accuracy oracle.

    python experiments/build.py runs/<run>                         # the run's deployment.json, for its target
    python experiments/build.py runs/<run> --target host           # for this machine instead
    python experiments/build.py --deployment FILE --out DIR

Writes `<run>/artifact/` (library, manifest.json with sha256 of every file, run.py; see
deploy/artifact.py) and `<run>/artifact/check.json`: the same choices built for this machine on the
accuracy oracle's network with its trained weights (for a full-size network, its 32x32 proxy, where
the search measured accuracy), run on the held-out images and compared with the oracle's
fake-quantised torch model: top-1 agreement, largest logit difference, held-out accuracy of both.
For an aarch64 target it also runs the library under qemu-aarch64 and compares its outputs with the
same deployment built for this machine (`deploy/emulation.py`; `make cross-tools` installs what it needs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from deploy.cli import run_main
from deploy.export import load_deployment, write_json


EMULATED_IMAGES = 4
"""Images the aarch64 library runs under qemu (a few seconds each at 224x224)."""


def _emulated_check(record, numerics, folder: Path, oracle) -> dict:
    """The aarch64 library under qemu against the same deployment built for this machine, on the oracle's
    first held-out images (seeded random ones for a network of another input size)."""
    import numpy as np

    from deploy.artifact import LIBRARY
    from deploy.emulation import EmulationUnavailable
    from deploy.validation import compare_emulated

    shape = (EMULATED_IMAGES, *record.network.layers[0].in_shape)
    images = oracle.dataset.x_test[:EMULATED_IMAGES].contiguous().numpy()
    if images.shape != shape:
        images = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    try:
        result = compare_emulated(record.network, record.choices, numerics, folder / LIBRARY, images)
    except EmulationUnavailable as err:
        print(f"note: the aarch64 library was not run: {err}")
        return {"skipped": str(err)}
    print(f"aarch64 library under qemu vs this machine's build on {result['images']} images: largest logit "
          f"difference {result['max_abs_logit_difference']:.3g}, top-1 agreement {result['top1_agreement']:.2f}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", help="a run folder (its deployment.json)")
    parser.add_argument("--deployment", help="a deployment file instead of a run folder")
    parser.add_argument("--target", help="host or cortex-a72 (default: the deployment's)")
    parser.add_argument("--out", help="artifact folder (default: <run>/artifact, or <run>/artifact-<target> for another target)")
    parser.add_argument("--no-check", action="store_true", help="skip the comparison with the accuracy oracle")
    args = parser.parse_args(argv)
    if (args.run is None) == (args.deployment is None):
        parser.error("give a run folder or --deployment FILE")
    file = Path(args.deployment) if args.deployment else Path(args.run) / "deployment.json"
    if args.run and not file.exists():
        raise ValueError(f"{args.run}: not a run folder (no deployment.json)")
    record = load_deployment(file)
    target = args.target or record.target

    from deploy.artifact import artifact_folder, build_artifact, weights_for
    from deploy.validation import check_against_oracle
    from envs.accuracy import oracle_for

    folder = Path(args.out) if args.out else artifact_folder(file.parent, record, target)
    oracle = oracle_for(record.network)
    numerics, weights = weights_for(record.network, oracle)
    start = time.perf_counter()
    manifest = build_artifact(record, file, target, folder, numerics, weights)
    print(f"built {record.network.name} for {target} in {time.perf_counter() - start:.0f} s: {folder}")
    print(f"weights: {weights}")
    if not args.no_check:
        check = check_against_oracle(record.choices, oracle)
        if target != "host":
            check["aarch64_vs_host"] = _emulated_check(record, numerics, folder, oracle)
        write_json(folder / "check.json", check)
        print(
            f"check on {check['images']} held-out images of {check['network']}: top-1 agreement "
            f"{check['top1_agreement']:.4f}, largest logit difference {check['max_abs_logit_difference']:.3g} "
            f"(logits up to {check['logit_scale']:.3g}), held-out top-1 {check['artifact_top1']:.4f} "
            f"(oracle {check['oracle_top1']:.4f})"
        )
    print(json.dumps({k: manifest[k] for k in ("target", "threads", "tvm_version")}))
    return 0


if __name__ == "__main__":
    run_main(main)
