"""The accuracy oracle: how accurate a network stays with one precision per searchable layer.

The network is built with `envs.torch_build`, trained briefly on a small dataset (scikit-learn's
digits by default, so nothing is downloaded) in a process whose kernels are pinned, so the weights
are the same bits on any x86-64 machine (`envs.proxy_training`); they are cached on disk, and the
main job's proxy ships trained (`envs/data/proxies/`). A deployment is then
simulated by post-training fake quantisation of the trained network, with every batch norm folded
into its convolution first, as a deployment runtime does. Per searchable layer:

- fp32: unchanged;
- fp16: weights, bias, input and output activations rounded through `torch.float16` (fp16 storage,
  fp32 arithmetic, as the fp16 kernels run);
- int8: weights quantised symmetrically per output channel to [-127, 127]; the bias to int32 at the
  accumulator's scale (input scale x weight scale); input and output activations quantised
  symmetrically per tensor, q = clamp(round(x / s), -128, 127) with s = max |x| / 127 of that tensor
  calibrated once, in fp32, on training batches (ncnn's int8 scheme). The output is quantised after
  the fused activation, as the int8 kernels requantise (`deploy.tvm_kernels`); a tensor read by an
  int8 layer has one scale, so an int8 layer's output feeds an int8 consumer without change.

Accumulation, adds, pools and activations stay in fp32. These are the numerics of the TVM kernels the
search measures and `deploy.build` chains into one module.

The accuracy of a deployment (what the search optimises) is the fp32 network's held-out top-1 minus
the mean KL divergence (nats) of the deployment's softmax from the fp32 network's on the same images:
`accuracy = reference_top1 - kl`, so 0.01 nats of output change costs one accuracy point. Held-out
top-1 alone moves in whole images (one is 0.28 points of digits' 360) and barely moves at all on an
easy proxy (all-int8 MobileNetV2 keeps every digit); the KL moves with every layer's precision
(quantising MobileNetV2's stem alone costs ~13x what quantising its last projection does) and is
continuous, so it is finer than one image and, computed in float64 from the logits, the same whatever
the caller's thread count (the network runs on one intra-op thread: oneDNN's AVX-512 convolutions
round differently on 1 and 2). Across CPUs PyTorch's vectorised kernels round differently too: the
all-int8 MobileNetV2's KL is 1.68e-3 nats with AVX2 and 1.65e-3 with AVX-512 (0.003 accuracy
points). The conversion is of the order of what held-out top-1 really loses per nat where
quantisation does flip answers (all-int8 MobileNetV2 on shifted digits: 0.9 points at 0.0032 nats).
`measure` also returns the deployment's own held-out top-1 and its logits' SQNR, which reports show
beside it.

The quantised weights of every layer are
precomputed for every precision, so switching assignments swaps tensors; results are cached by
assignment, so a repeated query costs a dict lookup, and a query that shares its first layers'
precisions with an earlier one resumes from that one's activations (`envs.prefix_cache`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import re
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from tqdm.auto import tqdm

from deploy.db import MeasurementDB
from envs.network import NETWORK_INPUT, Network, Op
from envs.prefix_cache import DEFAULT_BUDGET_BYTES, PrefixCache
from envs.proxy_training import TRAIN_BATCH_SIZE, TRAIN_RECIPE, train
from envs.space import QUANTS
from envs.torch_build import NetworkModule, build_module, fold_batch_norm

log = logging.getLogger(__name__)

DEFAULT_EPOCHS = 6
"""Training epochs; MobileNetV2 at 32x32 reaches 96% held-out accuracy on digits."""
FAKE_QUANT_SCHEME = "w8perchannel-a8symmetric-stored-outputs-v2"
"""Names how a precision is simulated (module docstring); change it when that changes."""
ACCURACY_SIGNAL = "top1ref-minus-kl-v1"
"""Names what `accuracy` returns (module docstring); part of every oracle's database key."""
SHIPPED_PROXIES = Path(__file__).with_name("data") / "proxies"
"""Trained proxies shipped with the package (read before the cache; named as cache files are)."""
EVAL_BATCH_SIZE = 120
"""Held-out images per forward pass: small enough that freed activations are reused, not page-faulted in again."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_CHANNELS_LAST = torch.channels_last


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one intra-op thread inside (the caller's count restored after), in inference mode: the
    oracle's forward passes give the same bits whatever the caller's threads (module docstring)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images split into train and held-out test: float32 `(N, C, H, W)` in [0, 1], int64 labels.

    `name` identifies the data (source, size, split) and is part of the trained-weights cache key.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str

    @property
    def num_classes(self) -> int:
        """Number of classes (labels are 0 .. num_classes - 1)."""
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


def _split(x: torch.Tensor, y: torch.Tensor, test_fraction: float, seed: int, name: str) -> Dataset:
    """Stratified train / test split."""
    train, test = train_test_split(
        np.arange(len(y)), test_size=test_fraction, stratify=y.numpy(), random_state=seed
    )
    train, test = torch.from_numpy(np.sort(train)), torch.from_numpy(np.sort(test))
    return Dataset(x[train].contiguous(), y[train], x[test].contiguous(), y[test], name)


def digits_dataset(image_size: int = 32, channels: int = 3, seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 8x8 handwritten digits, resized (bilinear) and replicated to `channels`.

    Split 80/20, stratified, with `seed`: 1,437 training and 360 held-out images.
    """
    if image_size < 1 or channels < 1:
        raise ValueError(f"image_size and channels must be positive, got {image_size} and {channels}")
    digits = load_digits()
    x = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.expand(-1, channels, -1, -1)
    y = torch.from_numpy(digits.target).long()
    name = f"digits-{image_size}" + (f"-{channels}ch" if channels != 3 else "") + (f"-split{seed}" if seed else "")
    return _split(x, y, 0.2, seed, name)


