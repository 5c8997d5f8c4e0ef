"""NegGrad+, SCRUB, SalUn and l1-sparse (plain and layer-wise partial), with real torch
training on the digits dataset (small CNN, CPU): registered with their own options,
refusing bad ones by name, forgetting a class while keeping the rest, deterministic for a
seed, honouring ``--recovery-steps``, through ``pipeline.apply_method`` (as the service
calls it) and through ``lethe unlearn --method NAME``."""

from __future__ import annotations

import importlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearning_core.artifacts import open_artifact
from unlearning_core.data import load_dataset
from unlearning_core.errors import MethodError
from unlearning_core.forget import ForgetSpec
from unlearning_core.methods import OptionError, method_catalog, method_names, validate_options
from unlearning_core.methods.base import SINGLE_MODEL_TRAINING, get_method
from unlearning_core.methods.l1_sparse import l1_norm
from unlearning_core.methods.salun import forget_gradients, saliency_mask
from unlearning_core.methods.scrub import distill_kl, schedule
from unlearning_core.metrics import accuracy, collect_outputs
from unlearning_core.pipeline import apply_method, unlearn
from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, TrainingSpec
from unlearning_core.runs.train import train_run
from unlearning_core.store import LocalBlobStore

CPU = torch.device("cpu")
CLASS3 = ForgetSpec(classes=(3,))
PLAIN = ("neggrad-plus", "scrub", "salun", "l1-sparse")
PARTIAL = tuple(f"partial-{m}" for m in PLAIN)
METHODS = PLAIN + PARTIAL
#: The options each method runs with in the class-forgetting case: the defaults, except
#: partial l1-sparse, whose scaled steps (1% of the lr on the first layer) need a stronger
#: l1 pressure to forget a class in the default 60 steps.
OPTIONS: dict[str, dict[str, object]] = {m: {} for m in METHODS}
OPTIONS["partial-l1-sparse"] = {"gamma": 0.03}
#: Bounds of the class-forgetting case (digits small-cnn, class 3: original forget
#: accuracy ~0.94, retained ~0.997).
FORGET_MAX = 0.1  # forget accuracy after unlearning at most this ...
FORGET_DROP = 0.8  # ... and at least this far below the original's
RETAIN_MIN = 0.88  # retained accuracy at least this
RECOVERY = 30  # --recovery-steps of the recovery runs
#: The recovery runs: the partial variants share their base method's recovery code path.
RECOVERED = [m for m in METHODS if not m.startswith("partial-")]

OWN_OPTIONS = {
    "neggrad-plus": {
        "steps": 50,
        "lr": None,
        "batch_size": None,
        "target_forget_acc": None,
        "alpha": 0.95,
    },
    "scrub": {
        "steps": 15,
        "lr": None,
        "batch_size": None,
        "epochs": 4,
        "max_epochs": 3,
        "max_steps": None,
        "temperature": 4.0,
        "alpha": 1.0,
        "gamma": 1.0,
    },
    "salun": {"steps": 20, "lr": None, "batch_size": None, "threshold": 0.5, "mix_retain": 0.75},
    "l1-sparse": {"steps": 60, "lr": None, "batch_size": None, "gamma": 0.01},
}


def train_digits(
    root: Path, run_id: str, *, model: str, epochs: int, weight_decay: float = 0.0
) -> RecordedRun:
    return train_run(
        LocalBlobStore(root),
        run_id=run_id,
        dataset=load_dataset("digits"),
        dataset_spec=DatasetSpec(spec="digits"),
        model_name=model,
        training=TrainingSpec(
            epochs=epochs, batch_size=32, lr=0.05, momentum=0.9, weight_decay=weight_decay, seed=0
        ),
        recording=RecordingSpec(mode="none", prune_first=0.99, prune_last=0.5),
        device=CPU,
    )


def candidate(
    run: RecordedRun,
    method: str,
    forget: ForgetSpec = CLASS3,
    device: torch.device = CPU,
    **options,
):
    """The method's outcome through ``pipeline.apply_method``, as the service calls it."""
    return apply_method(
        run.store,
        run_id=run.run_id,
        method=method,
        forget=forget,
        method_options=options,
        device=device,
        publish=False,
    ).outcome


