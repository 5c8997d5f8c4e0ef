"""Model registry: every architecture fits small and CIFAR-sized inputs, builds
deterministically, and lists its parameters from input to output."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from unlearning_core.errors import ModelError
from unlearning_core.models import MODEL_NAMES, create_model, model_names, register_model, registry

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
CLASSES = 7

#: (first key, last key) prefixes: the stem and the classifier head of each model.
ENDS = {
    "mlp": (("fc1.",), ("head.",)),
    "small-cnn": (("conv1.",), ("head.",)),
    "alexnet": (("features.0.",), ("classifier.6.",)),
    "resnet18": (("conv1.",), ("fc.",)),
    "resnet50": (("conv1.",), ("fc.",)),
    "vit": (("class_token", "conv_proj."), ("heads.head.",)),
}


def _build(name: str, shape: tuple[int, int, int], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    c, h, w = shape
    return create_model(name, in_channels=c, image_size=(h, w), num_classes=CLASSES)


def test_builtin_names() -> None:
    assert MODEL_NAMES == ("mlp", "small-cnn", "alexnet", "resnet18", "resnet50", "vit")
    assert set(ENDS) == set(MODEL_NAMES)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_gives_logits(name: str, shape: tuple[int, int, int]) -> None:
    model = _build(name, shape).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, CLASSES) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["mlp", "small-cnn", "resnet18"])
def test_small_models_train_step(name: str) -> None:
    """A backward pass reaches the stem (the adapted first layer is wired in)."""
    model = _build(name, (1, 8, 8)).train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.arange(4))
    loss.backward()
    first = next(p for p in model.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_seeded_construction_is_deterministic(name: str) -> None:
    a = _build(name, (1, 28, 28), seed=3).state_dict()
    b = _build(name, (1, 28, 28), seed=3).state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    if name in ("mlp", "small-cnn"):
        c = _build(name, (1, 28, 28), seed=4).state_dict()
        assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)], ids=["8px", "32px"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_state_dict_runs_from_input_to_head(name: str, shape: tuple[int, int, int]) -> None:
    model = _build(name, shape).eval()
    keys = list(model.state_dict())
    # A prepended resize has no parameters; the keys are then those of the wrapped net.
    plain = [k.removeprefix("net.") for k in keys]
    first, last = ENDS[name]
    assert plain[0].startswith(first), keys[0]
    assert plain[-1].startswith(last), keys[-1]

    # Stronger: modules holding parameters appear in the state_dict in the order the forward
    # pass first calls them (modules used only through their weights, like
    # MultiheadAttention.out_proj, are not called and are skipped).
    order: list[str] = []
    hooks = []
    for mod_name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            hooks.append(
                module.register_forward_pre_hook(
                    lambda _m, _i, n=mod_name: order.append(n) if n not in order else None
                )
            )
    with torch.no_grad():
        model(torch.randn(2, *shape))
    for h in hooks:
        h.remove()
    owners = []
    for key in keys:
        owner = key.rsplit(".", 1)[0] if "." in key else ""
        if owner in order and owner not in owners:
            owners.append(owner)
    assert owners == order


def test_small_inputs_are_resized_for_torchvision_models() -> None:
    model = _build("resnet18", (1, 28, 28))
    assert isinstance(model[0], nn.Upsample) and model[0].size == (32, 32)
    assert model.net.conv1.in_channels == 1 and model.net.conv1.stride == (1, 1)
    assert isinstance(model.net.maxpool, nn.Identity)
    cifar = _build("resnet18", (3, 32, 32))
    assert not any(isinstance(m, nn.Upsample) for m in cifar.modules())
    vit = _build("vit", (3, 32, 32))
    assert vit.patch_size == 4 and vit.hidden_dim == 192 and len(vit.encoder.layers) == 6
    assert _build("vit", (1, 28, 28)).net.conv_proj.in_channels == 1
    assert _build("alexnet", (3, 32, 32)).features[0].kernel_size == (3, 3)


def test_large_rgb_input_keeps_imagenet_stem() -> None:
    model = create_model("resnet18", in_channels=3, image_size=(96, 96), num_classes=5)
    assert model.conv1.kernel_size == (7, 7) and isinstance(model.maxpool, nn.MaxPool2d)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 96, 96)).shape == (1, 5)


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(ModelError) as exc:
        create_model("resnet1000", in_channels=1, image_size=(8, 8), num_classes=10)
    msg = str(exc.value)
    assert "resnet1000" in msg and all(n in msg for n in MODEL_NAMES)
    with pytest.raises(ModelError):
        create_model("small-cnn", in_channels=1, image_size=(2, 2), num_classes=10)
    with pytest.raises(ModelError):
        create_model("mlp", in_channels=0, image_size=(8, 8), num_classes=10)


def test_names_are_forgiving() -> None:
    model = create_model("Small_CNN", in_channels=1, image_size=(8, 8), num_classes=3)
    assert model.conv1.out_channels == 16


def test_register_model_adds_one_function(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))

    @register_model("linear")
    def linear(*, in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
        features = in_channels * image_size[0] * image_size[1]
        return nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes))

    assert "linear" in model_names()
    model = create_model("linear", in_channels=1, image_size=(8, 8), num_classes=4)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)
    with pytest.raises(ValueError, match="already registered"):
        register_model("linear")(linear)