def shifted_digits_dataset(image_size: int = 32, copies: int = 2, seed: int = 0) -> Dataset:
    """A harder proxy made from scikit-learn's digits, where receptive field and capacity matter.

    Each digit appears `copies` times, each on its own black `image_size` canvas, scaled (bilinear) to
    a random 50-80% of the canvas at a random position, 3 channels. Everything is drawn from `seed`;
    the split is 80/20, stratified. MobileNetV2 trained as the fixed-network oracle trains (6 epochs)
    reaches about two thirds on it, against 96% on the centred digits.
    """
    if image_size < 16 or copies < 1:
        raise ValueError(f"image_size must be >= 16 and copies >= 1, got {image_size} and {copies}")
    digits = load_digits()
    source = torch.from_numpy(digits.images).float().div_(16.0)
    rng = np.random.default_rng(seed)
    n = len(source) * copies
    canvas = torch.zeros(n, image_size, image_size)
    for i in range(n):
        size = int(rng.integers(int(0.5 * image_size), int(0.8 * image_size) + 1))
        digit = F.interpolate(source[i % len(source)][None, None], size=(size, size), mode="bilinear", align_corners=False)
        y, x = rng.integers(0, image_size - size + 1, 2)
        canvas[i, y : y + size, x : x + size] = digit[0, 0]
    x = canvas.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(digits.target).long().repeat(copies)
    return _split(x, y, 0.2, seed, f"shifted-digits-{image_size}-x{copies}" + (f"-s{seed}" if seed else ""))


