"""Search a per-layer deployment of a CNN on a target (MaskablePPO by default); export the best one.

    python experiments/run_ppo.py --target cortex-a72                 # MobileNetV2, default budget
    python experiments/run_ppo.py --agent evolution                    # or qlearning, random, ppo, a2c
    python experiments/run_ppo.py --net resnet18 --budget-ms 120
    python experiments/run_ppo.py --net mobilenet_v1 --tradeoff 40     # MnasNet-style trade-off
    python experiments/run_ppo.py --resume runs/mobilenet_v2-cortex-a72-s0-...   # continue a run (after Ctrl-C too)

    python experiments/run_ppo.py --target npu-eyeriss                 # NPU, simulated with ZigZag
    python experiments/run_ppo.py --target npu-eyeriss --dataflow latency   # FlowOptimizer picks dataflows
    python experiments/run_ppo.py --target npu-eyeriss --arch          # joint search: architecture too
    python experiments/run_ppo.py --arch --implementation fastest      # the agent: architecture + quantization
    python experiments/run_ppo.py --target host                        # measured with TVM on this machine (model-guided)
    python experiments/run_ppo.py --target cortex-a72 --rpc-tracker 127.0.0.1:9190 --rpc-key pi4   # on a board

Without a board the latencies come from the calibrated Cortex-A72 model (every number says so); NPU
targets (npu-eyeriss, npu-nvdla, npu-tpu, or an NPU's YAML file) are simulated with ZigZag. On a
measured target (host, --rpc, --rpc-tracker) MaskablePPO learns on the target's model corrected by the
kernels measured so far and measures one picked deployment per round, within --kernel-budget kernels
(`agents.model_guided`); --guide none makes it learn on measured rewards instead.
Ctrl-C (or SIGTERM) stops the search at its next pause point (well under a second), saves a checkpoint and
says how to resume; `--resume` continues exactly where it stopped (`agents.resumable`). A checkpoint is
also saved every --checkpoint-minutes, so a killed run loses at most that much.
Each run writes one folder: config.yml, command.txt, tb/ (TensorBoard), checkpoints/,
best_deployment.json (kept up to date), deployment.json, pareto.json / pareto.png (the accuracy-latency
front of every deployment evaluated, with the choices of each point on it) and summary.txt at the end.
The summary and deployment.json also hold the deployment's references (`envs.references`): the exact
fastest deployment with its precisions, the exact minimum-latency deployment, the best one known,
and a bound on the reward.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from agents.callbacks import BestDeployment, DeploymentTensorBoard
from agents.model_guided import GuideSettings, ModelGuidedSearch
from agents.resumable import Checkpointer, StopRequest, at_pause_points, checkpoints, restore
from agents.pareto import ParetoFront
from agents.ppo import DEFAULT_HYPERPARAMS, SEARCH_THREADS, load_hyperparams
from agents.registry import AGENTS, check_agent, checkpoint_suffix, load_search_agent, make_search_agent
from deploy.cli import run_main
from deploy.cost_table import CostTable
from deploy.tvm_measure import Device, MeasureSettings
from deploy.deployment import evaluate
from deploy.optimum import best_choices
from deploy.export import deployment_dict, load_deployment, write_json
from deploy.npu_backend import ZigZagBackend
from deploy.targets import CpuTarget, NpuTarget, get_target
from deploy.zigzag_sim import SimulationSettings
from envs.accuracy import AccuracyOracle, Fidelity, oracle_for
from envs.env import DeploymentEnv
from envs.make import make_cost_table, make_deployment_env, resolve_network
from envs.space import Choice
from envs.accuracy_predictor import PredictedAccuracy, fit_predictor
from envs.references import MAX_PASSES, References, references
from envs.reduced_space import ReducedArchSpace, read_arch_space
from envs.reward import RewardConfig
from envs.subnet_accuracy import PROXIES, SupernetOracle, supernet_oracle_for
from envs.supernet_training import DEFAULT_SUPERNET_EPOCHS


@dataclass
class Config:
    """Everything a run depends on (written to config.yml)."""

    target: str = "cortex-a72"
    """registered target (cortex-a72, host, npu-eyeriss, npu-nvdla, npu-tpu) or an NPU's YAML file"""
    net: str = "mobilenet_v2"
    """built-in network (mobilenet_v1, mobilenet_v2, mobilenet_v2_32, resnet18)"""
    agent: str = AGENTS[0]
    """search agent: maskable_ppo (MaskablePPO with self-imitation), ppo, a2c, qlearning, evolution, random"""
    timesteps: int = 240_000
    """environment steps to train for (one step = one layer; MobileNetV2: 53 a deployment)"""
    budget_ms: float | None = None
    """latency budget in ms (default: 0.4 x the fp32 im2col baseline)"""
    points_per_ms: float | None = None
    """budget mode: accuracy points one millisecond costs (default: 7 points for the whole budget)"""
    tradeoff: float | None = None
    """use the MnasNet trade-off reward with this target latency in ms instead of a budget"""
    seed: int = 0
    """seed of the agent (the environment itself is deterministic)"""
    logdir: str = "runs"
    """where run folders and the shared measurement database go"""
    resume: str | None = None
    """run folder to continue from its last checkpoint (its config is reused)"""
    hyperparams: str = str(DEFAULT_HYPERPARAMS)
    """YAML of the Stable-Baselines3 agents' hyperparameters (a default section, updated by TARGET and TARGET/NET sections)"""
    checkpoint_minutes: float = 2.0
    """save a checkpoint every this many minutes (and on Ctrl-C or SIGTERM)"""
    image_folder: str | None = None
    """train the accuracy proxy on this folder (<folder>/<class>/<image>) instead of scikit-learn's digits"""
    rpc: str | None = None
    """measure on the board whose `python -m tvm.exec.rpc_server` listens at HOST:PORT"""
    rpc_tracker: str | None = None
    """measure on a board reached through the TVM RPC tracker at HOST:PORT (with --rpc-key)"""
    rpc_key: str | None = None
    """the board's key at the tracker"""
    dataflow: str = "agent"
    """agent, or a FlowOptimizer criterion (latency, energy, edp): the environment picks each layer's best dataflow"""
    implementation: str = "agent"
    """agent, or fastest: the agent chooses architecture and quantization only, the environment the fastest algorithm and dataflow for them"""
    latency_correction: str | None = None
    """search on costs corrected by this file (experiments/fit_latency_correction.py, for this target): whole-network latency"""
    cold_cache: bool = False
    """measured targets: time each kernel with its weights and output flushed from the caches, as a network runs it after its other layers (kernels with large weights cost more; kept apart from warm timings in the database)"""
    zigzag_lpf: int = 4
    """NPU targets: loop prime factors ZigZag's temporal-mapping search permutes (higher = more thorough, slower)"""
    arch: bool = False
    """joint search: also choose every block's variant (MobileNetV2: kernel, expansion, skip; ResNet-18: width, depth), accuracy from a supernet"""
    arch_space: str | None = None
    """with --arch: search this reduced architecture space (a YAML file from experiments/profile_space.py) instead of the full one"""
    supernet_epochs: int = DEFAULT_SUPERNET_EPOCHS
    """with --arch: epochs of supernet training (once; the trained supernet is cached)"""
    proxy: str = PROXIES[0]
    """with --arch and no --image-folder: the supernet's built-in proxy data (shifted-digits, digits)"""
    predictor_samples: int = 0
    """with --arch: fit an accuracy predictor on this many measured sub-networks and search with its predictions (exports stay measured)"""
    restart_supernet: bool = False
    """with --arch: train the supernet from scratch, replacing a corrupt or unfinished checkpoint"""
    guide: str = "auto"
    """model: learn on the target's model corrected by the kernels measured, measure one picked deployment a round (maskable_ppo); none: learn on measured rewards; auto: model on a measured target"""
    kernel_budget: int = GuideSettings.kernel_budget
    """model-guided search: distinct kernels it may measure (about a second each; --timesteps does not apply)"""
    calibration_kernels: int = GuideSettings.calibration_kernels
    """model-guided search: kernels measured first, one per class of layer, to correct the model"""
    pretrain_steps: int = GuideSettings.pretrain_steps
    """model-guided search: steps learnt on the corrected model before the first measured deployment"""
    round_steps: int = GuideSettings.round_steps
    """model-guided search: steps learnt on the model corrected again before each later measured deployment"""


