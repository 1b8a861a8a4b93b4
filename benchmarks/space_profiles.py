"""Profile MobileNetV2's space per device, reduce it, and search the full and reduced spaces at equal budget.

    python benchmarks/space_profiles.py        # -> benchmarks/out/space_profiles.{json,png}, space_profiles-heatmap.png
    python benchmarks/space_profiles.py --measured-only   # only the host row, into the same JSON

On `cortex-a72` (the calibrated model), `npu-eyeriss` and `npu-nvdla` (ZigZag; the same 16x16 array,
each in its own dataflow: row- and weight-stationary): 500 architectures (the same ones on every
target) are priced end to end, their fastest all-int8 deployment, and scored
by the MobileNetV2 supernet (`envs.space_profile`); the profile's regression gives every block option's
latency and accuracy contribution, compared with the per-layer costs the backend gave (goal: within
10%). Each profile is reduced at aggressiveness 0 (every block keeps its Pareto-optimal options; the
sizes at -1 and +1 show the knob).
Then on every target, two searches over architectures (each evaluation one architecture priced the
same way): random search, and SEMO-style local search (`agents.local_search`: 20 random, then
neighbours of the front), 100 evaluations each, seeds 0-2, in the full space, the target's own reduced
space and the other targets' reduced spaces; and, since a smaller space alone makes a random search's
front better, again with every target's space reduced to the same size (`aggressiveness_for_size`: the least
aggressive reduction holding at most as many architectures as the smallest aggressiveness-0 one), so
that own and others' reduced spaces differ only in which options each profile kept. An own-against-
other comparison whose three seeds' hypervolumes overlap is searched again with seeds 0-9
(`MORE_SEEDS`) and judged on those, with Welch's one-sided p that the own space is better. Fronts are
compared by hypervolume normalised to a box fixed per target: from the full-space profile's worst
latency and accuracy (nadir) to its best (ideal). Goal: the own reduced space >= the full space + 5%
(relative) on every target and search.
Then `experiments/profile_space.py` profiles 500 architectures on the warm database in a fresh
process (goal: <= 2 min). Last, the measured row: on this machine (`host`, TVM), ResNet-18's space at a
small N, every architecture built as one network and timed whole, 8 at a time in 10 turns (`HOST_PROFILE`;
out/space_profiles-host/; `--measured-only` reruns just this row into the existing JSON),
where recovering per-block latency from end-to-end numbers is a real test (the model and ZigZag are
additive per layer, so there it is exact by construction): against each block's time inside the networks
as timed (the runtime's per-call times, in the same turns), and beside it against the kernels timed alone
before each network (timed once, minutes apart, on a machine whose speed drifts); it is profiled and reduced, not searched
(an evaluation there is a build and a timing). Everything runs on one torch thread; prices and accuracies are cached in
benchmarks/out/space_profiles/measurements.sqlite (the first run takes ~3.5 h: ~2 h of accuracy queries, ~55 min timing the host row).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

from agents.local_search import refine_front  # noqa: E402
from agents.pareto import ParetoFront, Point, hypervolume  # noqa: E402
from deploy.db import MeasurementDB  # noqa: E402
from deploy.export import write_json  # noqa: E402
from envs.arch_space import ArchSpace, MobileNetV2ArchSpace  # noqa: E402
from envs.make import make_cost_table, resolve_network  # noqa: E402
from envs.reduced_space import architectures, write_arch_space  # noqa: E402
from envs.space_profile import (  # noqa: E402
    RECOVERY_TOLERANCE, ArchitecturePricer, ProfiledArchitecture, SpaceProfile, aggressiveness_for_size, heatmap, profile_space,
    recovery_summary, reduce_space, sample_architectures,
)
from envs.subnet_accuracy import supernet_oracle_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
WORK = OUT / "space_profiles"
TARGETS = ("cortex-a72", "npu-eyeriss", "npu-nvdla")
SAMPLES = 500
BUDGET, RANDOM_START = 100, 20
SEEDS = (0, 1, 2)
MORE_SEEDS = tuple(range(10))
"""An own-against-other comparison whose seeds overlap is searched again with these before it is judged."""
STRATEGIES = ("random", "local search")
AGGRESSIVENESS = (-1.0, 0.0, 1.0)
"""The sizes of the reduced spaces at each aggressiveness are reported; 0, the default, is searched."""
HV_GOAL, WARM_GOAL_S = 0.05, 120.0
HOST_PROFILE = ("--target", "host", "--space", "resnet18", "--samples", "192", "--input-size", "224")
"""The measured profile: whole networks built and timed on this machine (~55 min cold)."""


def search(space: ArchSpace, pricer: ArchitecturePricer, strategy: str, seed: int) -> list[ProfiledArchitecture]:
    """`BUDGET` architectures of `space` evaluated by `strategy` (random, or local search from
    `RANDOM_START` random ones), in the order evaluated."""
    rng = np.random.default_rng(seed)
    start = RANDOM_START if strategy == "local search" else BUDGET
    evaluated = [pricer(b) for b in sample_architectures(space, start, rng, cover=False)]
    if strategy == "local search":
        front = ParetoFront()
        for p in evaluated:
            front.add(Point(p.accuracy, p.latency_ms, architecture=list(p.architecture)))

        def deploy(labels):
            priced = pricer(space.parse(labels))
            evaluated.append(priced)
            return priced.accuracy, {"accuracy": priced.accuracy, "latency_ms": priced.latency_ms, "choices": {},
                                     "architecture": list(labels)}

        refine_front(front, deploy, space, BUDGET - start, rng)
    return evaluated


def box(profile: SpaceProfile) -> dict[str, tuple[float, float]]:
    """The hypervolume box of a target: its full-space profile's worst and best latency and accuracy."""
    lat = [s.latency_ms for s in profile.samples]
    acc = [s.accuracy for s in profile.samples]
    return {"nadir": (max(lat), min(acc)), "ideal": (min(lat), max(acc))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measured-only", action="store_true",
                        help="rerun only the measured host row and update it, and its goals, in out/space_profiles.json")
    if parser.parse_args(argv).measured_only:
        update_measured()
        return
    torch.set_num_threads(1)
    WORK.mkdir(parents=True, exist_ok=True)
    db_path = WORK / "measurements.sqlite"
    space = MobileNetV2ArchSpace()
    oracle = supernet_oracle_for(resolve_network("mobilenet_v2"))
    oracle.use_database(MeasurementDB(db_path))
    pricers = {t: ArchitecturePricer(space, make_cost_table(t, db_path), oracle, own_dataflow=t.startswith("npu-")) for t in TARGETS}
    profiles: dict[str, SpaceProfile] = {}
    reduced, variants = {}, {}
    results: dict = {"samples": SAMPLES, "budget": BUDGET, "seeds": list(SEEDS), "targets": {}}
    for target, pricer in pricers.items():
        start = time.perf_counter()
        if not pricer.table.backend.batch_friendly:
            pricer.prefetch()
        profiles[target] = profile = profile_space(space, pricer, SAMPLES, 0, target)
        variants[target] = {a: reduce_space(space, profile, a) for a in AGGRESSIVENESS}
        reduced[target] = variants[target][0.0]
        write_arch_space(reduced[target], WORK / f"reduced-{target}.yaml")
        recovery = profile.recovery(space)
        results["targets"][target] = {
            "latency_provenance": pricer.latency_provenance, "profile_seconds": round(time.perf_counter() - start, 1),
            "fit": {"latency_r2": profile.latency_r2, "accuracy_r2": profile.accuracy_r2,
                    "latency_residual_ms": profile.latency_residual_ms, "accuracy_residual_points": profile.accuracy_residual_points},
            "likes": profile.likes(), "recovery": recovery, "placement": profile.placement(),
            "reduced_space": {"architectures": architectures(reduced[target]), "removed": reduced[target].removed(),
                              "architectures_by_aggressiveness": {str(a): architectures(r) for a, r in variants[target].items()}},
            "hypervolume_box": box(profile),
        }
        print(f"{target}: latency R² {profile.latency_r2:.3f}, accuracy R² {profile.accuracy_r2:.3f}; per-block latency vs per-layer "
              f"costs: median {100 * recovery['median_relative_error']:.1f}%, max {100 * recovery['max_relative_error']:.1f}%; "
              f"likes {', '.join(profile.likes()['friendliest'])}; reduced to {architectures(reduced[target]):.3g} of "
              f"{architectures(space):.3g} architectures", flush=True)
    results["architectures_full_space"] = architectures(space)
    size = min(architectures(r) for r in reduced.values())
    equal = {t: reduce_space(space, profiles[t], aggressiveness_for_size(space, profiles[t], size)) for t in TARGETS}
    results["equal_size"] = {"at_most": size, **{t: {"architectures": architectures(r), "note": r.note} for t, r in equal.items()}}
    results["reduced_spaces_overlap"] = {f"{a} vs {b}{suffix}": _overlap(kept[a], kept[b], space)
                                         for suffix, kept in (("", reduced), (", equal size", equal))
                                         for i, a in enumerate(TARGETS) for b in TARGETS[i + 1:]}

    searches: dict = {}
    for target, pricer in pricers.items():
        spaces = {"full": space, "own reduced": reduced[target],
                  **{f"reduced for {other}": reduced[other] for other in TARGETS if other != target},
                  "own reduced, equal size": equal[target],
                  **{f"reduced for {other}, equal size": equal[other] for other in TARGETS if other != target}}
        limits = box(profiles[target])
        rows = searches[target] = {}
        for strategy in STRATEGIES:
            searched: dict[tuple[ArchSpace, int], float] = {}  # two devices' reductions are often the same space: searched once

            def hypervolumes(candidate: ArchSpace, seeds: tuple[int, ...]) -> dict:
                for seed in seeds:
                    if (candidate, seed) not in searched:
                        points = [(p.latency_ms, p.accuracy) for p in search(candidate, pricer, strategy, seed)]
                        searched[candidate, seed] = hypervolume(points, **limits)
                hv = [searched[candidate, seed] for seed in seeds]
                return {"hypervolume": hv, "mean": float(np.mean(hv)), "spread": [min(hv), max(hv)]}

            for name, candidate in spaces.items():
                rows[f"{strategy} / {name}"] = hypervolumes(candidate, SEEDS)
            full, own = rows[f"{strategy} / full"]["mean"], rows[f"{strategy} / own reduced"]["mean"]
            others = [rows[f"{strategy} / reduced for {o}"]["mean"] for o in TARGETS if o != target]
            rows[f"{strategy} / gain of own reduced over full"] = own / full - 1
            for suffix, mine in (("", reduced), (", equal size", equal)):
                # another device whose profile kept the very same options ties by construction: it is not compared
                different = [o for o in TARGETS if o != target and mine[o] != mine[target]]
                wins = []
                for o in different:
                    own_row, other_row = rows[f"{strategy} / own reduced{suffix}"], rows[f"{strategy} / reduced for {o}{suffix}"]
                    if _seeds_overlap(own_row["spread"], other_row["spread"]):  # three seeds do not decide it: more seeds do
                        own_row, other_row = hypervolumes(mine[target], MORE_SEEDS), hypervolumes(mine[o], MORE_SEEDS)
                        p = stats.ttest_ind(own_row["hypervolume"], other_row["hypervolume"], equal_var=False, alternative="greater").pvalue
                        rows[f"{strategy} / own reduced against {o}'s{suffix}, seeds {MORE_SEEDS[0]}-{MORE_SEEDS[-1]}"] = {
                            "own": own_row, "other": other_row, "p_own_better": float(p)}
                    wins.append(own_row["mean"] > other_row["mean"])
                rows[f"{strategy} / own reduced beats the others' reduced{suffix}"] = bool(different) and all(wins)
            print(f"{target}, {strategy}: hypervolume full {full:.3f}, own reduced {own:.3f} ({100 * (own / full - 1):+.1f}%), "
                  f"others' reduced {', '.join(f'{o:.3f}' for o in others)}; at equal size own "
                  f"{rows[f'{strategy} / own reduced, equal size']['mean']:.3f}, others' "
                  f"{', '.join(format(rows[f'{strategy} / reduced for {o}, equal size']['mean'], '.3f') for o in TARGETS if o != target)}",
                  flush=True)
    results["searches"] = searches

    warm = {}
    for target in ("cortex-a72", "npu-eyeriss"):
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "experiments" / "profile_space.py"), "--target", target, "--samples", str(SAMPLES),
                        "--logdir", str(WORK), "--out", str(WORK / f"warm-{target}")], check=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
        warm[target] = round(time.perf_counter() - start, 1)
        print(f"{SAMPLES} architectures profiled on {target} on the warm database, fresh process: {warm[target]:.0f} s", flush=True)
    results["warm_profile_seconds"] = warm
    results["host"] = host = measured_profile()

    results["machine"] = platform.processor() or platform.machine()
    results["goals"] = {
        "reduced_hypervolume_at_least_full_plus_5pct_every_target_and_search": all(
            searches[t][f"{s} / gain of own reduced over full"] >= HV_GOAL for t in TARGETS for s in STRATEGIES),
        "own_reduced_beats_other_devices_reduced": {t: {s: searches[t][f"{s} / own reduced beats the others' reduced"] for s in STRATEGIES}
                                                    for t in TARGETS},
        "own_reduced_beats_other_devices_reduced_at_equal_size": {
            t: {s: searches[t][f"{s} / own reduced beats the others' reduced, equal size"] for s in STRATEGIES} for t in TARGETS},
        "latency_recovery_within_10pct": all(results["targets"][t]["recovery"]["max_relative_error"] <= RECOVERY_TOLERANCE for t in TARGETS),
        **measured_goals(host),
        "warm_profile_500_at_most_2_min": all(s <= WARM_GOAL_S for s in warm.values()),
    }
    write_json(OUT / "space_profiles.json", results)
    heatmap([profiles[t] for t in TARGETS], space).savefig(OUT / "space_profiles-heatmap.png", dpi=100)
    plot(searches, OUT / "space_profiles.png")
    print(json.dumps(results["goals"], indent=2))