def image_folder_dataset(
    root: str | Path, image_size: int, channels: int = 3, test_fraction: float = 0.2, seed: int = 0
) -> Dataset:
    """Images in class-per-subfolder layout (`root/<class>/<image>`), resized (bilinear) to a square.

    Classes are the subfolders holding at least one image, sorted by name (label = position).
    `channels` is 1 (grayscale) or 3 (RGB). The split is stratified with `seed`. The dataset name
    carries a hash of the files' bytes, so changed images never reuse weights trained on old ones.
    """
    root = Path(root)
    modes = {1: "L", 3: "RGB"}
    if channels not in modes:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist or is not a directory")
    classes = {
        d.name: files
        for d in sorted(p for p in root.iterdir() if p.is_dir())
        if (files := sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
    }
    if not classes:
        raise ValueError(
            f"image folder {root} has no images: expected {root}/<class>/<image> with suffix in {IMAGE_SUFFIXES}"
        )
    if len(classes) < 2:
        raise ValueError(f"image folder {root} has one class ({next(iter(classes))!r}); at least 2 are needed")
    from PIL import Image, UnidentifiedImageError

    digest = hashlib.sha256(f"{image_size}:{channels}:{test_fraction}:{seed}".encode())
    images, labels = [], []
    for label, (cls, files) in enumerate(classes.items()):
        for f in files:
            data = f.read_bytes()
            digest.update(f"{cls}/{f.name}".encode() + data)
            try:
                with Image.open(io.BytesIO(data)) as im:
                    im = im.convert(modes[channels]).resize((image_size, image_size), Image.BILINEAR)
                    images.append(np.asarray(im, dtype=np.float32) / 255.0)
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"cannot read image {f}: {e}") from e
            labels.append(label)
    x = torch.from_numpy(np.stack(images))
    x = x.unsqueeze(1) if channels == 1 else x.permute(0, 3, 1, 2)
    name = f"folder-{root.name}-{image_size}-{digest.hexdigest()[:12]}"
    try:
        return _split(x, torch.tensor(labels), test_fraction, seed, name)
    except ValueError as e:
        raise ValueError(f"image folder {root}: cannot split {len(labels)} images into train and test: {e}") from e


