"""Profile an architecture space on one target from end-to-end numbers, and write its reduced space.

    python experiments/profile_space.py --target cortex-a72 --space mobilenet_v2
    python experiments/profile_space.py --target npu-eyeriss --space resnet18 --samples 300 --aggressiveness 1
    python experiments/profile_space.py --target host --space resnet18 --samples 192 --input-size 224   # measured whole networks

Samples architectures of the space, prices each end to end on the target (its fastest deployment with
every layer in int8, on an NPU in its own dataflow: the calibrated model or ZigZag simulation; on `host`, or a board with --rpc, the
deployment built as one network with TVM and timed whole, --group architectures at a time in --rounds turns so the
machine's drift falls on a whole group, with the runtime's per-call times inside it, and its kernels timed alone with cold caches,
both for the check) and scores it with the space's supernet, then regresses both on block options (`envs.space_profile`). Writes to
<out>: profile.json (every option's latency and accuracy contribution per block with 95% intervals,
friendliness, front membership, placement per stage, and how well the end-to-end estimates match the
backend's per-layer costs and, on a measured target, the blocks' times inside the networks), profile.png (the heatmaps) and reduced-space.yaml (for
`run_ppo.py --arch --arch-space` and `nas.py --arch-space`). Prices and accuracies go through the
measurement database in --logdir: a second profile on a warm database simulates and trains nothing (on a measured
target, networks timed before per-call times were kept are timed again).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import torch

from deploy.cli import run_main
from deploy.db import MeasurementDB
from deploy.export import write_json
from deploy.targets import NpuTarget, get_target
from deploy.tvm_measure import Device, MeasureSettings
from deploy.whole_network import measured_whole_networks
from envs.arch_space import ARCH_SPACES
from envs.make import make_cost_table, resolve_network
from envs.reduced_space import architectures, write_arch_space
from envs.space import QUANTS
from envs.space_profile import (
    NETWORK_INPUT_SIZE, PRECISION, ArchitecturePricer, aggressiveness_for_size, heatmap, profile_space, recovery_summary, reduce_space,
)
from envs.subnet_accuracy import PROXIES, supernet_oracle_for
from envs.supernet_training import DEFAULT_SUPERNET_EPOCHS

DEFAULT_SAMPLES = 500
WHOLE_NETWORK_REPEATS = 20
WHOLE_NETWORK_GROUP = 8
WHOLE_NETWORK_ROUNDS = 10


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="cortex-a72", help="registered target or an NPU's YAML file")
    parser.add_argument("--space", default="mobilenet_v2", choices=sorted(ARCH_SPACES), help="the architecture space")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="architectures priced end to end")
    parser.add_argument("--seed", type=int, default=0, help="seed of the architectures drawn")
    parser.add_argument("--aggressiveness", type=float, default=0.0,
                        help="standard errors of accuracy an option must beat every faster kept option by to stay "
                             "(0: drop options dominated in the estimates; higher drops more; negative only clearly beaten ones)")
    parser.add_argument("--max-architectures", type=float,
                        help="instead of --aggressiveness: the least aggressive reduction holding at most this many architectures")
    parser.add_argument("--precision", default=PRECISION, choices=QUANTS, help="every layer's precision")
    parser.add_argument("--input-size", type=int, default=NETWORK_INPUT_SIZE,
                        help="input height and width of the networks priced (32 makes whole-network measurement quick)")
    parser.add_argument("--dataflow", choices=("own", "best"), default="own",
                        help="NPU targets: every layer in the NPU's own dataflow (default: what the device runs), or each layer's best")
    parser.add_argument("--rpc", help="measure on the board whose `python -m tvm.exec.rpc_server` listens at HOST:PORT")
    parser.add_argument("--cold-cache", action=argparse.BooleanOptionalAction, default=True,
                        help="measured targets: time each kernel alone with its weights flushed from the caches, as inside a "
                             "network (the per-layer costs the end-to-end profile is checked against); --no-cold-cache: warm")
    parser.add_argument("--repeats", type=int, default=WHOLE_NETWORK_REPEATS,
                        help="measured targets: timings of each whole network per round (and, with cold caches, of each kernel)")
    parser.add_argument("--group", type=int, default=WHOLE_NETWORK_GROUP,
                        help="measured targets: architectures built, then timed together in turns (the fit gives each group its own constant)")
    parser.add_argument("--rounds", type=int, default=WHOLE_NETWORK_ROUNDS,
                        help="measured targets: turns in which every architecture of a group is timed (--repeats each)")
    parser.add_argument("--logdir", default="runs", help="folder of the shared measurement database")
    parser.add_argument("--out", help="output folder (default: <logdir>/profile-<space>-<target>)")
    parser.add_argument("--supernet-epochs", type=int, default=DEFAULT_SUPERNET_EPOCHS, help="training of the accuracy oracle's supernet")
    parser.add_argument("--proxy", default=PROXIES[0], choices=PROXIES, help="the supernet's proxy data")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the accuracy queries")
    args = parser.parse_args(argv)
    for name in ("samples", "input_size", "repeats", "group", "rounds"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)}: use a positive number")
    if args.max_architectures is not None and args.max_architectures < 1:
        raise ValueError(f"--max-architectures {args.max_architectures:g}: a reduced space holds at least one architecture")
    torch.set_num_threads(args.threads)

    target = get_target(args.target)
    space = ARCH_SPACES[args.space]()
    logdir = Path(args.logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out or logdir / f"profile-{args.space}-{target.name}")
    out.mkdir(parents=True, exist_ok=True)
    device = Device.parse(args.rpc, None, None) if args.rpc else None
    kernels = MeasureSettings(repeats=args.repeats, cold_cache=True) if args.cold_cache else MeasureSettings()
    table = make_cost_table(args.target, logdir / "measurements.sqlite", device, settings=None if isinstance(target, NpuTarget) else kernels)
    oracle = supernet_oracle_for(resolve_network(args.space), epochs=args.supernet_epochs, proxy=args.proxy)
    oracle.use_database(MeasurementDB(logdir / "measurements.sqlite"))
    whole_network = None
    if table.backend.provenance.startswith("measured:"):  # a device: each architecture is built and timed end to end
        settings = MeasureSettings(repeats=args.repeats, min_repeat_ms=0)
        whole_network = functools.partial(measured_whole_networks, table=table, target=args.target, device=device or Device(), in_network=True,
                                          settings=settings, rounds=args.rounds)
    own = isinstance(target, NpuTarget) and args.dataflow == "own"
    pricer = ArchitecturePricer(space, table, oracle, args.precision, args.input_size, whole_network, own_dataflow=own,
                                group_size=args.group)
    start = time.perf_counter()
    if getattr(table.backend, "prices_all_quickly", False):
        print(f"pricing every layer of {space.name}'s architectures on {target.name} ({table.backend.provenance})", flush=True)
        pricer.prefetch()
    print(f"profiling {args.samples} architectures of {space.name} on {target.name}", flush=True)
    profile = profile_space(space, pricer, args.samples, args.seed, target.name)
    seconds = time.perf_counter() - start
    aggressiveness = (args.aggressiveness if args.max_architectures is None
                      else aggressiveness_for_size(space, profile, args.max_architectures))
    reduced = reduce_space(space, profile, aggressiveness)
    report = profile.to_dict(space) | {
        "seconds": round(seconds, 1),
        "command": "python experiments/profile_space.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "reduced_space": {"aggressiveness": aggressiveness, "max_architectures": args.max_architectures, "architectures": architectures(reduced),
                          "architectures_full_space": architectures(space), "removed": reduced.removed(),
                          "file": "reduced-space.yaml"},
    }
    write_json(out / "profile.json", report)
    heatmap([profile], space).savefig(out / "profile.png", dpi=110)
    write_arch_space(reduced, out / "reduced-space.yaml")
    likes = report["likes"]
    print(f"{len(profile.samples)} architectures in {seconds:.0f} s: latency R² {profile.latency_r2:.3f}, accuracy R² {profile.accuracy_r2:.3f}")
    for key, against in (("recovery", "per-layer costs"), ("recovery_in_network", "the blocks' times inside the timed networks")):
        if key in report:
            print(recovery_summary(report[key], against))
    print(f"{target.name} likes {', '.join(likes['friendliest'])} (most on its front: {', '.join(likes['most_on_front'])}); "
          f"least friendly {', '.join(likes['least_friendly'])}")
    print(f"reduced space: {architectures(reduced):.3g} of {architectures(space):.3g} architectures "
          f"({sum(map(len, reduced.removed().values()))} options removed)")
    print(f"wrote {out / 'profile.json'}, profile.png and reduced-space.yaml")
    return 0


if __name__ == "__main__":
    run_main(main)