def parse_args(argv: list[str] | None = None) -> Config:
    """Command line -> Config (one flag per field, help from the field docstrings)."""
    doc = {name: "" for name in (f.name for f in fields(Config))}
    source = Path(__file__).read_text().split("class Config")[1].split("def parse_args")[0].splitlines()
    for i, line in enumerate(source):
        name = line.strip().split(":")[0]
        if name in doc and i + 1 < len(source):
            doc[name] = source[i + 1].strip().strip('"')
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(Config):
        default = getattr(Config(), f.name)
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=doc[f.name])
            continue
        kind = {
            "timesteps": int, "seed": int, "checkpoint_minutes": float, "budget_ms": float, "tradeoff": float, "points_per_ms": float,
            "zigzag_lpf": int, "supernet_epochs": int, "predictor_samples": int, "kernel_budget": int,
            "calibration_kernels": int, "pretrain_steps": int, "round_steps": int,
        }.get(f.name, str)
        parser.add_argument(flag, type=kind, default=default, help=doc[f.name])
    config = Config(**vars(parser.parse_args(argv)))
    try:
        check_agent(config.agent)
    except ValueError as err:
        parser.error(str(err))
    if config.guide not in ("auto", "model", "none"):
        parser.error(f"--guide must be auto, model or none, got {config.guide!r}")
    if config.guide == "model" and config.agent != "maskable_ppo":
        parser.error(f"--guide model needs --agent maskable_ppo (its policy picks with action masks), got {config.agent}")
    measured = config.target == "host" or bool(config.rpc or config.rpc_tracker)
    if config.guide == "model" and not measured:
        parser.error("--guide model corrects the model by measured kernels: it needs a measured target "
                     "(--target host, --rpc or --rpc-tracker)")
    if config.cold_cache and not measured:
        parser.error("--cold-cache times kernels with flushed caches: it needs a measured target (--target host, --rpc or --rpc-tracker)")
    if config.arch_space and not config.arch:
        parser.error("--arch-space FILE narrows the architecture search: it needs --arch")
    if config.guide == "model" and config.arch:
        parser.error("--guide model searches one network's deployment: it does not combine with --arch")
    for name in ("budget_ms", "tradeoff", "points_per_ms", "timesteps", "kernel_budget", "calibration_kernels",
                 "pretrain_steps", "round_steps"):
        value = getattr(config, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value:g}")
    if config.checkpoint_minutes < 0:
        parser.error(f"--checkpoint-minutes must be 0 or more, got {config.checkpoint_minutes:g}")
    return config