def measured_profile() -> dict:
    """Run `HOST_PROFILE` with its own database (benchmarks/out/space_profiles/host/: a rerun reads the
    timed networks back), print its line and return its profile.json without the per-architecture rows."""
    out = OUT / "space_profiles-host"
    subprocess.run([sys.executable, str(ROOT / "experiments" / "profile_space.py"), *HOST_PROFILE, "--logdir", str(WORK / "host"),
                    "--out", str(out)], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
    profile = json.loads((out / "profile.json").read_text())
    host = {k: v for k, v in profile.items() if k not in ("architectures", "effects")}
    print(f"host ({host['latency_provenance']}): {host['samples']} architectures, latency R² {host['fit']['latency_r2']:.3f}", flush=True)
    for key, (_, against) in MEASURED_REFERENCES.items():
        print("  " + recovery_summary(host[key], against), flush=True)
    return host


MEASURED_REFERENCES = {"recovery_in_network": ("in_network", "the blocks' times inside the timed networks"),
                       "recovery": ("kernels_alone", "the kernels timed alone before each network")}
"""The measured row's two references (`envs.space_profile`), by their key in profile.json: the name of
their goals, and what they are."""
MEASURED_GOAL = "latency_recovery_within_10pct_measured"
"""Prefix of the measured row's goals in out/space_profiles.json."""


def measured_goals(host: dict) -> dict[str, bool]:
    """The goals the measured row decides, against each reference: the median option, and every
    option, within the tolerance."""
    goals = {}
    for key, (name, _) in MEASURED_REFERENCES.items():
        goals[f"{MEASURED_GOAL}_{name}_median"] = host[key]["median_relative_error"] <= RECOVERY_TOLERANCE
        goals[f"{MEASURED_GOAL}_{name}_every_option"] = host[key]["within_10_percent"] == 1.0
    return goals


def update_measured() -> None:
    """Rerun only the measured row and write it, and the goals it decides, into the existing
    out/space_profiles.json; everything else there stays as its last full run wrote it."""
    path = OUT / "space_profiles.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the whole benchmark first (without --measured-only)")
    results = json.loads(path.read_text())
    results["host"] = host = measured_profile()
    results["goals"] = {k: v for k, v in results["goals"].items() if not k.startswith(MEASURED_GOAL)} | measured_goals(host)
    write_json(path, results)
    print(json.dumps(results["goals"], indent=2))


