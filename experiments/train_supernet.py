"""Train the weight-sharing supernet of an architecture space (sandwich rule), resumably; it is cached.

    python experiments/train_supernet.py                                 # MobileNetV2 space
    python experiments/train_supernet.py --net resnet18 --epochs 20
    python experiments/train_supernet.py --image-folder my_images/       # <folder>/<class>/<image>
    python experiments/train_supernet.py --restart                       # replace a corrupt checkpoint

A progress bar shows the epochs; TensorBoard curves (losses, held-out accuracy of the largest and
smallest sub-networks, learning rate) go to <logdir>/supernet-<net>-<data>/tb. The checkpoint is
written after every epoch: an interrupted run continues where it stopped when run again. The
finished supernet is what `run_ppo.py --arch` uses (same net, data and epochs), without retraining.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deploy.cli import run_main
from envs.arch_space import ARCH_SPACES, arch_space_for
from envs.subnet_accuracy import PROXIES, proxy_dataset
from envs.supernet_training import DEFAULT_SUPERNET_EPOCHS, spec_for, train_supernet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default="mobilenet_v2", choices=sorted(ARCH_SPACES), help="network whose space to train")
    parser.add_argument("--epochs", type=int, default=DEFAULT_SUPERNET_EPOCHS, help="training epochs")
    parser.add_argument("--proxy", default=PROXIES[0], choices=PROXIES, help="built-in proxy data set")
    parser.add_argument("--image-folder", help="train on these images (<folder>/<class>/<image>) instead")
    parser.add_argument("--seed", type=int, default=0, help="seeds weights, batches and sampled sub-networks")
    parser.add_argument("--restart", action="store_true", help="train from scratch, replacing any checkpoint")
    parser.add_argument("--logdir", default="runs", help="where the TensorBoard folder goes")
    parser.add_argument("--cache-dir", help="checkpoint folder (default: ~/.cache/deploygym/supernet)")
    parser.add_argument("--stop-after", type=int, help="end after this many epochs (run again to resume)")
    args = parser.parse_args(argv)

    space = arch_space_for(args.net)
    dataset = proxy_dataset(args.proxy, args.image_folder)
    spec = spec_for(space, dataset, args.epochs, args.seed)
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    log_dir = Path(args.logdir) / f"supernet-{args.net}-{dataset.name}" / "tb"
    _, checkpoint = train_supernet(
        space, dataset, args.epochs, args.seed, cache_dir, args.restart, log_dir, args.stop_after
    )
    history = checkpoint["history"]
    print(f"checkpoint      {spec.path(cache_dir)}  ({len(history)} of {args.epochs} epochs"
          + (", finished)" if checkpoint["complete"] else "; run again to resume)"))
    print(f"tensorboard     {log_dir}")
    last = history[-1]
    print(f"held-out        largest {100 * last['heldout_accuracy_largest']:.2f}%, "
          f"smallest {100 * last['heldout_accuracy_smallest']:.2f}% on {dataset.name} ({len(dataset.y_test)} images)")
    return 0


if __name__ == "__main__":
    run_main(main)
