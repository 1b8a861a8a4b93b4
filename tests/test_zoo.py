"""The built-in networks: published sizes, canonical structure, and 224/32 variants that differ only in shape."""

from collections import Counter

import pytest

from envs import zoo
from envs.network import Network, Op

# Published multiply-accumulates (convs + classifier) and parameter counts at 224x224, 1000 classes.
REFERENCE = {
    "mobilenet_v1": (569e6, 4.2e6),
    "mobilenet_v2": (300e6, 3.5e6),
    "resnet18": (1.82e9, 11.7e6),
}
CONVS = (Op.CONV, Op.POINTWISE, Op.DEPTHWISE)


def op_counts(net: Network) -> Counter:
    return Counter(layer.op for layer in net.layers)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_macs_and_params_match_published_numbers(name: str) -> None:
    macs, params = REFERENCE[name]
    net = zoo.get_network(name)
    searchable_macs = sum(layer.macs for layer in net.searchable_layers)
    assert searchable_macs == pytest.approx(macs, rel=0.02)
    assert net.weight_elements == pytest.approx(params, rel=0.02)
    assert net.input_shape == (3, 224, 224)
    assert net.num_classes == 1000


def test_mobilenet_v2_structure() -> None:
    net = zoo.mobilenet_v2()
    counts = op_counts(net)
    assert sum(counts[op] for op in CONVS) == 52
    assert (counts[Op.CONV], counts[Op.POINTWISE], counts[Op.DEPTHWISE]) == (1, 34, 17)
    assert counts[Op.DENSE] == 1 and counts[Op.ADD] == 10 and counts[Op.POOL] == 1
    blocks = {layer.name.split(".")[0] for layer in net.layers if layer.name.startswith("b")}
    assert len(blocks) == 17
    assert "b1.expand" not in [layer.name for layer in net.layers]  # expansion 1: no expand conv

    dw = net["b2.dw"]
    assert (dw.op, dw.in_shape, dw.out_shape, dw.stride, dw.groups) == (
        Op.DEPTHWISE, (96, 112, 112), (96, 56, 56), (2, 2), 96
    )
    assert dw.activation == "relu6" and dw.batch_norm and not dw.bias
    project = net["b3.project"]
    assert project.activation is None and project.out_shape == (24, 56, 56)
    assert net["b3.add"].inputs == ("b2.project", "b3.project") and net["b3.add"].activation is None
    assert net["head"].out_shape == (1280, 7, 7)
    assert net["pool"].pool == "global_avg" and net["pool"].out_shape == (1280, 1, 1)
    fc = net["fc"]
    assert (fc.in_shape, fc.out_shape, fc.bias, fc.weight_elements) == ((1280, 1, 1), (1000, 1, 1), True, 1281000)


def test_mobilenet_v1_structure() -> None:
    net = zoo.mobilenet_v1()
    counts = op_counts(net)
    assert (counts[Op.CONV], counts[Op.DEPTHWISE], counts[Op.POINTWISE], counts[Op.DENSE]) == (1, 13, 13, 1)
    assert all(layer.activation == "relu" for layer in net.layers if layer.op in CONVS)
    assert net["b13.pw"].out_shape == (1024, 7, 7)
    assert net["b1.pw"].macs == 112 * 112 * 32 * 64


def test_resnet18_structure() -> None:
    net = zoo.resnet18()
    counts = op_counts(net)
    assert counts[Op.CONV] == 20 and counts[Op.DENSE] == 1 and counts[Op.ADD] == 8 and counts[Op.POOL] == 2
    downsample = [layer for layer in net.layers if layer.name.endswith("downsample")]
    assert [layer.name for layer in downsample] == ["layer2.0.downsample", "layer3.0.downsample", "layer4.0.downsample"]
    assert all(layer.kernel == (1, 1) and layer.stride == (2, 2) for layer in downsample)
    stem, maxpool = net["conv1"], net["maxpool"]
    assert (stem.kernel, stem.stride, stem.padding, stem.out_shape) == ((7, 7), (2, 2), (3, 3), (64, 112, 112))
    assert (maxpool.pool, maxpool.kernel, maxpool.padding, maxpool.out_shape) == ("max", (3, 3), (1, 1), (64, 56, 56))
    add = net["layer2.0.add"]
    assert add.inputs == ("layer2.0.conv2", "layer2.0.downsample") and add.activation == "relu"
    assert net["layer1.0.add"].inputs == ("layer1.0.conv2", "maxpool")
    assert net["layer4.1.add"].out_shape == (512, 7, 7)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "resnet18"])
def test_small_input_variant_differs_only_in_shapes(name: str) -> None:
    full, small = zoo.get_network(name), zoo.small_input_variant(name)
    assert small.input_shape == (3, 32, 32) and small.num_classes == 10
    assert [l.name for l in small.layers] == [l.name for l in full.layers]
    for a, b in zip(full.layers[:-1], small.layers[:-1]):
        assert (a.op, a.inputs, a.kernel, a.stride, a.padding, a.groups, a.activation) == (
            b.op, b.inputs, b.kernel, b.stride, b.padding, b.groups, b.activation
        )
        assert a.out_shape[0] == b.out_shape[0]
    assert small.layers[-2].in_shape[1:] == (1, 1)  # the ImageNet strides shrink 32x32 to 1x1


def test_mobilenet_v2_32_registry_entry() -> None:
    net = zoo.get_network("mobilenet_v2_32")
    assert net == zoo.small_input_variant("mobilenet_v2") == zoo.mobilenet_v2(32, 10)
    assert net.macs == 6_130_624 and net.weight_elements == 2_202_570
    assert net["b2.dw"].out_shape == (96, 8, 8)


def test_width_multiplier_rounds_channels_like_torchvision() -> None:
    net = zoo.mobilenet_v2(width=0.5)
    assert net["stem"].out_shape[0] == 16
    assert net["b1.project"].out_shape[0] == 8
    assert net["b17.project"].out_shape[0] == 160
    assert net["head"].out_shape[0] == 1280  # the last conv never shrinks
    assert zoo.mobilenet_v1(width=0.25)["b13.pw"].out_shape[0] == 256


def test_networks_round_trip_through_json() -> None:
    for name in zoo.NETWORKS:
        net = zoo.get_network(name)
        assert Network.from_dict(net.to_dict()) == net


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="mobilenet_v1, mobilenet_v2, mobilenet_v2_32, resnet18"):
        zoo.get_network("vgg16")


def test_signatures_and_choice_keys_parse_back():
    from envs.network import Layer
    from envs.space import Choice, InvalidChoice

    from deploy.targets import get_target

    space = get_target("cortex-a72").search_space()
    for layer in zoo.get_network("resnet18").searchable_layers + zoo.get_network("mobilenet_v2").searchable_layers:
        again = Layer.from_signature(layer.signature)
        assert again.signature == layer.signature and again.macs == layer.macs
    for choice in space.all_choices()[::37]:
        assert Choice.from_key(choice.key) == choice
    with pytest.raises(ValueError, match="is not a searchable layer's signature"):
        Layer.from_signature("conv:3x3")
    with pytest.raises(InvalidChoice, match="is not a choice key"):
        Choice.from_key("base/fp32/direct")