def original_state(run: RecordedRun) -> dict[str, torch.Tensor]:
    return run.load_weights(run.spec.trained_weights)


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> RecordedRun:
    """A digits small CNN trained with ``plain`` (nothing recorded)."""
    return train_digits(tmp_path_factory.mktemp("strong"), "strong", model="small-cnn", epochs=5)


@pytest.fixture(scope="module")
def original_acc(plain_run: RecordedRun) -> dict[str, float]:
    data = plain_run.dataset()
    model = plain_run.model_with(original_state(plain_run))
    labels = data.train.labels.numpy()
    forget, keep = np.flatnonzero(labels == 3), np.flatnonzero(labels != 3)
    return {
        "forget": accuracy(collect_outputs(model, data.train.subset(forget), device=CPU)),
        "retain": accuracy(collect_outputs(model, data.train.subset(keep), device=CPU)),
    }


@pytest.fixture(scope="module")
def results(plain_run: RecordedRun, original_acc: dict[str, float]) -> dict[tuple[str, int], dict]:
    """Each method forgetting class 3 (pipeline.unlearn: apply_method + the report), without
    and with a recovery fine-tune."""
    out = {
        (m, r): unlearn(
            plain_run.store,
            run_id=plain_run.run_id,
            method=m,
            forget=CLASS3,
            method_options={**OPTIONS[m], "recovery_steps": r},
            device=CPU,
            publish=False,
        )
        for m in METHODS
        for r in ((0, RECOVERY) if m in RECOVERED else (0,))
    }
    print(
        f"\ndigits small-cnn, forget class 3: original forget {original_acc['forget']:.3f} "
        f"retain {original_acc['retain']:.3f}"
    )
    for (m, r), res in out.items():
        print(
            f"  {m:<20} recovery {r:>2}: forget {res['forget_acc']:.3f} retain {res['retain_acc']:.3f} "
            f"test {res['test_acc']:.3f} steps {res['steps']} unlearn {res['unlearn_seconds']:.3f}s "
            f"recovery {res['recovery_seconds']:.3f}s"
        )
    return out


# -- registry and options --------------------------------------------------------------------


def test_registered_with_their_own_options() -> None:
    catalog = {m["name"]: m for m in method_catalog()}
    for name in METHODS:
        assert name in method_names()
        method = get_method(name)
        assert method.guarantee == "approximate" and method.trained_with == SINGLE_MODEL_TRAINING
        assert method.summary and method.__doc__ is not None
        for trained in SINGLE_MODEL_TRAINING:  # plain included: nothing recorded is needed
            method.check_artifact(trained, "x")
        with pytest.raises(MethodError, match="trained with --method sisa"):
            method.check_artifact("sisa", "x")
        own = OWN_OPTIONS[name.removeprefix("partial-")]
        expected = {"recovery_steps": 0, "seed": 0, **own}
        if name.startswith("partial-"):
            expected |= {"prune_first": None, "prune_last": None}
        listed = {o["name"]: o["default"] for o in catalog[name]["options"]}
        assert listed == expected, name
        assert validate_options(name, None).model_dump() == expected
        assert all(o["description"] for o in catalog[name]["options"])
    # the docstrings cite the papers
    for name, cite in (
        ("neggrad-plus", "Kurmanji"),
        ("scrub", "Kurmanji"),
        ("salun", "Fan"),
        ("l1-sparse", "Jia"),
    ):
        text = importlib.import_module(type(get_method(name)).__module__).__doc__ or ""
        assert cite in text and "Guarantee" in text and "Trained with" in text, name


