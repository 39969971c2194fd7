"""Registry, spec parsing, the Model wrapper, model zoo and checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from medrobust.models import Model, ModelCard, build_network, load_model, save_checkpoint
from medrobust.models.card import build_model
from medrobust.registry import Registry, parse_spec
from medrobust.seeding import derive_seed, make_generator


def test_parse_spec_types():
    assert parse_spec("pgd:eps=0.03,steps=10,norm=l2,random_start=false") == (
        "pgd",
        {"eps": 0.03, "steps": 10, "norm": "l2", "random_start": False},
    )
    assert parse_spec("deepfool") == ("deepfool", {})
    with pytest.raises(ValueError, match="key=value"):
        parse_spec("pgd:eps")


def test_registry_did_you_mean():
    reg: Registry = Registry("widget")
    reg.register("gaussian_noise")(dict)
    with pytest.raises(KeyError, match="did you mean 'gaussian_noise'"):
        reg.get("gausian_noise")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("gaussian_noise")(dict)


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "a", 1) == derive_seed(0, "a", 1)
    assert derive_seed(0, "a", 1) != derive_seed(0, "a", 2)
    a = torch.rand(3, generator=make_generator(5, "cell"))
    b = torch.rand(3, generator=make_generator(5, "cell"))
    assert torch.equal(a, b)


def test_model_wrapper_normalises_inside():
    net = nn.Identity()
    model = Model(net, bounds=(0, 1), mean=[0.5, 0.25], std=[0.5, 0.25])
    x = torch.tensor([[[[1.0]], [[0.5]]]])
    torch.testing.assert_close(model(x), torch.tensor([[[[1.0]], [[1.0]]]]))
    with pytest.raises(ValueError, match="std"):
        Model(net, mean=[0.0], std=[0.0])
    with pytest.raises(ValueError, match="bounds"):
        Model(net, bounds=(1, 0))


@pytest.mark.parametrize("arch", ["small-cnn", "densenet", "resnet", "efficientnet"])
def test_zoo_builds_small_networks(arch):
    net = build_network(arch, in_channels=3, num_classes=3).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 3)


def test_factory_spec(tmp_path, monkeypatch):
    (tmp_path / "userzoo.py").write_text(
        "import torch.nn as nn\n"
        "def build(num_classes, hidden=4):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    # a factory runs code: refused unless the caller opts in, and the refusal says how
    with pytest.raises(ValueError, match="--trust-code .* trust_code: true .* trust_code=True"):
        build_network("userzoo:build", in_channels=1, num_classes=5, hidden=7)
    net = build_network("userzoo:build", in_channels=1, num_classes=5, hidden=7, trust_code=True)
    assert net[1].out_features == 7 and net[3].out_features == 5
    with pytest.raises(ImportError, match="no attribute 'nope'"):
        build_network("userzoo:nope", in_channels=1, num_classes=5, trust_code=True)
    with pytest.raises(KeyError, match="unknown model"):
        build_network("resnett", in_channels=1, num_classes=5)


def test_checkpoint_round_trip(tmp_path):
    card = ModelCard(
        name="t", architecture="small-cnn", arch_kwargs={"width": 4}, in_channels=1, num_classes=2,
        class_names=["a", "b"], input_shape=[1, 16, 16], mean=[0.5], std=[0.2],
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(card).eval()
    save_checkpoint(model, card, tmp_path / "ckpt")
    loaded, card2 = load_model(tmp_path / "ckpt")
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert card2 == card
    assert json.loads((tmp_path / "ckpt" / "model.json").read_text())["architecture"] == "small-cnn"


def test_missing_checkpoint_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint .* not found"):
        load_model(tmp_path / "nope")


def test_network_size_is_checked_on_meta_without_drawing_random_numbers(monkeypatch):
    from medrobust.models.zoo import MODELS, check_size

    def build():
        return MODELS.build("small-cnn", in_channels=3, num_classes=3, width=4)

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    check_size("small-cnn", build, {"width": 4})  # builds on meta: no memory, no random numbers
    assert torch.equal(torch.rand(3), expected)
    net = build_network("small-cnn", in_channels=3, num_classes=3, width=4)
    n = sum(p.numel() for p in net.parameters()) + sum(b.numel() for b in net.buffers())
    monkeypatch.setenv("MEDROBUST_MAX_PARAMETERS", str(n - 1))  # one parameter fewer than it holds: refused
    with pytest.raises(ValueError, match=f"would hold {n:,} parameters .* above the limit of {n - 1:,}"):
        build_network("small-cnn", in_channels=3, num_classes=3, width=4)
    monkeypatch.setenv("MEDROBUST_MAX_PARAMETERS", str(n))
    build_network("small-cnn", in_channels=3, num_classes=3, width=4)
    monkeypatch.setenv("MEDROBUST_MAX_PARAMETERS", "lots")
    with pytest.raises(ValueError, match="MEDROBUST_MAX_PARAMETERS='lots' must be an integer"):
        build_network("small-cnn", in_channels=3, num_classes=3, width=4)
