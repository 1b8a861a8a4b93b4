"""Importing torch modules: layer ops, shapes and MACs, fusion rules, and clear errors for unsupported ops."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from envs import zoo
from envs.network import NETWORK_INPUT, Op
from envs.torch_import import UnsupportedOpError, import_module


class SmallNet(nn.Module):
    """Conv-bn-relu, depthwise, pointwise, residual add, non-square conv, concat, max pool, sigmoid, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 16, 1, bias=False)
        self.branch = nn.Conv2d(16, 8, (1, 3), padding="same")
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        y = self.pw(F.relu6(self.bn2(self.dw(x))))
        x = torch.relu(x + y)
        x = torch.cat([x, self.branch(x)], dim=1)
        x = torch.sigmoid(self.pool(x))
        x = self.gap(x).flatten(1)
        return self.fc(F.dropout(x, 0.1, self.training))


def test_small_net_layers_shapes_and_macs() -> None:
    net = import_module(SmallNet(), (3, 32, 32))
    assert net.name == "SmallNet" and net.input_shape == (3, 32, 32)
    rows = [(l.name, l.op, l.inputs, l.out_shape, l.batch_norm, l.activation) for l in net.layers]
    assert rows == [
        ("conv1", Op.CONV, (NETWORK_INPUT,), (16, 16, 16), True, "relu"),
        ("dw", Op.DEPTHWISE, ("conv1",), (16, 16, 16), True, "relu6"),
        ("pw", Op.POINTWISE, ("dw",), (16, 16, 16), False, None),
        ("add", Op.ADD, ("conv1", "pw"), (16, 16, 16), False, "relu"),
        ("branch", Op.CONV, ("add",), (8, 16, 16), False, None),
        ("cat", Op.CONCAT, ("add", "branch"), (24, 16, 16), False, None),
        ("pool", Op.POOL, ("cat",), (24, 8, 8), False, None),
        ("sigmoid", Op.ACT, ("pool",), (24, 8, 8), False, "sigmoid"),
        ("gap", Op.POOL, ("sigmoid",), (24, 1, 1), False, None),
        ("fc", Op.DENSE, ("gap",), (10, 1, 1), False, None),
    ]
    branch, pool, fc = net["branch"], net["pool"], net["fc"]
    assert (branch.kernel, branch.padding, branch.bias) == ((1, 3), (0, 1), True)
    assert (pool.pool, pool.kernel, pool.stride) == ("max", (2, 2), (2, 2))
    assert net["gap"].pool == "global_avg"
    assert (fc.in_shape, fc.bias, fc.weight_elements) == ((24, 1, 1), True, 250)
    macs = {
        "conv1": 16 * 16 * 16 * 3 * 9,
        "dw": 16 * 16 * 16 * 9,
        "pw": 16 * 16 * 16 * 16,
        "add": 16 * 16 * 16,
        "branch": 8 * 16 * 16 * 16 * 3,
        "cat": 24 * 16 * 16,
        "pool": 24 * 8 * 8 * 4,
        "sigmoid": 24 * 8 * 8,
        "gap": 24 * 8 * 8,
        "fc": 24 * 10,
    }
    assert {l.name: l.macs for l in net.layers} == macs
    assert net.macs == sum(macs.values()) == 330_992


class FlatHead(nn.Module):
    """A shared ReLU module, an activation whose input has two readers, and a view-flatten over 4x4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(8 * 4 * 4, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.act(y) + y
        z = self.act(z)
        return self.fc(z.view(z.size(0), -1))


def test_activation_with_shared_input_stays_standalone() -> None:
    net = import_module(FlatHead(), (3, 8, 8), name="head")
    assert [(l.name, l.op, l.activation) for l in net.layers] == [
        ("conv", Op.CONV, None),
        ("act", Op.ACT, "relu"),
        ("add", Op.ADD, "relu"),
        ("fc", Op.DENSE, None),
    ]
    assert net["fc"].in_shape == (128, 1, 1) and net["fc"].inputs == ("add",) and not net["fc"].bias


class MeanHead(nn.Module):
    """Hardswish after a conv and after a dense layer, and a global pool written as a mean."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc1 = nn.Linear(8, 6)
        self.act = nn.Hardswish()
        self.fc2 = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.hardswish(self.conv(x)).mean((2, 3))
        return self.fc2(self.act(self.fc1(x)))


def test_mean_is_a_global_pool_and_activations_fuse_into_dense() -> None:
    net = import_module(MeanHead(), (3, 6, 6))
    assert [(l.name, l.op, l.in_shape, l.out_shape, l.activation, l.pool) for l in net.layers] == [
        ("conv", Op.CONV, (3, 6, 6), (8, 4, 4), "hardswish", None),
        ("mean", Op.POOL, (8, 4, 4), (8, 1, 1), None, "global_avg"),
        ("fc1", Op.DENSE, (8, 1, 1), (6, 1, 1), "hardswish", None),
        ("fc2", Op.DENSE, (6, 1, 1), (2, 1, 1), None, None),
    ]


