"""One conformance test over every registered attack and corruption (as timm and scikit-learn do).

Each must keep shape, dtype and device, stay inside bounds and budget, be deterministic given the generator,
and lower the accuracy of a small trained model. A newly registered algorithm must get an entry below.
"""

from __future__ import annotations

import pytest
import torch

from medrobust.attacks import ATTACKS
from medrobust.attacks.base import flat_norm
from medrobust.corruptions import CORRUPTIONS

# Parameters that make each algorithm strong enough to hurt the toy model, and fast.
ATTACK_CASES = {
    "fgsm": ({}, 0.3),
    "pgd": ({"steps": 10}, 0.3),
    "deepfool": ({"steps": 30}, 2.0),
    "fmn": ({"steps": 30}, 2.0),
    "jsma": ({"gamma": 0.3}, 0.3),
    "cw": ({"steps": 40, "binary_search_steps": 3, "lr": 0.05, "initial_const": 1.0}, 3.0),
    "apgd": ({"steps": 20}, 0.3),
    "square": ({"queries": 300}, 0.3),
    "fab": ({"steps": 20}, 0.3),
    "autoattack": ({"steps": 20, "queries": 300}, 0.3),
    # the sources are filled in by the test: the model itself (tests/test_transfer.py checks real transfer)
    "transfer": ({"attack": "pgd", "attack_params": {"steps": 10}}, 0.3),
}
# Segmentation-only attacks, run on the toy segmenter (FGSM and PGD are also run there below).
SEG_ATTACK_CASES = {
    "fgsm": ({}, 0.3),
    "pgd": ({"steps": 10}, 0.3),
    "segpgd": ({"steps": 10}, 0.3),
    "dag": ({"steps": 60}, 3.0),
    "asma": ({"steps": 60}, 3.0),
    "apgd": ({"steps": 20}, 0.3),
    "square": ({"queries": 300}, 0.3),
    "autoattack": ({"steps": 10, "queries": 100}, 0.3),
    "transfer": ({"attack": "pgd", "attack_params": {"steps": 10}}, 0.3),
}
CORRUPTION_CASES = {
    "gaussian_noise": {"sigma": 0.6},
    "salt_pepper": {"amount": 0.6},
    "gaussian_blur": {"sigma": 20.0},  # the toy classes differ only at low frequency
    "contrast": {"factor": 0.0},
    "matched_noise": {"reference": torch.full((30,), 8.0), "norm": "l2"},
    "rician_noise": {"sigma": 0.6},
    "spike": {"intensity": 5.0},
    "gibbs": {"alpha": 0.9},
}
# MRI artifacts act on whole slices and volumes; some (ghosting, motion, bias field, downsampling) cannot fool the toy
# 8x8 model, so tests/test_mri_artifacts.py checks each of them (shape, dtype, bounds, determinism, replay, graded
# severity, physics). Those that do hurt the toy model also have a case above.
MRI_ARTIFACTS = {"rician_noise", "bias_field", "ghosting", "motion", "spike", "gibbs", "downsample"}


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_every_registered_algorithm_has_a_case():
    assert set(ATTACKS.names()) == set(ATTACK_CASES) | set(SEG_ATTACK_CASES)
    assert set(CORRUPTIONS.names()) == set(CORRUPTION_CASES) | MRI_ARTIFACTS