@pytest.mark.parametrize(
    ("method", "options", "needles"),
    [
        ("neggrad-plus", {"alpha": 1.0}, ["'alpha'", "less than 1"]),
        ("neggrad-plus", {"alpha": 0}, ["'alpha'", "greater than 0"]),
        ("partial-neggrad-plus", {"target_forget_acc": 2}, ["'target_forget_acc'"]),
        ("scrub", {"temperature": 0}, ["'temperature'", "greater than 0"]),
        ("scrub", {"epochs": 0}, ["'epochs'"]),
        ("scrub", {"max_steps": 0}, ["'max_steps'"]),
        ("partial-scrub", {"gamma": -1}, ["'gamma'"]),
        ("salun", {"threshold": 0}, ["'threshold'", "greater than 0"]),
        ("salun", {"threshold": 1.5}, ["'threshold'"]),
        ("partial-salun", {"mix_retain": 1.0}, ["'mix_retain'"]),
        ("l1-sparse", {"gamma": 0}, ["'gamma'"]),
        ("l1-sparse", {"gamma": "lots"}, ["'gamma'", "'lots'"]),
        ("l1-sparse", {"steps": 0}, ["'steps'"]),
        ("l1-sparse", {"prune_first": 0.9}, ["'prune_first'", "partial-l1-sparse"]),
        ("salun", {"temperature": 2}, ["'temperature'", "scrub"]),
    ],
)
def test_bad_options_are_refused_naming_them(
    method: str, options: dict, needles: list[str]
) -> None:
    with pytest.raises(OptionError) as err:
        validate_options(method, options)
    for needle in needles:
        assert needle in str(err.value), str(err.value)
    assert method in str(err.value) and err.value.options == tuple(options)


def test_bad_options_stop_apply_method_before_anything_runs(plain_run: RecordedRun) -> None:
    with pytest.raises(MethodError, match="'threshold'"):
        candidate(plain_run, "salun", threshold=0)
    with pytest.raises(MethodError, match="'alpha'"):
        candidate(plain_run, "neggrad-plus", alpha=2)


# -- forgetting a class ------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_forgets_the_class_and_keeps_the_rest(method: str, results, original_acc) -> None:
    res = results[method, 0]
    assert res["guarantee"] == "approximate" and res["method"] == method
    assert res["original_forget_acc"] == pytest.approx(original_acc["forget"])
    assert original_acc["forget"] > 0.9 and original_acc["retain"] > 0.95
    assert res["forget_acc"] <= FORGET_MAX, res["forget_acc"]
    assert res["forget_acc"] <= original_acc["forget"] - FORGET_DROP
    assert res["per_class_acc"]["3"] <= 0.2
    assert res["retain_acc"] >= RETAIN_MIN, res["retain_acc"]
    assert res["test_acc"] >= 0.75  # a model retrained without class 3 shows ~0.87
    # the weights moved, in every layer that the step reaches
    assert res["steps"] > 0 and not res["diverged"]
    assert all(d["original"] > 0 for d in res["layer_distance"].values()), res["layer_distance"]


@pytest.mark.parametrize("method", RECOVERED)
def test_recovery_steps_are_honoured_and_timed_apart(method: str, results) -> None:
    plain, healed = results[method, 0], results[method, RECOVERY]
    assert plain["recovery_seconds"] == 0.0 and plain["method_options"]["recovery_steps"] == 0
    assert (
        healed["recovery_seconds"] > 0.0 and healed["method_options"]["recovery_steps"] == RECOVERY
    )
    assert healed["unlearn_seconds"] > 0.0
    # the unlearning itself is the same; the recovery fine-tune on retained data follows it
    assert healed["steps"] == plain["steps"]
    # 30 recovery steps must not cost more than 2 points of retain accuracy. The margin is what
    # the same seeded run moves between CPUs: SalUn's recovered retain accuracy read 0.957
    # on an Intel Xeon against its plain run's 0.974, and passed a 1-point margin on an AMD EPYC.
    assert healed["retain_acc"] >= min(plain["retain_acc"], 0.97) - 0.02
    assert healed["forget_acc"] <= 0.2  # the recovery sees no sample of class 3


def test_partial_variants_move_the_first_layer_less(results) -> None:
    for plain in PLAIN:
        partial = f"partial-{plain}"
        full, part = results[plain, 0], results[partial, 0]
        assert list(full["layer_distance"]) == ["conv1", "conv2", "fc1", "head"]
        assert (
            part["layer_distance"]["conv1"]["original"]
            < 0.5 * full["layer_distance"]["conv1"]["original"]
        )
        assert part["layer_step_scale"]["conv1"] == pytest.approx(0.01)
        assert part["layer_step_scale"]["head"] == pytest.approx(0.5)
        assert (part["prune_first"], part["prune_last"]) == (0.99, 0.5)
        assert set(full["layer_step_scale"].values()) == {1.0}


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_for_a_seed(method: str, plain_run: RecordedRun) -> None:
    first = candidate(plain_run, method, **OPTIONS[method])
    again = candidate(plain_run, method, **OPTIONS[method])
    other = candidate(plain_run, method, **OPTIONS[method], seed=1)
    a, b, c = first.model.state_dict(), again.model.state_dict(), other.model.state_dict()
    assert same_state(a, b)
    assert not same_state(a, c)
    assert not same_state(a, original_state(plain_run))  # it changed the weights
    assert first.changed and first.details == again.details


