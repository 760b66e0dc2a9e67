"""Model zoo: shapes, output strides, dilations, parameter groups, key layouts, strict loading."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from equiseg.config import ModelConfig
from equiseg.errors import ConfigError, WeightsError
from equiseg.models import (
    DeepLabV2,
    DeepLabV3Plus,
    MobileNetV2,
    ResNet,
    build_model,
    convert_sync_batchnorm,
    load_backbone_weights,
)

NUM_CLASSES = 5
ODD_INPUT = (2, 3, 65, 65)
EVEN_INPUT = (2, 3, 64, 64)  # strides divide 64 exactly, so feature sizes are 64 / stride
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"

# torchvision's block counts; the test derives the expected keys from them independently of our code.
TORCHVISION_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
TORCHVISION_STATE_DICT_SIZE = {50: 320, 101: 626}  # len(torchvision.models.resnetX().state_dict())
STEM_PREFIXES = ("conv1.", "bn1.")
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_resnet_keys(depth: int) -> list[str]:
    """The state_dict keys of torchvision's resnet50/101, in order, fc included."""
    def bn(prefix: str) -> list[str]:
        return [f"{prefix}.{k}" for k in BN_KEYS]

    keys = ["conv1.weight", *bn("bn1")]
    for stage, blocks in enumerate(TORCHVISION_BLOCKS[depth], start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            for i in (1, 2, 3):
                keys += [f"{p}.conv{i}.weight", *bn(f"{p}.bn{i}")]
            if b == 0:
                keys += [f"{p}.downsample.0.weight", *bn(f"{p}.downsample.1")]
    return keys + ["fc.weight", "fc.bias"]


def weights_file(name: str) -> Path:
    """$EQUISEG_WEIGHTS_DIR/name, else <repo>/../shared/weights/name."""
    env = os.environ.get("EQUISEG_WEIGHTS_DIR")
    folder = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "weights"
    return folder / name


def conv2_dilations(layer: nn.Sequential) -> list[int]:
    return [block.conv2.dilation[0] for block in layer]


def depthwise_convs(model: MobileNetV2) -> list[nn.Conv2d]:
    """The 3x3 depthwise conv of features[1..17], in order."""
    return [
        m
        for block in model.features[1:]
        for m in block.modules()
        if isinstance(m, nn.Conv2d) and m.groups > 1
    ]


@pytest.fixture(autouse=True, scope="module")
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def deeplabv2() -> DeepLabV2:
    """The only ResNet-101 the tests build (output stride 8); its backbone is reused."""
    return build_model(ModelConfig(arch="deeplabv2", backbone="resnet101", output_stride=8), NUM_CLASSES)


@pytest.fixture(scope="module")
def resnet50_pair() -> tuple[ResNet, ResNet]:
    """A torchvision-stem and a deep-stem ResNet-50 (output stride 16)."""
    return ResNet(depth=50), ResNet(depth=50, deep_stem=True)


@functools.lru_cache(maxsize=None)
def deeplabv3plus(backbone: str, output_stride: int = 16, aux_head: bool = False) -> DeepLabV3Plus:
    """Built once per configuration and shared (ResNet-50 takes a while to build and JIT on CPU);
    tests set train/eval mode themselves and must not change the weights."""
    return build_model(ModelConfig(backbone=backbone, output_stride=output_stride, aux_head=aux_head), NUM_CLASSES)


def own_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """A distinct copy of the backbone's state, perturbed so loading it is observable."""
    return {k: (v + 1 if v.is_floating_point() else v.clone()) for k, v in backbone.state_dict().items()}


# --------------------------------------------------------------------------- shapes and strides


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet50"])
@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("shape", [ODD_INPUT, (2, 3, 48, 70)])
def test_deeplabv3plus_shapes(backbone, output_stride, shape):
    model = deeplabv3plus(backbone, output_stride).eval()
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert set(out) == {"out"}
    assert out["out"].shape == (shape[0], NUM_CLASSES, *shape[2:])


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet50"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_backbone_feature_strides(backbone, output_stride):
    model = deeplabv3plus(backbone, output_stride).eval()
    with torch.no_grad():
        feats = model.backbone(torch.randn(EVEN_INPUT))
    size = EVEN_INPUT[-1]
    assert feats["low"].shape[-2:] == (size // 4, size // 4)
    assert feats["aux"].shape[-2:] == (size // output_stride, size // output_stride)
    assert feats["high"].shape[-2:] == (size // output_stride, size // output_stride)
    for name, channels in model.backbone.channels.items():
        assert feats[name].shape[1] == channels


def test_backbone_channels():
    assert MobileNetV2().channels == {"low": 24, "aux": 96, "high": 320}
    assert ResNet(depth=50).channels == {"low": 256, "aux": 1024, "high": 2048}


def test_aspp_rates_scale_with_output_stride():
    for output_stride, rates in ((16, [6, 12, 18]), (8, [12, 24, 36])):
        model = deeplabv3plus("mobilenet_v2", output_stride)
        branches = model.decoder.aspp.branches
        atrous = [b[0] for b in branches if isinstance(b, nn.Sequential) and b[0].kernel_size == (3, 3)]
        assert [c.dilation[0] for c in atrous] == rates
        assert [c.padding[0] for c in atrous] == rates


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet50"])
def test_aux_only_when_enabled_and_training(backbone):
    x = torch.randn(ODD_INPUT)
    model = deeplabv3plus(backbone, aux_head=True)
    out = model.train()(x)
    assert set(out) == {"out", "aux"}
    assert out["aux"].shape == out["out"].shape == (2, NUM_CLASSES, 65, 65)
    (out["out"].mean() + out["aux"].mean()).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        assert set(model.eval()(x)) == {"out"}
        plain = deeplabv3plus(backbone, aux_head=False).train()
        assert set(plain(x)) == {"out"}
    assert plain.aux_head is None


def test_deeplabv2_resnet101(deeplabv2):
    assert deeplabv2.backbone.output_stride == 8
    assert [c.dilation[0] for c in deeplabv2.classifier.convs] == [6, 12, 18, 24]
    assert all(c.bias is not None for c in deeplabv2.classifier.convs)
    x = torch.randn(ODD_INPUT)
    out = deeplabv2.train()(x)
    assert set(out) == {"out"} and out["out"].shape == (2, NUM_CLASSES, 65, 65)
    with torch.no_grad():
        feats = deeplabv2.eval().backbone(torch.randn(EVEN_INPUT))
    assert feats["high"].shape[-2:] == (8, 8)  # 64 / 8


def test_deeplabv3plus_on_resnet101(deeplabv2):
    # Reuse the ResNet-101 backbone rather than building a second one.
    model = DeepLabV3Plus(deeplabv2.backbone, NUM_CLASSES, aux_head=True).eval()
    with torch.no_grad():
        out = model(torch.randn(ODD_INPUT))
    assert out["out"].shape == (2, NUM_CLASSES, 65, 65)


# --------------------------------------------------------------------------- dilations


@pytest.mark.parametrize(
    "output_stride, multi_grid, layer3, layer4",
    [
        (16, False, [1] * 6, [1, 2, 2]),
        (8, False, [1] + [2] * 5, [2, 4, 4]),
        (16, True, [1] * 6, [2, 4, 8]),
        (8, True, [1] + [2] * 5, [4, 8, 16]),
    ],
)
def test_resnet_dilations(output_stride, multi_grid, layer3, layer4):
    net = ResNet(depth=50, output_stride=output_stride, multi_grid=multi_grid)
    assert conv2_dilations(net.layer3) == layer3
    assert conv2_dilations(net.layer4) == layer4
    assert [b.conv2.padding[0] for b in net.layer4] == layer4  # padding keeps the size
    assert all(b.conv2.stride == (1, 1) for b in net.layer4)


@pytest.mark.parametrize(
    "output_stride, dilations",
    [
        # features.1 .. features.17
        (16, [1] * 13 + [1, 2, 2, 2]),
        (8, [1] * 6 + [1, 2, 2, 2] + [2] * 3 + [2, 4, 4, 4]),
    ],
)
def test_mobilenet_dilations(output_stride, dilations):
    convs = depthwise_convs(MobileNetV2(output_stride=output_stride))
    assert [c.dilation[0] for c in convs] == dilations
    assert [c.padding[0] for c in convs] == dilations


# --------------------------------------------------------------------------- parameter groups


def test_parameter_groups_partition(deeplabv2):
    models = [deeplabv3plus("mobilenet_v2", aux_head=True), deeplabv3plus("resnet50"), deeplabv2]
    for model in models:
        backbone = {id(p) for p in model.backbone_parameters()}
        head = [id(p) for p in model.head_parameters()]
        assert head and backbone
        assert not backbone & set(head)
        assert backbone | set(head) == {id(p) for p in model.parameters()}
        assert len(backbone) + len(head) == len(list(model.parameters()))
        assert backbone == {id(p) for p in model.backbone.parameters()}


def test_head_init():
    model = deeplabv3plus("mobilenet_v2")
    for m in model.decoder.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert torch.all(model.decoder.classifier.bias == 0)


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "options, key",
    [
        (dict(arch="deeplabv2", backbone="mobilenet_v2", output_stride=8), "model.backbone"),
        (dict(arch="deeplabv2", backbone="resnet50", output_stride=8), "model.backbone"),
        (dict(arch="deeplabv2", backbone="resnet101", output_stride=16), "model.output_stride"),
        (dict(arch="deeplabv2", backbone="resnet101", output_stride=8, aux_head=True), "model.aux_head"),
        (dict(backbone="mobilenet_v2", deep_stem=True), "model.deep_stem"),
        (dict(backbone="mobilenet_v2", multi_grid=True), "model.multi_grid"),
        (dict(arch="deeplabv2", backbone="resnet101", output_stride=8, head_channels=64), "model.head_channels"),
    ],
)
def test_build_model_config_errors(options, key):
    with pytest.raises(ConfigError, match=key):
        build_model(ModelConfig(**options), NUM_CLASSES)


def test_head_channels_narrow_the_head_only():
    wide = build_model(ModelConfig(), NUM_CLASSES)
    narrow = build_model(ModelConfig(head_channels=64), NUM_CLASSES)
    assert narrow.decoder.classifier.in_channels == 64 and wide.decoder.classifier.in_channels == 256
    assert narrow.decoder.aspp.project[0][0].out_channels == 64
    backbone_keys = {k for k in wide.state_dict() if k.startswith("backbone.")}
    assert backbone_keys == {k for k in narrow.state_dict() if k.startswith("backbone.")}
    narrow.eval()
    assert narrow(torch.randn(1, 3, 64, 64))["out"].shape == (1, NUM_CLASSES, 64, 64)


def test_convert_sync_batchnorm():
    model = build_model(ModelConfig(aux_head=True), NUM_CLASSES)
    keys = list(model.state_dict())
    synced = convert_sync_batchnorm(model)
    norms = [m for m in synced.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    assert list(synced.state_dict()) == keys


# --------------------------------------------------------------------------- key layouts


@pytest.mark.parametrize("depth", [50, 101])
def test_resnet_keys_match_torchvision(depth, deeplabv2, resnet50_pair):
    expected = torchvision_resnet_keys(depth)
    assert len(expected) == TORCHVISION_STATE_DICT_SIZE[depth]
    net = deeplabv2.backbone if depth == 101 else resnet50_pair[0]
    assert list(net.state_dict()) == expected[:-2]  # everything but fc.weight / fc.bias
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer4.2.bn3.bias"):
        assert key in net.state_dict()
    assert net.state_dict()["conv1.weight"].shape == (64, 3, 7, 7)


def test_deep_stem_keys(resnet50_pair):
    net = resnet50_pair[1]
    state = net.state_dict()
    stem = [k for k in state if k.startswith(STEM_PREFIXES)]
    assert stem == [
        "conv1.0.weight", *[f"conv1.1.{k}" for k in BN_KEYS],
        "conv1.3.weight", *[f"conv1.4.{k}" for k in BN_KEYS],
        "conv1.6.weight", *[f"bn1.{k}" for k in BN_KEYS],
    ]
    assert state["conv1.0.weight"].shape == (64, 3, 3, 3)
    assert state["conv1.6.weight"].shape == (128, 64, 3, 3)
    assert state["bn1.weight"].shape == (128,)
    assert state["layer1.0.conv1.weight"].shape == (64, 128, 1, 1)
    assert state["layer1.0.downsample.0.weight"].shape == (256, 128, 1, 1)
    # The body keys are torchvision's; only the stem differs (2 conv + 2 BN entries more).
    tv = torchvision_resnet_keys(50)[:-2]
    body = [k for k in state if not k.startswith(STEM_PREFIXES)]
    assert body == [k for k in tv if not k.startswith(STEM_PREFIXES)]
    assert len(state) == len(tv) + 2 * (1 + len(BN_KEYS))
    assert net.conv1[0].stride == (2, 2) and net.maxpool.ceil_mode


# --------------------------------------------------------------------------- strict loading


def test_own_state_round_trips_and_drops_fc(resnet50_pair):
    net, _ = resnet50_pair
    state = own_state(net)
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    report = load_backbone_weights(net, state)
    assert report.layout == "torchvision_resnet"
    assert report.dropped == ["fc.weight", "fc.bias"]
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_missing_num_batches_tracked_is_tolerated():
    net = MobileNetV2()
    state = {k: v for k, v in own_state(net).items() if not k.endswith("num_batches_tracked")}
    report = load_backbone_weights(net, state)
    assert report.kept_model_values and all(k.endswith("num_batches_tracked") for k in report.kept_model_values)


@pytest.mark.parametrize("problem", ["missing", "unexpected", "shape"])
def test_strict_key_checks(problem, resnet50_pair):
    net, _ = resnet50_pair
    state = own_state(net)
    if problem == "missing":
        key = "layer2.1.bn2.weight"
        del state[key]
    elif problem == "unexpected":
        key = "layer2.1.extra.weight"
        state[key] = torch.zeros(3)
    else:
        key = "layer1.0.conv1.weight"
        state[key] = torch.zeros(64, 64, 3, 3)
    before = net.layer1[0].conv1.weight.clone()
    with pytest.raises(WeightsError, match=key.replace(".", r"\.")) as err:
        load_backbone_weights(net, state)
    assert problem in str(err.value)
    assert torch.equal(net.layer1[0].conv1.weight, before)  # nothing was loaded


def test_torchvision_weights_into_deep_stem_is_an_error(resnet50_pair):
    net, deep = resnet50_pair
    with pytest.raises(WeightsError, match="deep_stem"):
        load_backbone_weights(deep, own_state(net))
    with pytest.raises(WeightsError, match="deep_stem"):
        load_backbone_weights(net, own_state(deep))
    with pytest.raises(WeightsError, match="MobileNetV2"):
        load_backbone_weights(net, own_state(MobileNetV2()))
    with pytest.raises(WeightsError, match="look like"):
        load_backbone_weights(deep, own_state(net), layout="deep_stem_resnet")


def test_resnet_depth_mismatch_is_explained(deeplabv2, resnet50_pair):
    net, _ = resnet50_pair
    with pytest.raises(WeightsError, match="different ResNet depth"):
        load_backbone_weights(deeplabv2.backbone, own_state(net))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: {f"module.{k}": v for k, v in s.items()},
        lambda s: {"state_dict": s, "epoch": 90},
        lambda s: {"model": {f"module.backbone.{k}": v for k, v in s.items()}},
    ],
    ids=["module-prefix", "state_dict-wrapped", "model-wrapped-backbone-prefix"],
)
def test_deep_stem_checkpoint_files_load(wrap, resnet50_pair, tmp_path):
    _, deep = resnet50_pair
    state = own_state(deep)
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    path = tmp_path / "resnet50s.pth"
    torch.save(wrap(state), path)
    report = load_backbone_weights(deep, path)
    assert report.layout == "deep_stem_resnet" and report.source == str(path)
    assert torch.equal(deep.conv1[0].weight, state["conv1.0.weight"])
    assert torch.equal(deep.bn1.running_var, state["bn1.running_var"])


def test_unreadable_files_name_the_path(tmp_path):
    net = MobileNetV2()
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match="nope.pth"):
        load_backbone_weights(net, missing)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="corrupt.pth"):
        load_backbone_weights(net, corrupt)
    metadata_only = tmp_path / "meta.pth"
    torch.save({"epoch": 3}, metadata_only)
    with pytest.raises(WeightsError, match="not a state dict"):
        load_backbone_weights(net, metadata_only)