def test_shape_propagation_leaves_training_mode_alone() -> None:
    module = SmallNet().train()
    module.bn1.eval()
    import_module(module, (3, 32, 32))
    assert module.training and module.bn2.training and not module.bn1.training


# ---- the zoo's MobileNetV2, written in torch --------------------------------------------------------
def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([nn.ReLU6(inplace=True)] if act else []))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        expand = [conv_bn(cin, hidden, 1)] if expansion != 1 else []
        depthwise = conv_bn(hidden, hidden, 3, stride, hidden)
        self.conv = nn.Sequential(*expand, depthwise, conv_bn(hidden, cout, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class TorchMobileNetV2(nn.Module):
    SETTING = (  # (expansion, channels, repeats, stride)
        (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2),
        (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        features, cin = [conv_bn(3, 32, 3, 2)], 32
        for expansion, cout, repeats, stride in self.SETTING:
            for r in range(repeats):
                features.append(InvertedResidual(cin, cout, stride if r == 0 else 1, expansion))
                cin = cout
        self.features = nn.Sequential(*features, conv_bn(cin, 1280, 1))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def test_torch_mobilenet_v2_matches_zoo() -> None:
    imported = import_module(TorchMobileNetV2(10), (3, 32, 32))
    reference = zoo.mobilenet_v2(32, 10)
    assert len(imported.layers) == len(reference.layers) == 64
    rename = {NETWORK_INPUT: NETWORK_INPUT} | {a.name: b.name for a, b in zip(imported.layers, reference.layers)}
    fields = ("op", "in_shape", "out_shape", "kernel", "stride", "padding", "groups", "bias", "batch_norm",
              "activation", "pool")
    for a, b in zip(imported.layers, reference.layers):
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields], (a.name, b.name)
        assert tuple(rename[i] for i in a.inputs) == b.inputs
    assert imported.macs == reference.macs == 6_130_624
    assert imported.weight_elements == reference.weight_elements
    assert imported["features.1.conv.0.0"].op is Op.DEPTHWISE  # names are module paths


# ---- unsupported ops ---------------------------------------------------------------------------------
class WithLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.rnn = nn.LSTM(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(self.conv(x).flatten(2))[0]


class WithSort(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sort(self.conv(x), dim=1)[0]


class WithGridSample(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("grid", torch.zeros(1, 6, 6, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(self.conv(x), self.grid, align_corners=False)


class ProductOfFeatureMaps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * y


class AvgPoolCeilMode(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(3, 2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)


class AdaptivePoolNotDividing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)


class ChannelShuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.view(1, 3, 16, 4))


class NasBench201Cell(nn.Module):
    """A NAS-Bench-201-style cell: every node sums (Python's sum()) the ops on its incoming edges, and the
    `none` op multiplies by zero."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AvgPool2d(3, 1, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        n1 = sum([self.conv1(x)])
        n2 = sum([x.mul(0.0), self.conv3(n1)])
        n3 = sum([self.pool(x), n1 * 0, n2, x])
        return self.head(n3.mean((2, 3)))


def test_zero_branches_cost_nothing_and_a_sum_of_n_tensors_is_n_minus_1_adds() -> None:
    from deploy.estimate import estimate_latency

    network = import_module(NasBench201Cell(), (3, 8, 8))
    ops = [layer.op for layer in network.layers]
    assert ops == [Op.CONV, Op.POINTWISE, Op.CONV, Op.POOL, Op.ADD, Op.ADD, Op.POOL, Op.DENSE]
    first, second = [layer for layer in network.layers if layer.op is Op.ADD]
    assert set(first.inputs) == {"pool", "conv3"} and set(second.inputs) == {first.name, "stem"}
    assert network["conv3"].inputs == ("conv1",)  # sum([conv1(x)]) and sum([0 * x, conv3]) forward their tensor
    priced = estimate_latency(network, "cortex-a72")
    assert all(layer.latency_ms > 0 for layer in priced.layers)  # adds and pools cost their memory traffic


class ReadsAZeroTensor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.mul(0))


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (WithLSTM(), "unsupported op torch.nn.LSTM at node 'rnn'"),
        (WithSort(), "unsupported op torch.sort at node 'sort'"),
        (WithGridSample(), "unsupported op torch.nn.functional.grid_sample at node 'grid_sample'"),
        (ProductOfFeatureMaps(), "unsupported op operator.mul at node 'mul' (only a (1, C, H, W) tensor times (1, C, 1, 1) factors"),
        (AvgPoolCeilMode(), "(ceil_mode is supported on max pools only)"),
        (AdaptivePoolNotDividing(), "(output 3x3 does not divide the input 8x8)"),
        (ChannelShuffle(), "unsupported op Tensor.view at node 'view'"),
        (ReadsAZeroTensor(), "unsupported op torch.nn.Conv2d at node 'conv' (it reads 'mul', a tensor that is always zero)"),
    ],
    ids=["lstm", "sort", "grid_sample", "mul", "avg_pool_ceil", "adaptive_pool", "view_to_4d", "conv_of_zero"],
)
def test_unsupported_op_is_named(module: nn.Module, message: str) -> None:
    with pytest.raises(UnsupportedOpError, match="supported: Conv2d, Linear") as error:
        import_module(module, (3, 8, 8))
    assert message in str(error.value)


class TorchvisionStyleBlocks(nn.Module):
    """The ops of torchvision's newer CNNs: SiLU and Hardsigmoid, squeeze-and-excitation (x times
    per-channel factors), pre-activation batch norms (DenseNet), a ceil-mode max pool (GoogLeNet,
    SqueezeNet), an adaptive pool to 2x2, a concat of one tensor and arithmetic on shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        self.stem_act = nn.SiLU()
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(16, 4, 1)
        self.fc2 = nn.Conv2d(4, 16, 1)
        self.gate = nn.Hardsigmoid()
        self.norm = nn.BatchNorm2d(16)
        self.conv = nn.Conv2d(16, 8, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.grid = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(8 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_bn(self.stem(x)))
        x = x * self.gate(self.fc2(torch.relu(self.fc1(self.squeeze(x)))))
        x = torch.cat([x], 1)
        y = self.conv(F.relu(self.norm(x)))  # pre-activation: BN and ReLU before the conv
        y = self.grid(self.pool(y))
        return self.fc(y.reshape(y.shape[0], y.shape[1] // 1 * 4))


def test_newer_torchvision_ops_import_as_layers() -> None:
    net = import_module(TorchvisionStyleBlocks(), (3, 16, 16))
    rows = [(l.name, l.op, l.inputs, l.out_shape, l.batch_norm, l.activation) for l in net.layers]
    assert rows == [
        ("stem", Op.CONV, (NETWORK_INPUT,), (16, 16, 16), True, "silu"),
        ("squeeze", Op.POOL, ("stem",), (16, 1, 1), False, None),
        ("fc1", Op.POINTWISE, ("squeeze",), (4, 1, 1), False, "relu"),
        ("fc2", Op.POINTWISE, ("fc1",), (16, 1, 1), False, "hardsigmoid"),
        ("mul", Op.SCALE, ("stem", "fc2"), (16, 16, 16), False, None),
        ("norm", Op.AFFINE, ("mul",), (16, 16, 16), False, "relu"),
        ("conv", Op.CONV, ("norm",), (8, 16, 16), False, None),
        ("pool", Op.POOL, ("conv",), (8, 8, 8), False, None),  # ceil((16 - 3) / 2) + 1 = 8, not 7
        ("grid", Op.POOL, ("pool",), (8, 2, 2), False, None),
        ("fc", Op.DENSE, ("grid",), (10, 1, 1), False, None),
    ]
    assert (net["pool"].pool, net["pool"].ceil_mode, "ceil" in net["pool"].signature) == ("max", True, True)
    assert (net["grid"].pool, net["grid"].kernel, net["grid"].stride) == ("avg", (4, 4), (4, 4))
    assert net["norm"].weight_elements == 32  # a scale and a shift per channel
    assert net["mul"].read_elements == 16 * 16 * 16 + 16 and net["mul"].macs == 16 * 16 * 16
    assert "ceil_mode" not in net["grid"].to_dict()  # networks saved before the field keep their fingerprint
    assert type(net).from_dict(net.to_dict()) == net
    from deploy.estimate import estimate_latency

    for target in ("cortex-a72", "npu-eyeriss"):
        priced = {layer.name: layer.latency_ms for layer in estimate_latency(net, target).layers}
        assert all(ms > 0 for ms in priced.values()), (target, priced)
        assert priced["mul"] > priced["squeeze"] / 2  # the scale streams its whole feature map


# torchvision's model zoo at 224x224: multiply-accumulates of the convolutions and dense layers as
# torchvision's documentation gives them (GFLOPS there counts multiply-adds), in GMAC.
TORCHVISION_GMACS = {
    "mobilenet_v3_small": 0.06, "mobilenet_v3_large": 0.22, "efficientnet_b0": 0.39, "regnet_y_400mf": 0.40,
    "squeezenet1_0": 0.82, "resnet50": 4.09, "densenet121": 2.83, "googlenet": 1.50,
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_GMACS))
def test_torchvision_cnns_import_with_their_published_size_and_are_priced(name: str) -> None:
    from deploy.estimate import estimate_latency
    from tests.conftest import torchvision_models

    net = import_module(getattr(torchvision_models(), name)(weights=None).eval(), (3, 224, 224), name)
    gmacs = sum(layer.macs for layer in net.searchable_layers) / 1e9
    assert gmacs == pytest.approx(TORCHVISION_GMACS[name], abs=0.005)
    priced = estimate_latency(net, "cortex-a72")
    assert all(layer.latency_ms > 0 for layer in priced.layers)  # fixed layers too: memory traffic, dispatch
    assert 5 < priced.latency_ms < 1000


def test_shufflenet_is_refused_at_its_channel_shuffle() -> None:
    from tests.conftest import torchvision_models

    with pytest.raises(UnsupportedOpError, match=r"unsupported op torch\.transpose at node 'transpose'"):
        import_module(torchvision_models().shufflenet_v2_x1_0(weights=None).eval(), (3, 224, 224))
