"""Robust training: the Jacobian penalty against a brute-force Jacobian, adversarial examples inside the eps ball
and the bounds (with eps warm-up), ensemble adversarial training drawing from every source, TRADES, settings
checked up front, determinism, the model card, the runner's cache key and the report's model table."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from medrobust.cli import app
from medrobust.config import load_config
from medrobust.defenses import DefenseSpec, DefenseTrainer, jacobian_norm_estimate
from medrobust.models import load_model
from medrobust.models.wrapper import Model
from medrobust.runner import run_experiment
from medrobust.tasks import get_task
from medrobust.train import TrainSettings, train

EPS = 0.05
DERM = {"size": 16, "n": 60}


def tiny_net(seed: int = 0, out: int = 3) -> Model:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, out))
    return Model(net.double(), bounds=(0.0, 1.0))


def batch(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 2, 2, generator=g, dtype=torch.float64)
    return x, torch.arange(n) % 3


def brute_force_jacobian_norm(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """||d model(x_i) / d x_i||_F^2 per sample, from the full Jacobian (torch.func.jacrev, one sample at a time)."""
    norms = []
    for xi in x:
        jac = torch.func.jacrev(lambda v: model(v.unsqueeze(0))[0])(xi)
        norms.append(jac.pow(2).sum())
    return torch.stack(norms)


def test_jacobian_penalty_and_its_gradient_match_the_brute_force_frobenius_norm():
    model, (x, _) = tiny_net(), batch()
    exact = brute_force_jacobian_norm(model, x)
    params = list(model.parameters())
    (exact_grad,) = torch.autograd.grad(exact.mean(), params[0])
    xr = x.clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    estimate = jacobian_norm_estimate(model, xr, 4000, gen)
    (grad,) = torch.autograd.grad(estimate.mean(), params[0])
    # unbiased over projections: 4000 draws bring the estimate within a few percent
    torch.testing.assert_close(estimate, exact, rtol=0.06, atol=0)
    assert float((grad - exact_grad).norm() / exact_grad.norm()) < 0.06
    # one projection is unbiased too: its mean over many independent batches converges to the same value
    one = torch.stack([jacobian_norm_estimate(model, xr, 1, gen).detach() for _ in range(3000)]).mean(0)
    torch.testing.assert_close(one, exact, rtol=0.1, atol=0)


def test_jacobian_penalty_is_exact_for_one_output():
    """With one output, v = +-1 and ||v^T J||^2 = ||J||^2 for every draw."""
    model, (x, _) = tiny_net(out=1), batch()
    xr = x.clone().requires_grad_(True)
    est = jacobian_norm_estimate(model, xr, 1, torch.Generator().manual_seed(3))
    torch.testing.assert_close(est.detach(), brute_force_jacobian_norm(model, x))


def training_inputs(model: nn.Module) -> list[torch.Tensor]:
    """Inputs of every forward pass the model makes in training mode (the batch the loss is computed on)."""
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()) if m.training else None)
    return seen


@pytest.mark.parametrize("method", ["pgd", "fast"])
def test_adversarial_training_uses_examples_inside_the_ball_and_the_bounds(method):
    model, (x, y) = tiny_net(), batch(8)
    x = x.clamp(0.02, 0.98)
    x[0] = 0.0  # a sample on the lower bound: its example must stay inside [0, 1]
    spec = DefenseSpec(kind="adversarial", method=method, eps=EPS, steps=3, share=0.5, warmup_epochs=2)
    trainer = DefenseTrainer(spec, get_task("classification"), seed=0)
    seen = training_inputs(model)
    model.train()
    for progress, eps in ((1.0, EPS / 2), (2.5, EPS)):  # warm-up: half of eps after one of two epochs
        seen.clear()
        loss = trainer.loss(model, x, y, progress, (1, 0))
        assert loss.requires_grad and math.isfinite(float(loss.detach()))
        (used,) = seen
        n = 4  # share 0.5 of 8
        delta = used[:n] - x[:n]
        assert float(delta.abs().max()) <= eps + 1e-12 and float(delta.abs().max()) > 0.5 * eps
        assert float(used.min()) >= 0.0 and float(used.max()) <= 1.0
        torch.testing.assert_close(used[n:], x[n:])  # the rest of the batch stays clean
        assert model.training  # crafting in attack mode restores training mode


def test_ensemble_adversarial_training_draws_examples_from_each_source():
    model, (x, y) = tiny_net(0), batch(6)
    sources = {"a": tiny_net(1), "b": tiny_net(2)}
    calls = {name: 0 for name in sources}
    for name, src in sources.items():
        src.register_forward_hook(lambda m, args, out, name=name: calls.__setitem__(name, calls[name] + 1))
    spec = DefenseSpec(kind="ensemble_adversarial", method="fast", eps=EPS, sources=["a", "b"])
    trainer = DefenseTrainer(spec, get_task("classification"), seed=0, sources=sources)
    seen = training_inputs(model)
    model.train()
    examples = []
    for b in range(6):
        before = dict(calls)
        seen.clear()
        trainer.loss(model, x, y, 1.0, (1, b))
        examples.append(seen[-1])
        crafted_on = [name for name in sources if calls[name] > before[name]]
        # batches take turns: the model itself, then a, then b
        assert crafted_on == ([] if b % 3 == 0 else [["a", "b"][b % 3 - 1]])
        assert float((seen[-1] - x).abs().max()) <= EPS + 1e-12
    assert trainer.used == {"self": 2, "a": 2, "b": 2}
    # the examples crafted on a and on b differ (they come from different models)
    assert not torch.equal(examples[1], examples[2])


def test_trades_is_the_clean_loss_plus_beta_times_the_kl_to_the_perturbed_output():
    model, (x, y) = tiny_net(), batch(6)
    task = get_task("classification")
    model.train()
    clean = task.training_loss()(model(x), y)
    zero = DefenseTrainer(DefenseSpec(kind="adversarial", method="trades", eps=EPS, beta=0.0), task, seed=0)
    torch.testing.assert_close(zero.loss(model, x, y, 1.0, (1, 0)), clean)
    six = DefenseTrainer(DefenseSpec(kind="adversarial", method="trades", eps=EPS, beta=6.0), task, seed=0)
    assert float(six.loss(model, x, y, 1.0, (1, 0)).detach()) > float(clean.detach()) + 1e-6


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kind": "adversarial"}, "needs eps > 0"),
        ({"kind": "ensemble_adversarial", "eps": 0.01}, "needs sources"),
        ({"kind": "adversarial", "eps": 0.01, "attack": "pgdd"}, "did you mean 'pgd'"),
        ({"kind": "adversarial", "eps": 0.01, "attack": "deepfool"}, "minimal attack"),
        ({"kind": "jacobian", "sources": ["x"]}, "sources are for defense ensemble_adversarial"),
        ({"kind": "adversarial", "eps": 0.01, "methd": "pgd"}, "methd"),
        ({"kind": "jacobian", "select": "robust"}, "select: robust"),
    ],
)
def test_bad_defense_settings_fail_before_training(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainSettings(dataset="derm-synth", defense=settings)


def test_training_with_a_defense_is_deterministic_and_recorded_in_the_card(tmp_path):
    defense = {"kind": "adversarial", "method": "fast", "eps": 0.03, "warmup_epochs": 1, "select": "robust"}
    settings = TrainSettings(architecture="small-cnn", arch_kwargs={"width": 4}, dataset="derm-synth",
                             dataset_params=DERM, epochs=2, seed=3, defense=defense)
    a, card = train(settings, tmp_path / "a")
    b, _ = train(settings)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert card.training["defense"]["kind"] == "adversarial" and card.training["defense"]["eps"] == 0.03
    assert card.training["defense_description"] == "FAST adversarial (FGSM with random start, Linf eps 0.03)"
    assert all("val_robust" in row for row in card.training["history"])
    best = max(card.training["history"], key=lambda r: r["val_robust"])  # selected by robust validation
    assert card.training["best_epoch"] == best["epoch"]


def test_a_spec_trains_defended_models_and_the_report_shows_how(tmp_path):
    spec = load_config({
        "seed": 0, "batch_size": 10, "limit": 10, "dataset": {"name": "derm-synth", "params": DERM},
        "models": [
            {"name": "std", "train": {"architecture": "small-cnn", "arch_kwargs": {"width": 4}, "epochs": 1}},
            {"name": "ens", "train": {"architecture": "small-cnn", "arch_kwargs": {"width": 4}, "epochs": 3,
                                      "defense": {"kind": "ensemble_adversarial", "method": "fast", "eps": 0.03,
                                                  "sources": ["std"]}}},
        ],
        "perturbations": [{"attack": "fgsm", "strengths": [0.03]}],
    })
    run_experiment(spec, tmp_path / "run", quiet=True)
    folders = sorted((tmp_path / "run" / "models").iterdir())
    assert len(folders) == 2  # the defense is part of the cache key: two folders
    cards = {json.loads((f / "model.json").read_text())["name"]: json.loads((f / "model.json").read_text())
             for f in folders}
    ens = cards["ens"]["training"]
    # one batch per epoch (60 samples, batch size 64); batches take turns over the epochs: self, std, self
    assert set(ens["defense_sources"]) == {"std"} and ens["defense_batches_per_source"] == {"self": 2, "std": 1}
    from medrobust.report import build_report

    html = build_report(tmp_path / "run")[0].read_text()
    assert "<td>standard</td>" in html
    assert "ensemble adversarial (FGSM with random start, Linf eps 0.03, sources std)" in html
    # run again: both models are reused, the source first
    again = run_experiment(spec, tmp_path / "run", quiet=True)
    assert again.cells_run == 0


def test_train_command_takes_a_defense(tmp_path):
    out = tmp_path / "adv"
    result = CliRunner().invoke(app, ["train", "--arch", "small-cnn", "-a", "width=4", "-d", "size=16", "-d", "n=60",
                                      "--epochs", "1", "--defense", "adversarial", "-D", "eps=0.02", "-D", "steps=2",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    _, card = load_model(out)
    assert card.training["defense"]["steps"] == 2 and card.training["defense"]["kind"] == "adversarial"
    bad = CliRunner().invoke(app, ["train", "--defense", "adversarial", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "needs eps > 0" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "bad").exists()


def test_segmentation_unet_adversarial_training_with_segpgd(tmp_path):
    settings = TrainSettings(architecture="unet", arch_kwargs={"channels": [4, 8], "strides": [2], "num_res_units": 0},
                             dataset="mni152-tissue", epochs=1, batch_size=16, lr=0.01, seed=0,
                             defense={"kind": "adversarial", "attack": "segpgd", "eps": 0.03, "steps": 2})
    model, card = train(settings, tmp_path / "unet")
    assert card.task == "segmentation" and card.training["defense"]["attack"] == "segpgd"
    assert 0.0 <= card.metrics["test"]["dice"] <= 1.0


def test_the_cache_key_includes_the_defense_and_keeps_standard_models_where_they_were(tmp_path):
    from medrobust.cells import digest, trained_folder

    def spec(defense):
        train_block = {"architecture": "small-cnn", "epochs": 2, **({"defense": defense} if defense else {})}
        return load_config({"dataset": {"name": "derm-synth"}, "models": [{"name": "m", "train": train_block}],
                            "perturbations": [{"attack": "fgsm", "strengths": [0.01]}]})

    plain, adv = spec(None), spec({"kind": "adversarial", "eps": 0.01})
    stronger = spec({"kind": "adversarial", "eps": 0.02})
    folders = {trained_folder(s, s.models[0], tmp_path).name for s in (plain, adv, stronger)}
    assert len(folders) == 3
    # a standard model's folder is the one it had before defenses existed (settings without a defense key)
    m = plain.models[0]
    before = digest([{k: v for k, v in m.train.model_dump(mode="json").items() if k != "defense"},
                     plain.dataset.model_dump(mode="json"), plain.seed])
    assert trained_folder(plain, m, tmp_path).name == f"m-{before}"
    # ensemble sources' weights are part of it too
    a = trained_folder(adv, adv.models[0], tmp_path, {"s": "aaaa"})
    b = trained_folder(adv, adv.models[0], tmp_path, {"s": "bbbb"})
    assert a != b
