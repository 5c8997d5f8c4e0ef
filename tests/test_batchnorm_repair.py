"""BatchNorm statistics after subtraction: invalid ones are re-estimated on retained data.

Subtracting the recorded changes of some steps from a moving average can leave a negative
variance (seen on resnet18/digits and ResNet-50/Fashion-MNIST, whose outputs became NaN).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.test_amnesiac import CPU, amnesiac, train_digits
from unlearning_core.data import load_dataset
from unlearning_core.forget import ForgetSpec
from unlearning_core.methods.batchnorm import invalid_batchnorm, repair_batchnorm
from unlearning_core.store import LocalBlobStore


def bn_first_model() -> nn.Module:
    return nn.Sequential(nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(64, 10))


def test_an_invalid_variance_is_reestimated_from_retained_samples_only() -> None:
    retain = load_dataset("digits").train
    model = bn_first_model()
    bn = model[0]
    bn.running_var.fill_(-0.5)
    bn.running_mean.fill_(3.0)
    assert invalid_batchnorm(model) == ["0"]
    done = repair_batchnorm(model, retain, mode="auto", device=CPU, batch_size=len(retain))
    assert done == {"bn_repair": "auto", "bn_invalid_layers": 1, "bn_reestimated_on": len(retain)}
    assert invalid_batchnorm(model) == []
    # One batch of all retained samples: the statistics are exactly theirs.
    pixels = retain.images.flatten()
    assert torch.allclose(bn.running_mean, pixels.mean().reshape(1), atol=1e-4)
    assert torch.allclose(bn.running_var, pixels.var().reshape(1), rtol=1e-3)
    assert not model.training


def test_auto_leaves_valid_statistics_alone_and_never_leaves_invalid_ones() -> None:
    retain = load_dataset("digits").train
    model = bn_first_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert repair_batchnorm(model, retain, mode="auto", device=CPU, batch_size=64)["bn_reestimated_on"] == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model[0].running_var.fill_(-1.0)
    repair_batchnorm(model, retain, mode="never", device=CPU, batch_size=64)
    assert invalid_batchnorm(model) == ["0"]
    assert repair_batchnorm(model, retain, mode="always", device=CPU, batch_size=64)["bn_reestimated_on"] > 0
    assert invalid_batchnorm(model) == []
    with pytest.raises(ValueError, match="bn repair must be one of"):
        repair_batchnorm(model, retain, mode="sometimes", device=CPU, batch_size=64)


def test_amnesiac_outcome_has_valid_batchnorm_and_says_what_it_did(tmp_path) -> None:
    run = train_digits(LocalBlobStore(tmp_path), "bnrun", model="test-bn-cnn", epochs=2, concentrate=(3, 0.2))
    for mode in ("auto", "always"):
        done = amnesiac(run, ForgetSpec(classes=(3,)), partial=False, publish=False, bn_repair=mode)
        details = done.outcome.details
        assert details["bn_repair"] == mode
        assert invalid_batchnorm(done.outcome.model) == []
        if mode == "always":
            assert details["bn_reestimated_on"] > 0