def _seeds_overlap(a: list[float], b: list[float]) -> bool:
    """Whether two [lowest, highest] ranges of seeds' hypervolumes overlap."""
    return a[0] <= b[1] and b[0] <= a[1]


def _overlap(a, b, space: ArchSpace) -> dict:
    """How far two reduced spaces agree: options kept by both, by one only, per block summed."""
    both = only_a = only_b = 0
    for block in range(space.blocks):
        x, y = set(a.options(block)), set(b.options(block))
        both, only_a, only_b = both + len(x & y), only_a + len(x - y), only_b + len(y - x)
    return {"kept_by_both": both, "kept_by_first_only": only_a, "kept_by_second_only": only_b}


def plot(searches: dict, path: Path) -> None:
    """Per target and search: mean hypervolume (bars) and seeds (dots) in each space."""
    fig, axes = plt.subplots(1, len(searches), figsize=(6.5 * len(searches), 5.8), squeeze=False)
    for ax, (target, rows) in zip(axes[0], searches.items()):
        names = [k for k in rows if isinstance(rows[k], dict) and "hypervolume" in rows[k]]
        for i, name in enumerate(names):
            colour = "C0" if name.endswith("/ full") else "C2" if "/ own reduced" in name else "C7"
            ax.bar(i, rows[name]["mean"], color=colour)
            ax.scatter([i] * len(rows[name]["hypervolume"]), rows[name]["hypervolume"], s=10, c="k", zorder=3)
        ax.set_xticks(range(len(names)), [n.replace(" / ", ": ") for n in names], fontsize=6, rotation=90)
        ax.set_ylabel("normalised hypervolume")
        ax.set_title(f"{target}: {BUDGET} evaluations, seeds {SEEDS[0]}-{SEEDS[-1]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
