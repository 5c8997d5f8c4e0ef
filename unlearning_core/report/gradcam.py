"""Grad-CAM with plain torch hooks: where a model looks for the evidence of a class.

A regulator-facing report shows, for a fixed panel of images of the forgotten classes, the
class-activation map of the original model next to the unlearned one: if the erasure
worked, the evidence the original found for the forgotten class fades. Hooks on one
convolutional layer (the last ``Conv2d`` unless a layer is named) give its activations
``A`` and the gradient of the class score; the map is ``relu(sum_k mean(dS/dA_k) A_k)``
upsampled to the input size (Selvaraju et al., 2017). No extra library: the hooks are
a dozen lines and work the same on CPU and CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from unlearning_core.data import SampleSet
from unlearning_core.errors import LetheError


class GradCamError(LetheError):
    """Grad-CAM cannot be computed for this model (no conv layer, a transformer, bad layer)."""


def find_target_layer(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Module]:
    """The layer to explain: ``layer`` by its module name, else the last ``Conv2d``.

    Vision transformers are refused: their only ``Conv2d`` is the patch embedding, whose
    map says nothing about the decision, and attention needs another method (rollout).
    Ensembles (several copies of one architecture, as SISA's) would silently explain a
    single member, so they are refused too unless a layer is named.
    """
    modules = dict(model.named_modules())
    if layer is not None:
        if layer not in modules:
            convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
            raise GradCamError(
                f"model has no layer {layer!r}; its conv layers are: {', '.join(convs) or 'none'}"
            )
        return layer, modules[layer]
    if any(isinstance(m, nn.MultiheadAttention) for m in modules.values()):
        raise GradCamError(
            "Grad-CAM is not supported for vision transformers (vit): the only conv layer is "
            "the patch embedding; name a layer explicitly to force it"
        )
    convs = [(n, m) for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise GradCamError(
            f"Grad-CAM needs a convolutional layer; {type(model).__name__} has none (e.g. mlp)"
        )
    if any(isinstance(m, nn.ModuleList) and len(m) > 1 and isinstance(m[0], type(m[-1]))
           and any(isinstance(c, nn.Conv2d) for c in m[0].modules()) for m in modules.values()):
        raise GradCamError(
            "Grad-CAM of an ensemble (SISA shards) would explain a single member; name a layer "
            "(e.g. shards.0.conv2) to explain that member"
        )
    return convs[-1]


def grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    classes: Sequence[int] | torch.Tensor,
    *,
    device: torch.device,
    layer: str | None = None,
    normalize: bool = True,
    weighting: str = "hirescam",
) -> torch.Tensor:
    """Maps ``N x H x W`` for ``classes[i]`` of ``images[i]``, each scaled to [0, 1] by its
    own maximum unless ``normalize`` is False; zero everywhere means no positive evidence.

    ``weighting="gradcam"`` weighs each channel by its spatially averaged gradient (the
    original Grad-CAM); the default ``"hirescam"`` multiplies gradient and activation
    element-wise before summing channels (HiResCAM, Draelos & Carin 2020), which stays
    faithful when a fully connected head follows the conv layers, as in ``small-cnn``:
    averaging there smears the evidence over every place the channel fires.

    The model is put in eval mode for the pass and left as it was found.
    """
    name, target = find_target_layer(model, layer)
    was_training = model.training
    model.to(device).eval()
    store: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise GradCamError(f"layer {name!r} does not output an N x C x H x W map")
        store["act"] = output
        output.register_hook(lambda grad: store.__setitem__("grad", grad))

    handle = target.register_forward_hook(keep)
    try:
        x = images.to(device).float()
        cls = torch.as_tensor(classes, dtype=torch.long, device=device).view(-1, 1)
        with torch.enable_grad():
            x.requires_grad_(False)
            model.zero_grad(set_to_none=True)
            logits = model(x)
            if "act" not in store:
                raise GradCamError(f"layer {name!r} is not used in the forward pass")
            logits.gather(1, cls).sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    act, grad = store["act"].detach(), store["grad"].detach()
    if weighting not in ("hirescam", "gradcam"):
        raise GradCamError(f"unknown weighting {weighting!r}; use hirescam or gradcam")
    weights = grad if weighting == "hirescam" else grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=tuple(images.shape[-2:]), mode="bilinear", align_corners=False)
    cam = cam[:, 0]
    if not normalize:
        return cam.cpu()
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).clamp(0, 1).cpu()


@dataclass
class CamColumn:
    """One model's maps over the panel, with what it predicted for each image."""

    title: str
    cams: torch.Tensor  # N x H x W in [0, 1]
    predictions: list[int]
    confidence: list[float]  # softmax probability of the panel image's true class


@dataclass
class CamPanel:
    images: torch.Tensor  # N x C x H x W, as the models see them
    labels: list[int]
    sample_ids: list[str]
    columns: list[CamColumn]
    layer: str


def panel_positions(labels: torch.Tensor, classes: Sequence[int], *, max_rows: int = 8) -> list[int]:
    """A fixed panel: the first test images of each affected class (same rows every time,
    so reports of successive versions are comparable), at most ``max_rows`` in all."""
    classes = list(classes)[:max_rows]
    if not classes:
        return []
    per_class = max(1, min(3, max_rows // len(classes)))
    rows: list[int] = []
    for k in classes:
        rows += torch.nonzero(labels == k).flatten()[:per_class].tolist()
    return rows


def build_panel(
    models: Sequence[tuple[str, nn.Module]],
    test: SampleSet,
    classes: Sequence[int],
    *,
    device: torch.device,
    layer: str | None = None,
    max_rows: int = 8,
) -> CamPanel:
    """Grad-CAM of each model (columns) on the panel of ``classes`` (rows), for the true class."""
    rows = panel_positions(test.labels, classes, max_rows=max_rows)
    if not rows:
        raise GradCamError(f"the test set has no images of classes {list(classes)}")
    panel = test.subset(rows)
    labels = panel.labels.tolist()
    name = find_target_layer(models[0][1], layer)[0]
    raw = [grad_cam(m, panel.images, labels, device=device, layer=layer, normalize=False) for _, m in models]
    # One scale per row (its largest value over all models), so evidence that fades after
    # unlearning shows as a fainter map, not as the same map rescaled.
    peak = torch.stack([r.flatten(1).amax(dim=1) for r in raw]).amax(dim=0).clamp_min(1e-12)
    columns = []
    for (title, model), cam in zip(models, raw):
        cams = (cam / peak.view(-1, 1, 1)).clamp(0, 1)
        with torch.no_grad():
            was = model.training
            model.eval()
            probs = model(panel.images.to(device)).float().softmax(dim=1).cpu()
            model.train(was)
        columns.append(
            CamColumn(
                title=title, cams=cams, predictions=probs.argmax(dim=1).tolist(),
                confidence=[float(probs[i, k]) for i, k in enumerate(labels)],
            )
        )
    return CamPanel(images=panel.images, labels=labels, sample_ids=list(panel.sample_ids),
                    columns=columns, layer=name)