def run_folder(config: Config) -> Path:
    """A new folder for this run, or the folder being resumed."""
    if config.resume:
        return Path(config.resume)  # checked by load_resumed
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(config.logdir) / f"{config.net}-{config.target}-s{config.seed}-{stamp}"
    folder, n = base, 1
    while folder.exists():  # two runs started within the same second
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    folder.mkdir(parents=True)
    return folder


def load_resumed(config: Config) -> Config:
    """The saved config of the run being resumed, with the new timestep target."""
    path = Path(config.resume) / "config.yml"  # type: ignore[arg-type]
    if not path.is_file():
        raise ValueError(f"--resume {config.resume}: not a run folder (no config.yml)")
    saved = yaml.safe_load(path.read_text())
    saved.pop("checkpoint_every", None)  # folders of earlier versions: checkpoints were by steps
    saved.update(resume=config.resume, timesteps=config.timesteps, checkpoint_minutes=config.checkpoint_minutes)
    return Config(**saved)


def summary(
    info: dict[str, Any], oracle: AccuracyOracle | SupernetOracle, fidelity: Fidelity, reward: RewardConfig,
    refs: References, folder: Path, baseline: str,
) -> str:
    """One screen: the best deployment, what it was scored by, the baseline (every layer deployed as
    `baseline`) and its references."""
    if reward.mode == "budget":
        over = info["latency_ms"] / reward.reference_ms - 1
        budget = f"{reward.reference_ms:.2f} ms: " + ("met" if over <= 0 else f"exceeded by {100 * over:.1f}%")
    else:
        budget = f"none (trade-off target {reward.reference_ms:.2f} ms)"
    lines = [
        f"run folder           {folder}",
        f"reward               {reward.describe()}",
        f"latency              {info['latency_ms']:.2f} ms  ({info['latency_provenance']})",
        f"budget               {budget}",
        f"baseline             {info['baseline_latency_ms']:.2f} ms  -> speedup {info['speedup']:.2f}x  (every layer {baseline})",
        f"accuracy             {100 * info['accuracy']:.3f}%  (the fp32 network's held-out top-1 {100 * oracle.baseline_accuracy:.2f}% "
        f"minus {fidelity.kl_nats:.2e} nats of output change; {info['accuracy_provenance']})",
        f"held-out top-1       {100 * fidelity.top1:.2f}%  (logits at {fidelity.sqnr_db:.1f} dB SQNR against fp32)",
        f"accuracy queries     {oracle.cache_info().misses} measured, {oracle.cache_info().hits} from cache",
        f"memory               {info['memory_bytes'] / 1e6:.2f} MB   energy "
        + (f"{info['energy_mj']:.1f} mJ ({info['latency_provenance']})" if info["energy_mj"] is not None else "n/a (measured latency only)"),
    ]
    counts: dict[str, int] = {}
    for c in info["choices"].values():
        key = f"{c['quant']}/{c['algo']}"
        counts[key] = counts.get(key, 0) + 1
    lines.append("layers               " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
    if info.get("architecture"):
        lines.append(f"architecture         {' '.join(info['architecture'])}  ({info['network']})")
    return "\n".join(lines + refs.summary())


def earlier_best(folder: Path, env: DeploymentEnv) -> BestDeployment | None:
    """The best deployment a resumed run had found, replayed through the environment; None if none."""
    for name in ("best_deployment.json", "deployment.json"):
        if (folder / name).is_file():
            record = load_deployment(folder / name)
            reward, info = env.replay(record.choices, record.architecture)
            return BestDeployment(reward, info)
    return None


def run_guided(agent: Any, search: ModelGuidedSearch, tensorboard: DeploymentTensorBoard, checkpointer: Checkpointer,
               stop: StopRequest, tb_log_name: str) -> None:
    """The model-guided search (`agents.model_guided`): a line and a checkpoint after each measured deployment."""
    measured_env = agent.get_env()
    at_pause_points(agent, lambda: bool(stop))
    s = search.settings
    print(f"model-guided search: {s.calibration_kernels} calibration kernels, then one measured deployment a round "
          f"(learning {s.pretrain_steps} steps on the corrected model first, {s.round_steps} a round after), "
          f"within {s.kernel_budget} kernels", flush=True)

    def measured(reward: float, info: dict[str, Any], kernels: set) -> None:
        tensorboard.record(agent, reward, info)
        print(f"round {search.rounds}: {info['latency_ms']:.2f} ms measured, reward {reward:.3f} "
              f"(best {tensorboard.best.reward:.3f}), {len(search.used)}/{s.kernel_budget} kernels", flush=True)

    def round_done(rounds: int) -> None:
        agent.set_env(measured_env)  # a checkpoint holds no unfinished episode of the model's
        checkpointer()

    search.run(agent, measured, stop=lambda: bool(stop), on_round=round_done,
               learn_kwargs={"tb_log_name": tb_log_name, "progress_bar": True})
    agent.set_env(measured_env)
    if stop:  # a resumed search learns the interrupted round again, from the policy as it was
        checkpointer.save()


def backend_settings(config: Config, target: CpuTarget | NpuTarget) -> MeasureSettings | SimulationSettings | None:
    """The settings of the target's backend the config asks for: ZigZag's mapping search on an NPU,
    cold-cache kernel timing on a measured target, else the backend's defaults."""
    if isinstance(target, NpuTarget):
        return SimulationSettings(lpf_limit=config.zigzag_lpf)
    return MeasureSettings(cold_cache=True) if config.cold_cache else None


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    torch.set_num_threads(SEARCH_THREADS)
    if config.resume:
        config = load_resumed(config)
    target = get_target(config.target)  # an unknown name or a bad NPU file fails here
    hp = load_hyperparams(config.target, f"{config.target}/{config.net}", path=config.hyperparams)

    network = resolve_network(config.net)
    architecture: bool | ReducedArchSpace = read_arch_space(config.arch_space) if config.arch_space else config.arch
    print(f"{network.name} on {config.target}: preparing the accuracy oracle (trained once, then cached)", flush=True)
    if config.arch:
        oracle = supernet_oracle_for(
            network, config.image_folder, config.supernet_epochs, restart=config.restart_supernet, proxy=config.proxy
        )
    else:
        oracle = oracle_for(network, image_folder=config.image_folder)
    db_path = Path(config.logdir) / "measurements.sqlite"
    db_path.parent.mkdir(parents=True, exist_ok=True)
    measured_on = Device.parse(config.rpc, config.rpc_tracker, config.rpc_key) if config.rpc or config.rpc_tracker else None
    costs = make_cost_table(config.target, db_path, measured_on, backend_settings(config, target), config.latency_correction)  # shared by every environment copy
    reused = oracle.use_database(costs.db)
    if reused:
        print(f"reusing {reused} accuracies measured before in {db_path}")
    search_accuracy: AccuracyOracle | SupernetOracle | PredictedAccuracy = oracle
    if config.predictor_samples:
        if not isinstance(oracle, SupernetOracle):
            raise ValueError("--predictor-samples predicts sub-network accuracy: it needs --arch")
        search_accuracy = fit_predictor(oracle, config.predictor_samples, seed=config.seed)
        report = search_accuracy.report
        print(f"accuracy predictor: Spearman {report.spearman:.3f}, Kendall {report.kendall:.3f}, "
              f"mean error {100 * report.mean_abs_error:.2f} points on {report.held_out} held-out sub-networks")
    mode = "tradeoff" if config.tradeoff is not None else "budget"

    def make_env(table: CostTable = costs) -> DeploymentEnv:
        return make_deployment_env(
            network, config.target, mode, config.budget_ms, config.tradeoff, accuracy=search_accuracy, costs=table,
            dataflow=config.dataflow, architecture=architecture, implementation=config.implementation,
            points_per_ms=config.points_per_ms,
        )

    print("pricing the baseline and every layer's choices (for the budget and the exact references)", flush=True)
    probe = make_env()  # fails fast on an impossible budget, before any folder is written
    folder = run_folder(config)
    if not config.resume:
        (folder / "config.yml").write_text(yaml.safe_dump(asdict(config), sort_keys=False))
        (folder / "command.txt").write_text(shlex.join([sys.executable, *sys.argv]) + "\n")

    def save_best(info: dict[str, Any], name: str = "best_deployment.json", refs: References | None = None) -> None:
        choices = {layer: Choice.from_dict(c) for layer, c in info["choices"].items()}
        chosen = network
        if info.get("architecture"):  # the network the search chose
            chosen = probe.arch.network_of(probe.arch_space.parse(info["architecture"]))
        cost = evaluate(chosen, choices, probe.costs)
        accuracy, provenance = info["accuracy"], info["accuracy_provenance"]
        if search_accuracy is not oracle:  # the search saw predictions; the export is measured
            blocks = probe.arch_space.parse(info["architecture"])
            accuracy = oracle.accuracy([choices[l.name].quant for l in chosen.searchable_layers], blocks)
            provenance = oracle.provenance
        doc = deployment_dict(
            chosen, config.target, probe.costs.fingerprint, choices, cost, accuracy, provenance,
            probe.baseline, oracle.baseline_accuracy, probe.space.baseline_choice(), info.get("architecture"),
        )
        if search_accuracy is not oracle:
            doc["totals"]["predicted_accuracy"] = info["accuracy"]
            doc["totals"]["predictor"] = search_accuracy.report.to_dict()
        if refs is not None:
            doc["references"] = refs.to_dict()
        if isinstance(costs.backend, ZigZagBackend):  # simulated layers: cycles and MAC utilisation too
            for entry in doc["layers"]:
                if entry["choice"] is not None:
                    layer = chosen[entry["name"]]
                    entry.update(costs.backend.figures(layer, costs.cost(layer, choices[layer.name])))
        write_json(folder / name, doc)

    suffix = checkpoint_suffix(config.agent)
    saved = checkpoints(folder / "checkpoints", config.agent, suffix) if config.resume else []
    if saved:
        agent = load_search_agent(config.agent, saved[-1], make_env, str(folder / "tb"), hp)
    else:
        if config.resume:
            print(f"no checkpoint in {folder / 'checkpoints'}: the search starts again from step 0")
        agent = make_search_agent(config.agent, make_env, config.seed, str(folder / "tb"), hp)
    hparams = {**asdict(config), **hp.to_dict(), "reward_mode": mode, "reference_ms": probe.reward_config.reference_ms}
    earlier_front = None
    if (folder / "pareto.json").is_file():  # a finished run resumed goes on from the front it had
        earlier_front = ParetoFront.from_dict(json.loads((folder / "pareto.json").read_text()))
    arch_labels = [probe.arch_space.label(o) for o in probe.arch_space.OPTIONS] if config.arch else []
    tensorboard = DeploymentTensorBoard(
        hparams, on_best=save_best, best=earlier_best(folder, probe), pareto=earlier_front, arch_labels=arch_labels,
        minimum_latency_ms=None if config.arch else evaluate(network, best_choices(network, costs), costs).latency_ms,
    )
    keeps: dict[str, Any] = {"tensorboard": tensorboard}
    measured_target = costs.backend.provenance.startswith("measured:")
    search = None
    if config.guide == "model" or (config.guide == "auto" and measured_target and config.agent == "maskable_ppo" and not config.arch):
        settings = GuideSettings(config.kernel_budget, config.calibration_kernels, config.pretrain_steps, config.round_steps)
        search = keeps["guide"] = ModelGuidedSearch(probe, target, make_env, settings, config.seed)
    if saved:
        exact = restore(agent, saved[-1], keeps)
        how = "exactly where it stopped" if exact else "with new episodes (the checkpoint has no resume state)"
        if search is not None:
            how = f"after round {search.rounds} ({len(search.used)} kernels measured)"
        print(f"resuming from {saved[-1]} at {agent.num_timesteps} steps, {how}")
    remaining = max(config.timesteps - agent.num_timesteps, 0)
    with StopRequest() as stop:
        checkpointer = Checkpointer(agent, folder / "checkpoints", config.agent, suffix, config.checkpoint_minutes, stop, keeps)
        if search is None:
            at_pause_points(agent, checkpointer)
            agent.learn(remaining, callback=tensorboard, progress_bar=True, reset_num_timesteps=not saved, tb_log_name=config.agent)
        else:
            run_guided(agent, search, tensorboard, checkpointer, stop, config.agent)
    if stop and (search is not None or agent.num_timesteps < config.timesteps):
        print(f"{stop.signal_name}: stopped at {agent.num_timesteps} steps, checkpoint {checkpointer.last}; "
              f"continue with: python experiments/run_ppo.py --resume {folder}", file=sys.stderr)
        return 130
    checkpointer.save()
    best = tensorboard.best.info
    if not best:
        if search is not None and search.needed:
            print(f"no deployment was measured: the policy's picks needed {search.needed} kernels, more than "
                  f"--kernel-budget {config.kernel_budget}", file=sys.stderr)
        else:
            print("no complete deployment was evaluated; train for more timesteps", file=sys.stderr)
        return 1
    print("computing the references (exact optima by dynamic programming, coordinate descent over precisions)")
    refs = references(probe, best, max_passes=MAX_PASSES if costs.backend.batch_friendly else 0)
    for name, value in refs.scalars().items():
        agent.logger.record(f"references/{name}", value)
    agent.logger.dump(agent.num_timesteps)
    save_best(best, "deployment.json", refs)
    (folder / "best_deployment.json").unlink(missing_ok=True)
    write_json(folder / "pareto.json", tensorboard.pareto.to_dict())
    figure = tensorboard.pareto.figure(
        {"baseline": (probe.baseline.latency_ms, oracle.baseline_accuracy)}, chosen=(best["latency_ms"], best["accuracy"]),
        budget_ms=probe.reward_config.reference_ms if mode == "budget" else None,
    )
    figure.savefig(folder / "pareto.png", dpi=120)
    fidelity = oracle.measure([c["quant"] for c in best["choices"].values()], *(
        [probe.arch_space.parse(best["architecture"])] if best.get("architecture") else []))
    text = summary(best, oracle, fidelity, probe.reward_config, refs, folder, probe.space.baseline_choice().key)
    (folder / "summary.txt").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    run_main(main)
