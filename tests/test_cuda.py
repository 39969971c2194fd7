"""Everything on a CUDA device: every attack and corruption keeps the input's device, dtype, bounds and budget and
is deterministic given a CUDA generator (with deterministic kernels, as the runner selects); CPU and CUDA agree where the algorithm is deterministic; sliding-window
attacks and whole runs work with ``device: cuda``. Skipped (with the reason) on machines without CUDA; run with
`pytest -m cuda` where a GPU is present."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from medrobust.attacks import ATTACKS
from medrobust.attacks.base import flat_norm
from medrobust.corruptions import CORRUPTIONS
from medrobust.seeding import deterministic_algorithms
from test_conformance import ATTACK_CASES, CORRUPTION_CASES, MRI_ARTIFACTS, SEG_ATTACK_CASES
from test_mri_artifacts import phantom

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]
CUDA = torch.device("cuda")


def cuda_gen(seed: int) -> torch.Generator:
    return torch.Generator(device=CUDA).manual_seed(seed)


def check_attack_output(x_adv, x, eps, norm):
    assert x_adv.device == x.device and x_adv.dtype == x.dtype and x_adv.shape == x.shape
    assert not x_adv.requires_grad
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    budget = eps * x[0].numel() if norm == "l0" else eps
    assert float(flat_norm(x_adv - x, norm).max()) <= budget + 1e-5


@pytest.mark.parametrize("name", sorted(ATTACK_CASES))
def test_classification_attack_on_cuda(name, toy_model, toy_batch):
    params, eps = ATTACK_CASES[name]
    model = copy.deepcopy(toy_model).to(CUDA)  # the session fixture stays on the CPU for the other tests
    x, y = (t.to(CUDA) for t in toy_batch)
    if name == "transfer":  # the source is the model itself, as in test_conformance
        params = {**params, "sources": [model]}
    attack = ATTACKS.build(name, **params)
    with deterministic_algorithms(CUDA):
        runs = [attack(model, "classification", x, y, eps=eps, generator=cuda_gen(7)) for _ in range(2)]
    check_attack_output(runs[0], x, eps, attack.threat_norm)
    assert torch.equal(runs[0], runs[1]), f"{name} is not deterministic on CUDA given the generator"
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
        adv = float((model(runs[0]).argmax(1) == y).float().mean())
    assert adv < clean - 0.3, f"{name} on CUDA: accuracy {clean:.2f} -> {adv:.2f}"


@pytest.mark.parametrize("name", sorted(SEG_ATTACK_CASES))
def test_segmentation_attack_on_cuda(name, toy_segmenter, toy_seg_batch):
    from medrobust.tasks import get_task

    params, eps = SEG_ATTACK_CASES[name]
    task = get_task("segmentation")
    model = copy.deepcopy(toy_segmenter).to(CUDA)
    x, y = (t.to(CUDA) for t in toy_seg_batch)
    if name == "transfer":
        params = {**params, "sources": [model]}
    attack = ATTACKS.build(name, **params)
    with deterministic_algorithms(CUDA):
        runs = [attack(model, task, x, y, eps=eps, generator=cuda_gen(7)) for _ in range(2)]
    check_attack_output(runs[0], x, eps, attack.threat_norm)
    assert torch.equal(runs[0], runs[1])
    with torch.no_grad():
        clean = float(task.score(model(x), y).mean())
        adv = float(task.score(model(runs[0]), y).mean())
    assert adv < clean - 0.3, f"{name} on CUDA: Dice {clean:.2f} -> {adv:.2f}"


@pytest.mark.parametrize("name", ["fgsm", "deepfool"])
def test_deterministic_attacks_agree_between_cpu_and_cuda(name, toy_model, toy_batch):
    # FGSM and DeepFool draw nothing at random: CUDA must land where the CPU lands, up to float rounding (an
    # element whose gradient is ~0 may take the other sign, so compare the success pattern and the sizes).
    params, eps = ATTACK_CASES[name]
    attack = ATTACKS.build(name, **params)
    x, y = toy_batch
    cpu = attack(toy_model, "classification", x, y, eps=eps, generator=torch.Generator().manual_seed(0))
    gpu_model = copy.deepcopy(toy_model).to(CUDA)
    gpu = attack(gpu_model, "classification", x.to(CUDA), y.to(CUDA), eps=eps, generator=cuda_gen(0)).cpu()
    with torch.no_grad():
        pred_cpu, pred_gpu = gpu_model(cpu.to(CUDA)).argmax(1).cpu(), gpu_model(gpu.to(CUDA)).argmax(1).cpu()
    assert float((pred_cpu == pred_gpu).float().mean()) >= 0.95
    torch.testing.assert_close(flat_norm(gpu - x, "l2"), flat_norm(cpu - x, "l2"), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("name", sorted(CORRUPTION_CASES))
def test_corruption_on_cuda(name, toy_batch):
    x = toy_batch[0].to(CUDA)
    params = {k: (v.to(CUDA) if torch.is_tensor(v) else v) for k, v in CORRUPTION_CASES[name].items()}
    corruption = CORRUPTIONS.build(name, **params)
    a, b = corruption(x, generator=cuda_gen(3)), corruption(x, generator=cuda_gen(3))
    assert a.device == x.device and a.dtype == x.dtype and a.shape == x.shape
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert float((a - x).abs().max()) > 0


@pytest.mark.parametrize("name", sorted(MRI_ARTIFACTS))
@pytest.mark.parametrize("shape", [(2, 1, 40, 40), (1, 1, 24, 28, 20)])
def test_mri_artifact_on_cuda(name, shape):
    # MONAI and TorchIO transforms run where they run; the artifact must hand back a tensor on the input's device,
    # equal to what the CPU gives for the same recorded draw.
    x = phantom(shape).to(CUDA)
    cls = CORRUPTIONS.get(name)
    corruption = cls().with_strength(cls.severities[-1])
    a, b = corruption(x, generator=cuda_gen(5)), corruption(x, generator=cuda_gen(5))
    assert a.device == x.device and a.dtype == x.dtype and a.shape == x.shape
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert float((a - x).abs().max()) > 0


def test_sliding_window_pgd_on_cuda_stays_in_budget_and_bounds():
    from test_sliding_window import tiny_3d_net, volume

    import medrobust
    from medrobust.models import Model
    from medrobust.models.sliding import SlidingWindow

    x, y = (t.to(CUDA) for t in volume())
    model = Model(SlidingWindow(tiny_3d_net().to(CUDA), (12, 12, 12)), bounds=(0.0, 1.0))
    for norm, eps in (("linf", 0.03), ("l2", 0.5)):
        x_adv = medrobust.attack("pgd", model, x, y, task="segmentation", eps=eps, steps=3, norm=norm,
                                 generator=cuda_gen(1))
        assert x_adv.device == x.device
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
        assert float(flat_norm(x_adv - x, norm).max()) <= eps + 1e-5
        assert float((x_adv - x).abs().max()) > 0


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_whole_run_on_cuda_matches_cpu_clean_scores(task, tmp_path):
    from medrobust.config import load_config
    from medrobust.runner import run_experiment

    if task == "classification":
        base = {
            "dataset": {"name": "derm-synth", "params": {"size": 16, "n": 60}},
            "models": [{"name": "tiny", "train": {"architecture": "small-cnn", "arch_kwargs": {"width": 4},
                                                  "epochs": 2}}],
            "perturbations": [
                {"attack": "pgd", "strengths": [0.01], "params": {"steps": 3}},
                {"attack": "deepfool", "strengths": [0.2], "params": {"steps": 10}},
                {"corruption": "gaussian_noise", "strengths": [0.05]},
            ],
        }
        metric = "accuracy"
    else:
        base = {
            "dataset": {"name": "mni152-tissue", "split": "test"},
            "models": [{"name": "tiny-unet", "train": {
                "architecture": "unet", "arch_kwargs": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
                "epochs": 1, "batch_size": 8, "lr": 0.01,
            }}],
            "perturbations": [
                {"corruption": "rician_noise", "strengths": [0.1]},
                {"attack": "segpgd", "strengths": [0.03], "params": {"steps": 3}},
                {"attack": "dag", "strengths": [1.0], "params": {"steps": 10, "gamma": 0.2}},
            ],
        }
        metric = "dice"
    rows, raw = {}, {}
    for run, device in (("cpu", "cpu"), ("cuda", "cuda"), ("cuda-again", "cuda")):
        spec = load_config({"seed": 1, "batch_size": 4, "limit": 8, "device": device, **base})
        run_experiment(spec, tmp_path / run, quiet=True)
        raw[run] = (tmp_path / run / "summary.json").read_bytes()
        rows[run] = {(r["perturbation"], r["strength"], r["metric"]): r["value"] for r in json.loads(raw[run])}
    assert rows["cpu"].keys() == rows["cuda"].keys()
    # two runs of the same spec on CUDA (training included) give the same summary, byte for byte
    assert raw["cuda"] == raw["cuda-again"]
    # trained on each device from the same seed: the same model up to float rounding, so close clean scores
    assert rows["cuda"][("clean", 0.0, metric)] == pytest.approx(rows["cpu"][("clean", 0.0, metric)], abs=0.15)


@pytest.mark.parametrize("defense", [
    {"kind": "adversarial", "method": "pgd", "eps": 0.03, "steps": 2},
    {"kind": "adversarial", "method": "trades", "eps": 0.03, "steps": 2},
    {"kind": "jacobian", "weight": 0.01},
    {"kind": "adversarial", "method": "fast", "eps": 0.03, "select": "robust"},
])
def test_robust_training_on_cuda_is_deterministic(defense, tmp_path):
    from medrobust.train import TrainSettings, train

    settings = TrainSettings(architecture="small-cnn", arch_kwargs={"width": 4}, dataset="derm-synth",
                             dataset_params={"size": 16, "n": 60}, epochs=2, seed=0, device="cuda", defense=defense)
    with deterministic_algorithms("cuda"):
        a, card = train(settings, tmp_path / "a")
        b, _ = train(settings)
    assert next(a.parameters()).device.type == "cuda"
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)
    assert card.training["defense"]["kind"] == defense["kind"]