def default_cache_dir() -> Path:
    """`$DEPLOYGYM_CACHE/accuracy` if `DEPLOYGYM_CACHE` is set, else `~/.cache/deploygym/accuracy`."""
    root = os.environ.get("DEPLOYGYM_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "deploygym") / "accuracy"


def _save_atomically(obj: Any, path: Path) -> None:
    """Write via a temporary file in the same folder and `os.replace`: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # mode from the umask
    try:
        with open(tmp, "xb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 quantise-dequantise (range [-127, 127]), and the scales."""
    amax = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    return (w / scale).round().clamp(-127, 127) * scale, scale


def _fake_int8(x: torch.Tensor, scale: float, inplace: bool) -> torch.Tensor:
    """Round `x` to the int8 grid of `scale` (q = clamp(round(x / scale), -128, 127)) and back."""
    x = x.mul_(1.0 / scale) if inplace else x * (1.0 / scale)
    return x.round_().clamp_(-128, 127).mul_(scale)


def _int8_scale(absmax: float) -> float:
    """The symmetric per-tensor scale of a tensor whose values stay within +-absmax."""
    return absmax / 127.0 if absmax > 0 else 1.0


class _LayerQuantizer:
    """One searchable layer: its weights and bias precomputed per precision, and the rounding of its
    input (`__call__`, a forward pre-hook on the layer's `nn.Conv2d` / `nn.Linear`) and of its output
    (`round_output`, a forward hook on the whole layer, after its activation).

    With `inplace` (the layer is the only reader of its input, which is not the network input) the
    input is rounded in place, which costs a third of a pass that allocates.
    """

    def __init__(self, module: nn.Conv2d | nn.Linear, input_absmax: float, output_absmax: float, inplace: bool) -> None:
        self.module = module
        self.inplace = inplace
        self.input_scale = _int8_scale(input_absmax)
        self.output_scale = _int8_scale(output_absmax)
        w = module.weight.detach().clone()
        b = module.bias.detach().clone() if module.bias is not None else None
        w8, self.weight_scales = _int8_per_channel(w)
        self.weights = {"fp32": w, "fp16": w.half().float(), "int8": w8}
        b8 = None
        if b is not None:  # int32 at the accumulator's scale
            acc_scale = self.input_scale * self.weight_scales.flatten()
            b8 = (b / acc_scale).round() * acc_scale
        self.biases = {"fp32": b, "fp16": None if b is None else b.half().float(), "int8": b8}
        self.precision = "fp32"

    def set_precision(self, precision: str) -> None:
        """Swap in the precomputed weights of `precision`."""
        self.module.weight.data = self.weights[precision]
        if self.module.bias is not None:
            self.module.bias.data = self.biases[precision]
        self.precision = precision

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
        x = args[0]
        if self.precision == "fp16":
            return (x.copy_(x.half()),) if self.inplace else (x.half().float(),)
        if self.precision == "int8":
            return (_fake_int8(x, self.input_scale, self.inplace),)
        return None

    def round_output(self, module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
        """The layer's output as its kernel stores it (fp16, or int8 at the output tensor's scale)."""
        if self.precision == "fp16":
            return output.copy_(output.half())
        if self.precision == "int8":
            return _fake_int8(output, self.output_scale, inplace=True)
        return None


@dataclass(frozen=True)
class LayerNumerics:
    """What a deployment of one searchable layer computes with: its trained weights (batch norm folded,
    fp32) and, for int8, the per-output-channel weight scales and the scales of its input and output."""

    weight: np.ndarray
    bias: np.ndarray
    """Zeros when the layer has neither a bias nor a batch norm."""
    weight_scales: np.ndarray
    input_scale: float
    output_scale: float


@dataclass(frozen=True)
class Fidelity:
    """What an accuracy query measures of a deployment, against the fp32 network on the held-out images."""

    accuracy: float
    """The search's accuracy: the fp32 network's held-out top-1 minus `kl_nats` (module docstring)."""
    top1: float
    """The deployment's own held-out top-1."""
    kl_nats: float
    """Mean KL divergence of the deployment's softmax from the fp32 network's."""
    sqnr_db: float
    """Signal-to-quantisation-noise ratio of the logits (inf when they are the fp32 network's)."""


class CacheInfo(NamedTuple):
    """Accuracy-cache statistics."""

    hits: int
    misses: int
    size: int


class CachedAccuracies:
    """Accuracies measured so far, by query: in memory, and in the measurement database once given
    one (`use_database`). An oracle sets `key` (its name in the database) and `provenance`."""

    key: str
    provenance: str

    def _init_cache(self) -> None:
        self._results: dict[tuple[str, ...], float] = {}
        self._hits = self._misses = 0
        self._db: MeasurementDB | None = None

    def _cached(self, query: tuple[str, ...]) -> float | None:
        """The stored accuracy of `query` (counted as a hit), or None."""
        result = self._results.get(query)
        if result is not None:
            self._hits += 1
        return result

    def _remember(self, query: tuple[str, ...], result: float) -> float:
        """Store a newly measured accuracy (counted as a miss); returns it."""
        self._misses += 1
        self._results[query] = result
        if self._db is not None:
            self._db.put_accuracy(self.key, query, result, self.provenance)
        return result

    def use_database(self, db: MeasurementDB) -> int:
        """Reuse the accuracies this oracle measured before in `db`, and store new ones there; returns how many."""
        known = db.accuracies(self.key)
        self._results.update(known)
        self._db = db
        return len(known)

    def cache_info(self) -> CacheInfo:
        """Hits, misses and size of the accuracy cache."""
        return CacheInfo(self._hits, self._misses, len(self._results))


class AccuracyOracle(CachedAccuracies):
    """Held-out top-1 accuracy of `network` for one precision ("fp32", "fp16", "int8") per searchable layer.

    The first oracle for a (network, dataset, epochs, seed) trains the network and stores its weights
    under `cache_dir`; later ones load them (`trained_from_scratch` is then False). A cache file that
    cannot be loaded is reported in a warning and replaced.

    Args:
        network: the network; its `input_shape` must match the dataset's images.
        dataset: training and held-out data; default `digits_dataset` at the network's input size.
        cache_dir: folder of trained weights; default `default_cache_dir()`.
        epochs: training epochs.
        seed: seeds weight initialisation and minibatch order.
        calibration_batches: training batches (of `TRAIN_BATCH_SIZE`) that calibrate int8 input ranges.
        trained: weights trained elsewhere (e.g. a sub-network of a supernet, `envs.subnet_accuracy`),
            used as they are instead of training or loading; `weights_id` then names them.
        prefix_budget_bytes: memory for activations shared between queries (`envs.prefix_cache`).
    """

    def __init__(
        self,
        network: Network,
        dataset: Dataset | None = None,
        cache_dir: Path | None = None,
        epochs: int = DEFAULT_EPOCHS,
        seed: int = 0,
        calibration_batches: int = 4,
        trained: NetworkModule | None = None,
        weights_id: str | None = None,
        prefix_budget_bytes: int = DEFAULT_BUDGET_BYTES,
    ) -> None:
        if (trained is None) != (weights_id is None):
            raise ValueError("trained weights need a weights_id naming them, and only they do")
        channels, height, width = network.input_shape
        if dataset is None:
            if height != width:
                raise ValueError(
                    f"network {network.name!r}: the default digits data needs a square input, got {height}x{width}"
                )
            dataset = digits_dataset(height, channels)
        if dataset.image_shape != network.input_shape:
            raise ValueError(
                f"dataset {dataset.name!r} has images {dataset.image_shape}, "
                f"network {network.name!r} reads {network.input_shape}"
            )
        if network.num_classes < dataset.num_classes:
            raise ValueError(
                f"network {network.name!r} has {network.num_classes} outputs, "
                f"dataset {dataset.name!r} has {dataset.num_classes} classes"
            )
        if epochs < 1 or calibration_batches < 1:
            raise ValueError(f"epochs and calibration_batches must be positive, got {epochs} and {calibration_batches}")
        self.network = network
        self.dataset = dataset
        self.epochs = epochs
        self.seed = seed
        self.calibration_batches = calibration_batches
        self.layer_names = tuple(layer.name for layer in network.searchable_layers)
        self.provenance = f"measured:heldout/{dataset.name}@{len(dataset.y_test)}"
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        stem = re.sub(r"[^0-9A-Za-z_.-]", "_", f"{network.name}-{network.fingerprint}-{dataset.name}-e{epochs}-s{seed}")
        self.cache_path = cache_dir / f"{stem}-{TRAIN_RECIPE}.pt"
        self.weights_id = weights_id or self.cache_path.stem
        self.trained_from_scratch = False
        self.train_seconds = 0.0
        if trained is None:
            trained = self._load(SHIPPED_PROXIES / self.cache_path.name, warn=False) or self._load(self.cache_path)
        if trained is None:
            trained = self._train_and_save()
        self._model = fold_batch_norm(trained).to(memory_format=_CHANNELS_LAST)
        x_test = dataset.x_test.contiguous(memory_format=_CHANNELS_LAST)
        # the layers reading cached activations round a copy, so the cache need not copy them
        batches = list(x_test.split(EVAL_BATCH_SIZE))
        self._prefix_cache = PrefixCache(self._model, batches, prefix_budget_bytes, copy_on_resume=False)
        self._quantizers = self._calibrate(calibration_batches, keep_inputs=self._prefix_cache.checkpoint_readers)
        with one_thread():
            reference = self._prefix_cache.run(("fp32",) * len(self.layer_names)).double()
        self._reference_logits, self._reference_log_probs = reference, F.log_softmax(reference, dim=1)
        self.reference_top1 = (reference.argmax(dim=1) == dataset.y_test).double().mean().item()
        """Held-out top-1 of the network with every layer in fp32."""
        self._init_cache()

    @property
    def key(self) -> str:
        """Everything an accuracy depends on besides the assignment (network, data, training, calibration)."""
        return f"{self.weights_id}-{FAKE_QUANT_SCHEME}-cal{self.calibration_batches}-{ACCURACY_SIGNAL}"

    def _load(self, path: Path, warn: bool = True) -> NetworkModule | None:
        """Trained weights from `path`, or None when it is missing or unusable (a warning says which)."""
        if not path.exists():
            return None
        module = build_module(self.network)
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            module.load_state_dict(saved["state_dict"])
        except Exception as e:  # any unreadable or mismatched file is retrained, never trusted
            if warn:
                log.warning("corrupt accuracy cache file %s (%s: %s); retraining and replacing it", path, type(e).__name__, e)
            return None
        self.train_seconds = float(saved.get("train_seconds", 0.0))
        return module.eval()

    def _train_and_save(self) -> NetworkModule:
        start = time.perf_counter()
        module = train(self.network, self.dataset.x_train, self.dataset.y_train, self.epochs, self.seed)
        self.train_seconds = time.perf_counter() - start
        self.trained_from_scratch = True
        log.info(
            "trained %s on %s in %.1f s; caching in %s",
            self.network.name, self.dataset.name, self.train_seconds, self.cache_path,
        )
        _save_atomically({"state_dict": module.state_dict(), "train_seconds": self.train_seconds}, self.cache_path)
        return module

    def _calibrate(self, batches: int, keep_inputs: set[str]) -> list[_LayerQuantizer]:
        """Largest |value| of every searchable layer's input and output (after its activation) on the
        first training batches (seeded order), in fp32; the layers in `keep_inputs` never round their
        input in place."""
        order = torch.randperm(len(self.dataset.x_train), generator=torch.Generator().manual_seed(self.seed))
        x = self.dataset.x_train[order[: batches * TRAIN_BATCH_SIZE]].contiguous(memory_format=_CHANNELS_LAST)
        absmax = {(name, side): 0.0 for name in self.layer_names for side in ("in", "out")}

        def record(key: tuple[str, str], tensor: torch.Tensor) -> None:
            absmax[key] = max(absmax[key], tensor.abs().max().item())

        handles = []
        for name in self.layer_names:
            handles.append(self._model.module_for(name).register_forward_pre_hook(
                lambda module, args, name=name: record((name, "in"), args[0])))
            handles.append(self._model.layer_module(name).register_forward_hook(
                lambda module, args, output, name=name: record((name, "out"), output)))
        with one_thread():
            for chunk in x.split(TRAIN_BATCH_SIZE):
                self._model(chunk)
        for handle in handles:
            handle.remove()
        readers = self.network.consumers()
        quantizers = []
        for name in self.layer_names:
            module = self._model.module_for(name)
            (source,) = self.network[name].inputs
            sole_reader = source != NETWORK_INPUT and readers[source] == [name]
            quantizer = _LayerQuantizer(
                module, absmax[(name, "in")], absmax[(name, "out")], inplace=sole_reader and name not in keep_inputs
            )
            module.register_forward_pre_hook(quantizer)
            self._model.layer_module(name).register_forward_hook(quantizer.round_output)
            quantizers.append(quantizer)
        return quantizers

    def _check(self, precisions: Sequence[str]) -> tuple[str, ...]:
        if isinstance(precisions, str) or len(precisions) != len(self.layer_names):
            got = repr(precisions) if isinstance(precisions, str) else f"{len(precisions)} values"
            raise ValueError(
                f"expected {len(self.layer_names)} precisions, one per searchable layer of {self.network.name!r} "
                f"(valid values {QUANTS}), got {got}"
            )
        for name, precision in zip(self.layer_names, precisions):
            if precision not in QUANTS:
                raise ValueError(f"unknown precision {precision!r} for layer {name!r}; valid values are {QUANTS}")
        return tuple(str(p) for p in precisions)

    def logits(self, precisions: Sequence[str]) -> torch.Tensor:
        """Held-out logits `(n_test, num_classes)` of the network deployed with `precisions` (never cached)."""
        key = self._check(precisions)
        for quantizer, precision in zip(self._quantizers, key):
            if quantizer.precision != precision:
                quantizer.set_precision(precision)
        with one_thread():
            return self._prefix_cache.run(key)

    def measure(self, precisions: Sequence[str]) -> Fidelity:
        """Accuracy, held-out top-1, KL divergence and SQNR of the deployment with `precisions` (never cached)."""
        return self.fidelity(self.logits(precisions))

    def fidelity(self, logits: torch.Tensor | np.ndarray) -> Fidelity:
        """Accuracy, held-out top-1, KL divergence and SQNR of held-out logits `(n_test, classes)` from
        any implementation of the network (e.g. a built deployment)."""
        logits = torch.as_tensor(logits).double()
        if logits.shape != self._reference_logits.shape:
            raise ValueError(f"expected logits of shape {tuple(self._reference_logits.shape)}, got {tuple(logits.shape)}")
        log_probs = F.log_softmax(logits, dim=1)
        kl = (self._reference_log_probs.exp() * (self._reference_log_probs - log_probs)).sum(dim=1).mean().item()
        noise = float((logits - self._reference_logits).square().sum())
        top1 = (logits.argmax(dim=1) == self.dataset.y_test).double().mean().item()
        sqnr = float("inf") if noise == 0 else 10 * math.log10(float(self._reference_logits.square().sum()) / noise)
        return Fidelity(accuracy=self.reference_top1 - max(kl, 0.0), top1=top1, kl_nats=max(kl, 0.0), sqnr_db=sqnr)

    def accuracy(self, precisions: Sequence[str]) -> float:
        """`reference_top1 - kl` of the deployment with one precision per searchable layer (module
        docstring), cached by assignment."""
        cached = self._cached(tuple(precisions))  # only checked assignments are ever stored
        if cached is not None:
            return cached
        key = self._check(precisions)
        return self._remember(key, self.measure(key).accuracy)

    def layer_numerics(self, name: str) -> LayerNumerics:
        """The weights and int8 scales the oracle simulates searchable layer `name` with."""
        if name not in self.layer_names:
            raise KeyError(f"{name!r} is not a searchable layer of {self.network.name!r}; they are {self.layer_names}")
        q = self._quantizers[self.layer_names.index(name)]
        weight = q.weights["fp32"].contiguous().numpy()
        bias = q.biases["fp32"]
        return LayerNumerics(
            weight=weight,
            bias=np.zeros(weight.shape[0], np.float32) if bias is None else bias.numpy().copy(),
            weight_scales=q.weight_scales.flatten().numpy().copy(),
            input_scale=q.input_scale,
            output_scale=q.output_scale,
        )

    def affine_numerics(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The per-channel (scale, shift) of standalone batch norm `name`, from its trained statistics."""
        layer = self.network[name]
        if layer.op is not Op.AFFINE:
            raise KeyError(f"{name!r} is not a standalone batch norm of {self.network.name!r}")
        bn = self._model.layer_module(name).bn
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        shift = (bn.bias.detach() - bn.running_mean * scale)
        return scale.numpy().astype(np.float32), shift.numpy().astype(np.float32)

    @property
    def baseline_accuracy(self) -> float:
        """Accuracy with every layer in fp32: the fp32 network's held-out top-1."""
        return self.accuracy(("fp32",) * len(self.layer_names))


def _architecture(network: Network) -> tuple[tuple[Any, ...], ...]:
    """What must agree between a network and its small-input proxy: names, ops, kernels, channels."""
    return tuple(
        (l.name, l.op, l.kernel, l.stride, l.groups) + (() if l.op is Op.DENSE else (l.in_shape[0], l.out_shape[0]))
        for l in network.searchable_layers
    )


def oracle_for(
    network: Network, cache_dir: Path | None = None, epochs: int = DEFAULT_EPOCHS, image_folder: str | Path | None = None
) -> AccuracyOracle:
    """The accuracy oracle for `network`: the network itself if its input is at most 32x32, else the
    zoo's 32x32 variant of the same architecture (same searchable layers, names and channels).

    Trained on scikit-learn's digits, or on `image_folder` (`<folder>/<class>/<image>`, resized to the
    proxy's input; the zoo variant then gets one output per class).
    """
    from envs import zoo

    small = max(network.input_shape[1:]) <= zoo.SMALL_INPUT_SIZE
    size = network.input_shape[1] if small else zoo.SMALL_INPUT_SIZE
    dataset = None if image_folder is None else image_folder_dataset(image_folder, size, network.input_shape[0])
    if small:
        return AccuracyOracle(network, dataset, cache_dir=cache_dir, epochs=epochs)
    classes = 10 if dataset is None else dataset.num_classes
    target = _architecture(network)
    for name in zoo.NETWORKS:
        proxy = zoo.small_input_variant(name, num_classes=classes)
        if _architecture(proxy) == target:
            return AccuracyOracle(proxy, dataset, cache_dir=cache_dir, epochs=epochs)
    raise ValueError(
        f"network {network.name!r} ({network.input_shape}) has no 32x32 variant in the zoo "
        f"({', '.join(zoo.NETWORKS)}); build an AccuracyOracle for a small-input version of it and pass it in"
    )