# -- each method's own mechanics ----------------------------------------------------------------


def test_neggrad_plus_stops_at_its_target(plain_run: RecordedRun, results) -> None:
    default = results["neggrad-plus", 0]
    assert default["target_source"] == "class" and default["target_forget_acc"] == 0.0
    assert default["target_reached"] and default["stopped_early"] and default["steps"] < 50
    assert default["alpha"] == 0.95
    half = candidate(plain_run, "neggrad-plus", target_forget_acc=0.5).details
    assert half["target_source"] == "option" and half["target_reached"]
    assert 1 <= half["steps"] < default["steps"]
    # a few samples, not a class: the target is the model's test accuracy
    few = ForgetSpec(sample_ids=tuple(str(i) for i in range(30)))
    assert candidate(plain_run, "neggrad-plus", few, steps=2).details["target_source"] == "test_acc"


def test_scrub_runs_its_schedule_of_max_and_min_steps(plain_run: RecordedRun, results) -> None:
    assert schedule(3, 2, 2, 3) == [True, True, False, False, False] * 2 + [False] * 3
    assert schedule(2, 0, 5, 1) == [False, False]
    res = results["scrub", 0]
    per_pass = math.ceil(int((plain_run.dataset().train.labels == 3).sum()) / 32)
    assert res["max_steps_per_epoch"] == per_pass and res["min_steps_per_epoch"] == 15
    assert res["max_steps_taken"] == 3 * per_pass and res["min_steps_taken"] == 4 * 15
    assert res["steps"] == 3 * per_pass + 4 * 15
    capped = candidate(plain_run, "scrub", epochs=2, max_epochs=5, max_steps=2, steps=3).details
    assert capped["max_epochs"] == 2 and capped["steps"] == 2 * 2 + 2 * 3
    logits = torch.randn(8, 10)
    assert float(distill_kl(logits, logits, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_kl(logits, torch.randn(8, 10), 4.0)) > 0.0


def test_salun_moves_only_salient_weights(tmp_path: Path) -> None:
    """On a run trained with weight decay: even decay leaves the frozen weights alone."""
    run = train_digits(tmp_path, "wd", model="mlp", epochs=2, weight_decay=5e-4)
    original = original_state(run)
    out = candidate(run, "salun", threshold=0.3)
    assert out.details["salient_share"] == pytest.approx(0.3, abs=1e-4)
    model = run.model_with(original)
    forget = run.dataset().train.subset(run.dataset().train.positions_of_class(3))
    masks = saliency_mask(forget_gradients(model, forget, batch_size=32, device=CPU), 0.3)
    assert sum(int(m.sum()) for m in masks.values()) == out.details["salient_weights"]
    state = out.model.state_dict()
    moved = 0
    for name, mask in masks.items():
        frozen = mask == 0
        assert torch.equal(state[name][frozen], original[name][frozen]), name
        moved += int((state[name] != original[name]).sum())
    assert 0 < moved <= out.details["salient_weights"]
    # every weight salient: plain random-label fine-tuning with retained data
    assert candidate(run, "salun", threshold=1.0, steps=2).details["salient_share"] == 1.0


def test_l1_sparse_penalty_shrinks_the_weights(plain_run: RecordedRun) -> None:
    @torch.no_grad()
    def norm(model: torch.nn.Module) -> float:
        return float(l1_norm(list(model.parameters())))

    weak = candidate(plain_run, "l1-sparse", gamma=1e-8, steps=30)
    strong = candidate(plain_run, "l1-sparse", gamma=0.05, steps=30)
    original = norm(plain_run.model_with(original_state(plain_run)))
    assert norm(strong.model) < norm(weak.model) and norm(strong.model) < original
    assert strong.details["gamma"] == 0.05


def test_methods_need_retained_data(tmp_path: Path) -> None:
    """Forgetting every training sample leaves nothing to learn from: a clear error."""
    run = train_digits(tmp_path, "all", model="mlp", epochs=1)
    everything = ForgetSpec(classes=tuple(range(10)))
    for method in ("neggrad-plus", "scrub", "l1-sparse"):
        with pytest.raises(MethodError, match="needs retained data"):
            candidate(run, method, everything)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda(plain_run: RecordedRun) -> None:
    cuda = torch.device("cuda")
    data = plain_run.dataset()
    forget = data.train.subset(data.train.positions_of_class(3))
    for method in METHODS:
        out = candidate(plain_run, method, device=cuda, **OPTIONS[method])
        assert all(v.device.type == "cpu" for v in out.model.state_dict().values())
        assert accuracy(collect_outputs(out.model, forget, device=cuda)) <= 0.2, method
        again = candidate(plain_run, method, device=cuda, **OPTIONS[method])
        assert out.details["steps"] == again.details["steps"]


# -- the CLI -------------------------------------------------------------------------------------


def last_json(proc) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small digits MLP trained with ``plain`` (what ``lethe train`` makes by default)."""
    root = tmp_path_factory.mktemp("strong-cli")
    train_digits(root, "cli", model="mlp", epochs=2)
    return root


def test_lethe_methods_lists_them_with_their_options(lethe_main) -> None:  # type: ignore[no-untyped-def]
    listed = {m["name"]: m for m in last_json(lethe_main("methods", "--json"))["methods"]}
    for name in METHODS:
        names = [o["name"] for o in listed[name]["options"]]
        assert set(OWN_OPTIONS[name.removeprefix("partial-")]) <= set(names), name
        assert listed[name]["guarantee"] == "approximate"
        assert listed[name]["trained_with"] == ["plain", "amnesiac", "partial-amnesiac"]
    table = lethe_main("methods").stdout
    assert all(name in table for name in METHODS) and "temperature" in table


@pytest.mark.parametrize(
    ("method", "option"),
    [
        ("neggrad-plus", "alpha=0.9"),
        ("scrub", "temperature=2"),
        ("salun", "threshold=0.4"),
        ("l1-sparse", "gamma=0.02"),
        ("partial-neggrad-plus", "steps=60"),
        ("partial-scrub", "max_steps=4"),
        ("partial-salun", "mix_retain=0.5"),
        ("partial-l1-sparse", "gamma=0.03"),
    ],
)
def test_lethe_unlearn_publishes_a_version(  # type: ignore[no-untyped-def]
    method: str, option: str, cli_run: Path, tmp_path: Path, lethe_main
) -> None:
    store = Path(shutil.copytree(cli_run, tmp_path / "store"))
    out = last_json(
        lethe_main(
            "unlearn",
            "--store",
            str(store),
            "--run-id",
            "cli",
            "--method",
            method,
            "--forget-class",
            "3",
            "--recovery-steps",
            "5",
            "--option",
            option,
            "--device",
            "cpu",
            "--json",
        )
    )
    name, value = option.split("=")
    assert out["method"] == method and out["version"] == 1 and out["new_version"]
    assert out["method_options"]["recovery_steps"] == 5 and out["method_options"][
        name
    ] == json.loads(value)
    assert out["recovery_seconds"] > 0 and out["guarantee"] == "approximate"
    assert out["forget_acc"] <= out["original_forget_acc"] - 0.5, out["forget_acc"]
    assert out["retain_acc"] >= 0.85, out["retain_acc"]
    run = open_artifact(LocalBlobStore(store), "cli")
    head = run.ledger().head
    assert head.version == 1 and head.method == method
    assert not same_state(run.load_weights(head.weights), original_state(run))


def test_lethe_unlearn_refuses_a_bad_option(cli_run: Path, lethe_main) -> None:  # type: ignore[no-untyped-def]
    proc = lethe_main(
        "unlearn",
        "--store",
        str(cli_run),
        "--run-id",
        "cli",
        "--method",
        "scrub",
        "--forget-class",
        "3",
        "--option",
        "temperature=0",
        "--device",
        "cpu",
    )
    err = " ".join(proc.stderr.replace("│", " ").split())
    assert proc.returncode == 2 and "'temperature'" in err and "scrub" in err, err
    assert not (cli_run / "runs" / "cli" / "weights" / "v0001.safetensors").exists()
