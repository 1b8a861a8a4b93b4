"""`envs.torch_build`: a Network runs as an nn.Module with the shapes it declares."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from envs import zoo
from envs.network import Layer, Network, Op
from envs.torch_build import build_module, fold_batch_norm


def all_ops_network(size: int = 16, num_classes: int = 10) -> Network:
    """Every op kind: conv, depthwise, pointwise, residual add, max pool, concat, avg pool, act, dense."""
    h = size // 2
    q = h // 2
    layers = (
        Layer("stem", Op.CONV, ("input",), (3, size, size), (16, h, h), (3, 3), (2, 2), (1, 1),
              batch_norm=True, activation="relu"),
        Layer("b1.dw", Op.DEPTHWISE, ("stem",), (16, h, h), (16, h, h), (3, 3), (1, 1), (1, 1), groups=16,
              batch_norm=True, activation="relu6"),
        Layer("b1.pw", Op.POINTWISE, ("b1.dw",), (16, h, h), (16, h, h), batch_norm=True),
        Layer("b1.add", Op.ADD, ("stem", "b1.pw"), (16, h, h), (16, h, h), activation="relu"),
        Layer("pool", Op.POOL, ("b1.add",), (16, h, h), (16, q, q), (2, 2), (2, 2), pool="max"),
        Layer("left", Op.POINTWISE, ("pool",), (16, q, q), (8, q, q), batch_norm=True, activation="relu"),
        Layer("right", Op.CONV, ("pool",), (16, q, q), (8, q, q), (3, 3), (1, 1), (1, 1),
              batch_norm=True, activation="hardswish"),
        Layer("cat", Op.CONCAT, ("left", "right"), (8, q, q), (16, q, q)),
        Layer("avg", Op.POOL, ("cat",), (16, q, q), (16, q // 2, q // 2), (2, 2), (2, 2), pool="avg"),
        Layer("act", Op.ACT, ("avg",), (16, q // 2, q // 2), (16, q // 2, q // 2), activation="relu6"),
        Layer("fc", Op.DENSE, ("act",), (16 * (q // 2) ** 2, 1, 1), (num_classes, 1, 1), bias=True),
    )
    return Network("tiny", (3, size, size), layers)


def _check_layer_shapes(network: Network, batch: int = 2) -> torch.Tensor:
    """Run the module and compare every layer's output with the declared (batch, *out_shape)."""
    module = build_module(network).eval()
    seen: dict[str, tuple[int, ...]] = {}
    for layer in network.layers:
        module.layer_module(layer.name).register_forward_hook(
            lambda m, args, out, name=layer.name: seen.__setitem__(name, tuple(out.shape))
        )
    with torch.no_grad():
        out = module(torch.rand(batch, *network.input_shape))
    assert seen == {layer.name: (batch, *layer.out_shape) for layer in network.layers}
    return out


def test_tiny_network_shapes() -> None:
    out = _check_layer_shapes(all_ops_network())
    assert out.shape == (2, 10)


def test_unbatched_input_gets_a_batch_dimension() -> None:
    module = build_module(all_ops_network()).eval()
    assert module(torch.rand(3, 16, 16)).shape == (1, 10)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "resnet18"])
def test_zoo_small_variants_shapes(name: str) -> None:
    out = _check_layer_shapes(zoo.small_input_variant(name))
    assert out.shape == (2, 10)


def test_module_for_returns_the_weights_module() -> None:
    network = all_ops_network()
    module = build_module(network)
    for layer in network.searchable_layers:
        weights = module.module_for(layer.name)
        expected = nn.Linear if layer.op is Op.DENSE else nn.Conv2d
        assert isinstance(weights, expected)
    assert module.module_for("b1.dw").groups == 16
    with pytest.raises(ValueError, match="not searchable"):
        module.module_for("b1.add")
    with pytest.raises(KeyError, match="nope"):
        module.module_for("nope")


def test_layer_names_are_sanitised_without_clashes() -> None:
    layers = (
        Layer("a.b", Op.POINTWISE, ("input",), (3, 4, 4), (4, 4, 4)),
        Layer("a_b", Op.POINTWISE, ("a.b",), (4, 4, 4), (4, 4, 4)),
        Layer("training", Op.ACT, ("a_b",), (4, 4, 4), (4, 4, 4), activation="relu"),
    )
    module = build_module(Network("names", (3, 4, 4), layers))
    keys = [module.key_for(layer.name) for layer in layers]
    assert len(set(keys)) == 3 and all("." not in k for k in keys)
    assert module.module_for("a.b").in_channels == 3 and module.module_for("a_b").in_channels == 4
    assert module(torch.rand(1, 3, 4, 4)).shape == (1, 64)


def test_fold_batch_norm_keeps_outputs() -> None:
    torch.manual_seed(0)
    module = build_module(all_ops_network())
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    module.eval()
    folded = fold_batch_norm(module)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in module.modules())  # the original is untouched
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), module(x), rtol=1e-4, atol=1e-5)


def test_producer_shape_mismatch_names_the_layer() -> None:
    layers = (
        Layer("a", Op.POINTWISE, ("input",), (3, 4, 4), (8, 4, 4)),
        Layer("b", Op.POINTWISE, ("a",), (3, 4, 4), (8, 4, 4)),
    )
    with pytest.raises(ValueError, match="layer 'b'"):
        build_module(Network("bad", (3, 4, 4), layers))


@pytest.mark.parametrize("pixels", [1, 4, 16, 64])
def test_pointwise_conv_as_gemm_matches_the_convolution_and_keeps_hooks(pixels: int) -> None:
    from envs.torch_build import PointwiseConv2d

    side = int(pixels**0.5)
    conv = PointwiseConv2d(24, 40, 1, bias=True)
    x = torch.randn(6, 24, side, side).contiguous(memory_format=torch.channels_last)
    seen = []
    conv.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    y = conv(x)
    assert seen == [x.shape]
    assert y.shape == (6, 40, side, side) and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, conv.weight, conv.bias), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv(x.contiguous()), y, rtol=1e-5, atol=1e-5)  # NCHW input: the conv path