@pytest.mark.parametrize("name", sorted(SEG_ATTACK_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_segmentation_attack_conformance(name, dtype, toy_segmenter, toy_seg_batch):
    from medrobust.tasks import get_task

    params, eps = SEG_ATTACK_CASES[name]
    task = get_task("segmentation")
    x, y = toy_seg_batch
    x = x.to(dtype)
    model = toy_segmenter.to(dtype)
    if name == "transfer":
        params = {**params, "sources": [model]}
    attack = ATTACKS.build(name, **params)
    try:
        runs = [attack(model, task, x, y, eps=eps, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
        x_adv = runs[0]
        assert x_adv.shape == x.shape and x_adv.dtype == dtype and x_adv.device == x.device
        assert not x_adv.requires_grad
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
        assert float(flat_norm(x_adv - x, attack.threat_norm).max()) <= eps + 1e-6
        assert torch.equal(runs[0], runs[1])
        with torch.no_grad():
            clean = float(task.score(model(x), y).mean())
            adv = float(task.score(model(x_adv), y).mean())
        assert adv < clean - 0.3, f"{name}: Dice {clean:.2f} -> {adv:.2f}"
    finally:
        toy_segmenter.float()  # a session fixture: back to float32


@pytest.mark.parametrize("name", sorted(set(ATTACK_CASES)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attack_conformance(name, dtype, toy_model, toy_batch):
    params, eps = ATTACK_CASES[name]
    model = toy_model.to(dtype)
    x, y = toy_batch
    x = x.to(dtype)
    if name == "transfer":
        params = {**params, "sources": [model]}
    attack = ATTACKS.build(name, **params)
    try:  # the model is a module-wide fixture: back to float32 whatever happens
        clean = accuracy(model, x, y)
        runs = [attack(model, "classification", x, y, eps=eps, generator=torch.Generator().manual_seed(7))
                for _ in range(2)]
        adv = accuracy(model, runs[0], y)
    finally:
        model.float()
    x_adv = runs[0]
    assert x_adv.shape == x.shape and x_adv.dtype == dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    norm = attack.threat_norm
    size = flat_norm(x_adv - x, norm)
    budget = eps * x[0].numel() if norm == "l0" else eps
    assert float(size.max()) <= budget + 1e-6, f"{name} exceeds its {norm} budget"
    assert torch.equal(runs[0], runs[1]), f"{name} is not deterministic given the generator"
    assert adv < clean - 0.3, f"{name}: accuracy {clean:.2f} -> {adv:.2f}"


@pytest.mark.parametrize("name", sorted(CORRUPTION_CASES))
def test_corruption_conformance(name, toy_model, toy_batch):
    x, y = toy_batch
    corruption = CORRUPTIONS.build(name, **CORRUPTION_CASES[name])
    a = corruption(x, generator=torch.Generator().manual_seed(3))
    b = corruption(x, generator=torch.Generator().manual_seed(3))
    assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert accuracy(toy_model, a, y) < accuracy(toy_model, x, y) - 0.2


def test_every_attack_declares_its_norm():
    """No norm is assumed: each registered attack states the norm its eps is measured in."""
    from dataclasses import dataclass

    from medrobust.attacks.base import Attack

    for name in ATTACKS.names():
        params = dict((ATTACK_CASES.get(name) or SEG_ATTACK_CASES[name])[0])
        if name == "transfer":  # its norm is that of the attack it runs on the sources
            params["sources"] = [torch.nn.Identity()]
        assert ATTACKS.build(name, **params).threat_norm in ("linf", "l2", "l0"), name

    @dataclass(frozen=True)
    class Normless(Attack):
        def run(self, model, task, x, y, *, eps, generator):
            return x

    with pytest.raises(TypeError, match="Normless declares no norm"):
        Normless().threat_norm


@pytest.mark.parametrize("task_name", ["classification", "segmentation"])
def test_every_attack_restores_the_model_and_returns_the_input_at_eps_zero(
    task_name, toy_model, toy_batch, toy_segmenter, toy_seg_batch
):
    """For each attack defined for the task: eps = 0 returns the input unchanged; the model comes back in the
    mode and with the parameter gradients it went in with (here: training mode, gradients on)."""
    cases = ATTACK_CASES if task_name == "classification" else SEG_ATTACK_CASES
    model, (x, y) = (toy_model, toy_batch) if task_name == "classification" else (toy_segmenter, toy_seg_batch)
    saved = (model.training, [p.requires_grad for p in model.parameters()])  # a session fixture: put it back
    for name, (params, eps) in sorted(cases.items()):
        if name == "transfer":
            params = {**params, "sources": [model]}
        attack = ATTACKS.build(name, **params)
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        x_adv = attack(model, task_name, x, y, eps=0.0, generator=torch.Generator().manual_seed(0))
        assert torch.equal(x_adv, x), f"{name}: eps = 0 changed the input"
        attack(model, task_name, x, y, eps=eps, generator=torch.Generator().manual_seed(0))
        assert model.training, f"{name} left the model in eval mode"
        assert all(p.requires_grad for p in model.parameters()), f"{name} left parameter gradients off"
    model.train(saved[0])
    for p, flag in zip(model.parameters(), saved[1]):
        p.requires_grad_(flag)


def test_sweep_runs_a_minimal_attack_once_and_clips_it_to_each_strength(toy_model, toy_batch):
    """Attack.sweep: a minimal attack's strengths are clips of one run (so they nest), equal to calling it with
    eps; a budget attack gets one run per strength with that strength's generator."""
    from medrobust.attacks import DeepFool

    x, y = toy_batch
    calls = []

    def gen(eps):
        calls.append(eps)
        return torch.Generator().manual_seed(0)

    attack = DeepFool(steps=20)
    swept = dict(attack.sweep(toy_model, "classification", x, y, [0.05, 0.2], gen))
    assert calls == [None]  # one run for every strength
    for eps, result in swept.items():
        direct = attack(toy_model, "classification", x, y, eps=eps, generator=torch.Generator().manual_seed(0))
        assert torch.equal(result.x_adv, direct)
        assert float(flat_norm(result.x_adv - x, "l2").max()) <= eps + 1e-6
    calls.clear()
    budget = ATTACKS.build("pgd", steps=5)
    out = list(budget.sweep(toy_model, "classification", x, y, [0.01, 0.03], gen))
    assert calls == [0.01, 0.03] and [eps for eps, _ in out] == [0.01, 0.03]
