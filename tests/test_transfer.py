"""Transfer attacks: crafted on surrogate models only, evaluated on the target; spec validation of sources."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import medrobust
from medrobust.attacks import PGD, Transfer
from medrobust.attacks.transfer import LogitEnsemble
from medrobust.config import SpecError, load_config
from medrobust.models import Model


class Untouchable(nn.Module):
    """A target that fails if it is queried: a transfer attack must never call it."""

    def forward(self, x):
        raise AssertionError("the target model was queried")


@pytest.fixture(scope="module")
def toy_model_b():
    from conftest import ToyCNN, fit, make_toy

    torch.manual_seed(1)  # test-only: a second toy model with other initial weights
    return fit(ToyCNN(), *make_toy(300, seed=11), steps=150, lr=0.01)


def test_transfer_equals_the_attack_run_on_the_source(toy_model, toy_batch):
    x, y = toy_batch
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    got = Transfer(sources=[toy_model], attack="pgd", attack_params={"steps": 5})(
        Untouchable(), "classification", x, y, eps=0.2, generator=gen()
    )
    expected = PGD(steps=5)(toy_model, "classification", x, y, eps=0.2, generator=gen())
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_several_sources_attack_their_mean_logits(toy_model, toy_model_b, toy_batch):
    x, y = toy_batch
    ens = LogitEnsemble([Model(toy_model), Model(toy_model_b)])
    with torch.no_grad():
        torch.testing.assert_close(ens(x), (toy_model(x) + toy_model_b(x)) / 2)
    got = medrobust.attack("transfer", Untouchable(), x, y, eps=0.2, sources=[toy_model, toy_model_b], attack="fgsm")
    expected = medrobust.attack("fgsm", ens, x, y, eps=0.2)
    torch.testing.assert_close(got, expected)


def test_examples_transfer_between_independently_trained_models(toy_model, toy_model_b):
    from conftest import make_toy

    x, y = make_toy(60, seed=4)

    def acc(m, xa):
        with torch.no_grad():
            return float((m(xa).argmax(1) == y).float().mean())

    x_adv = medrobust.attack("transfer", toy_model, x, y, eps=0.25, sources=[toy_model_b], attack="pgd")
    assert acc(toy_model, x) > 0.95
    # crafted on model b only, the examples fool model a too, though less than a white-box attack on a
    white = medrobust.attack("pgd", toy_model, x, y, eps=0.25)
    assert acc(toy_model, x_adv) < 0.6
    assert acc(toy_model, white) <= acc(toy_model, x_adv)


def test_bad_parameters_are_clear_errors(toy_model, toy_batch):
    x, y = toy_batch
    with pytest.raises(ValueError, match="at least one source"):
        Transfer()
    with pytest.raises(ValueError, match="minimal-norm"):
        Transfer(sources=["a"], attack="deepfool")
    with pytest.raises(ValueError, match="are names"):
        Transfer(sources=["small-cnn"])(toy_model, "classification", x, y, eps=0.1)
    assert Transfer(sources=["a"], attack="pgd", attack_params={"norm": "l2"}).threat_norm == "l2"
    other_range = Model(toy_model, bounds=(0.0, 255.0))
    with pytest.raises(ValueError, match="disagree with the model's own bounds"):
        Transfer(sources=[other_range])(toy_model, "classification", x, y, eps=0.1)


def test_spec_sources_must_be_models_or_checkpoints(tmp_path):
    base = {
        "dataset": {"name": "derm-synth"},
        "models": [{"name": "a", "train": {"architecture": "small-cnn"}}, {"name": "b", "train": {"architecture": "small-cnn"}}],
    }
    ok = load_config({**base, "perturbations": [{"attack": "transfer", "strengths": [0.01], "params": {"sources": ["a"]}}]})
    p = ok.perturbations[0]
    assert p.sources == ["a"] and not p.applies_to("a") and p.applies_to("b")
    with pytest.raises(SpecError, match="neither a model of this spec"):
        load_config({**base, "perturbations": [{"attack": "transfer", "strengths": [0.01], "params": {"sources": ["c"]}}]})
    with pytest.raises(SpecError, match="no target"):
        load_config({**base, "perturbations": [{"attack": "transfer", "strengths": [0.01], "params": {"sources": ["a", "b"]}}]})


def test_a_repeated_perturbation_is_a_spec_error():
    pgd = {"attack": "pgd", "strengths": [0.01], "params": {"steps": 5}}
    spec = {"models": [{"name": "a", "train": {"architecture": "small-cnn"}}]}
    with pytest.raises(SpecError, match="perturbations 0 and 1 are the same attack 'pgd'"):
        load_config({**spec, "perturbations": [pgd, {**pgd, "strengths": [0.02]}]})
    load_config({**spec, "perturbations": [pgd, {**pgd, "params": {"steps": 6}}]})