def test_build_model_loads_pretrained(tmp_path):
    source = MobileNetV2()
    state = own_state(source)
    path = tmp_path / "mnv2.pth"
    torch.save(state, path)
    model = build_model(ModelConfig(pretrained=str(path)), NUM_CLASSES)
    assert torch.equal(model.backbone.features[5].conv[1][0].weight, state["features.5.conv.1.0.weight"])
    with pytest.raises(WeightsError, match="missing.pth"):
        build_model(ModelConfig(pretrained=str(tmp_path / "missing.pth")), NUM_CLASSES)


# --------------------------------------------------------------------------- real ImageNet checkpoint


def test_real_mobilenet_v2_checkpoint():
    path = weights_file(MOBILENET_V2_FILE)
    if not path.is_file():
        pytest.skip(f"{path} not found (set EQUISEG_WEIGHTS_DIR)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(ModelConfig(backbone="mobilenet_v2"), NUM_CLASSES)
    backbone = model.backbone
    before = backbone.features[0][0].weight.clone()

    report = load_backbone_weights(backbone, path)

    assert report.layout == "torchvision_mobilenet_v2"
    assert sorted(report.dropped) == sorted(k for k in checkpoint if k.startswith(("features.18.", "classifier.")))
    assert len(report.dropped) == 6 + 2  # features.18 conv + BN (5 entries), classifier.1 weight + bias
    assert not report.kept_model_values
    state = backbone.state_dict()
    assert set(state) == set(checkpoint) - set(report.dropped)
    assert not torch.equal(backbone.features[0][0].weight, before)
    for key, value in state.items():
        assert torch.equal(value, checkpoint[key]), key  # incl. every BN running mean/var
    bn = backbone.features[17].conv[3]
    assert torch.equal(bn.running_mean, checkpoint["features.17.conv.3.running_mean"])
    assert torch.equal(bn.running_var, checkpoint["features.17.conv.3.running_var"])
    with torch.no_grad():
        out = model.eval()(torch.randn(ODD_INPUT))["out"]
    assert torch.isfinite(out).all()
