"""Cross-check medrobust's worst case against an independent AutoAttack-style cascade (torchattacks).

A robustness number is an upper bound: it is only as good as the strongest attack tried. This script runs, on the
same models and images, medrobust's ``autoattack`` ensemble and an independent cascade written by others:
torchattacks' APGD (cross-entropy, 100 steps), then its APGD-T (targeted DLR, 100 steps, all other classes) on
the samples APGD left robust. medrobust's robust accuracy must not exceed the reference's by more than 1 point.

torchattacks' targeted DLR indexes the 3rd and 4th largest logits, which do not exist for 2- or 3-class models;
for the reference those models get constant extra logits of -1e4 (never predicted, no effect on cross-entropy),
so its formula is defined. medrobust's own DLR handles few classes itself (see medrobust.attacks.losses).

torchattacks is not a dependency. Install it in a scratch folder and run by hand:

    .venv/bin/python -m pip install --no-deps --target /tmp/ta torchattacks
    PYTHONPATH=/tmp/ta .venv/bin/python bench/autoattack_reference.py --write

Models: the derm demo's three checkpoints (runs/demo/models, made by ``make demo``) and two models trained here on
PneumoniaMNIST (../shared/data/pneumoniamnist.npz, cached under runs/bench-pneumonia).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch
from results_md import write_section
from torch import nn

import medrobust
from medrobust.attacks import PGD, AutoAttack
from medrobust.data.base import iterate_batches

ROOT = Path(__file__).resolve().parents[1]
PNEUMONIA = ROOT.parent / "shared" / "data" / "pneumoniamnist.npz"
SECTION = "## AutoAttack cross-check (bench/autoattack_reference.py)"
BEGIN, END = "<!-- section:autoattack-reference -->", "<!-- /section:autoattack-reference -->"


class Padded(nn.Module):
    """Appends constant logits of -1e4 so that the reference's targeted DLR has a 3rd and 4th logit."""

    def __init__(self, model: nn.Module, total: int) -> None:
        super().__init__()
        self.model, self.total = model, total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        if z.shape[1] >= self.total:
            return z
        return torch.cat([z, z.new_full((z.shape[0], self.total - z.shape[1]), -1e4)], dim=1)


def reference_cascade(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, k: int) -> torch.Tensor:
    """torchattacks APGD-CE then APGD-T on the samples still robust; returns the robust mask (N,)."""
    import torchattacks

    net = Padded(model, 4).eval()
    with torch.no_grad():
        robust = net(x).argmax(1) == y
    ce = torchattacks.APGD(net, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce", seed=0)
    todo = robust.nonzero().flatten()
    if todo.numel():
        with torch.no_grad():
            robust[todo] = net(ce(x[todo], y[todo])).argmax(1) == y[todo]
    t = torchattacks.APGDT(net, norm="Linf", eps=eps, steps=100, n_restarts=1, n_classes=k, seed=0)
    todo = robust.nonzero().flatten()
    if todo.numel():
        with torch.no_grad():
            robust[todo] = net(t(x[todo], y[todo])).argmax(1) == y[todo]
    return robust


def robust_mask(model, x, y, x_adv) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def derm_models() -> dict[str, Path]:
    out = {}
    for card in sorted((ROOT / "runs" / "demo" / "models").glob("*/model.json")):
        out[json.loads(card.read_text())["name"]] = card.parent
    if not out:
        sys.exit("no demo checkpoints under runs/demo/models: run `make demo` first")
    return out


def pneumonia_models() -> dict[str, Path]:
    if not PNEUMONIA.exists():
        return {}
    out = {}
    for arch, epochs in (("small-cnn", 6), ("resnet", 6)):
        folder = ROOT / "runs" / "bench-pneumonia" / arch
        if not (folder / "model.json").exists():
            settings = medrobust.TrainSettings(
                architecture=arch, dataset="medmnist", dataset_params={"path": str(PNEUMONIA)}, epochs=epochs,
                seed=0, name=arch,
            )
            medrobust.train(settings, folder)
        out[arch] = folder
    return out


def evaluate(name: str, folders: dict[str, Path], dataset, n: int, eps_list: list[float], queries: int) -> list[dict]:
    batch = next(iterate_batches(dataset, n, n))
    x, y = batch.x, batch.y
    rows = []
    for model_name, folder in folders.items():
        model, card = medrobust.load_model(folder)
        model.eval()
        with torch.no_grad():
            clean = float((model(x).argmax(1) == y).float().mean())
        for eps in eps_list:
            gen = torch.Generator().manual_seed(0)
            t0 = time.perf_counter()
            result = AutoAttack(norm="linf", queries=queries).detailed(model, "classification", x, y, eps=eps, generator=gen)
            t_ours = time.perf_counter() - t0
            ours = robust_mask(model, x, y, result.x_adv)
            pgd = robust_mask(model, x, y, PGD(steps=10)(model, "classification", x, y, eps=eps, generator=gen))
            t0 = time.perf_counter()
            ref = reference_cascade(model, x, y, eps, card.num_classes)
            t_ref = time.perf_counter() - t0
            members = {m: sum(1 for b in result.info["broken_by"] if b == m) for m in ("apgd-ce", "apgd-t", "square")}
            rows.append({
                "data": name, "model": model_name, "eps": eps, "n": n, "clean": clean,
                "pgd10": float(pgd.float().mean()), "ours": float(ours.float().mean()),
                "reference": float(ref.float().mean()),
                "ours_only": int((ours & ~ref).sum()), "ref_only": int((ref & ~ours).sum()),
                "members": members, "seconds_ours": t_ours, "seconds_ref": t_ref,
            })
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict], queries: int) -> str:
    lines = [
        SECTION, "",
        f"{date.today().isoformat()}, {platform.machine()} CPU ({torch.get_num_threads()} threads), torch "
        f"{torch.__version__}. Command: `PYTHONPATH=/tmp/ta .venv/bin/python bench/autoattack_reference.py "
        f"{' '.join(sys.argv[1:])}`.",
        "Robust accuracy under Linf attacks on the first N test images. `autoattack`: medrobust's ensemble "
        f"(APGD-CE 100 steps, APGD-T 100 steps over all other classes, Square {queries} queries, in cascade). "
        "`reference`: torchattacks 3.5.1 APGD-CE 100 steps, then APGD-T 100 steps on what is left. `PGD-10`: the "
        "attack the first release's worst case rested on. `only ours robust`: samples our ensemble leaves robust "
        "but the reference breaks. Acceptance: autoattack <= reference + 0.01.",
        "",
        "| data | model | eps | N | clean | PGD-10 | autoattack | reference | only ours robust | only ref robust "
        "| broken by APGD-CE / APGD-T / Square | s ours / s ref |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["members"]
        ok = "" if r["ours"] <= r["reference"] + 0.01 + 1e-9 else " **FAIL**"
        lines.append(
            f"| {r['data']} | {r['model']} | {r['eps'] * 255:.0f}/255 | {r['n']} | {r['clean']:.2f} | {r['pgd10']:.2f} "
            f"| {r['ours']:.2f}{ok} | {r['reference']:.2f} | {r['ours_only']} | {r['ref_only']} "
            f"| {m['apgd-ce']} / {m['apgd-t']} / {m['square']} | {r['seconds_ours']:.0f} / {r['seconds_ref']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def write(text: str) -> None:
    """Replace this script's section of bench/RESULTS.md (between its markers), keeping every other section."""
    write_section(BEGIN, END, [BEGIN, text.rstrip(), END])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    eps_list = [2 / 255, 4 / 255]
    rows = evaluate("derm-synth", derm_models(), medrobust.load_dataset("derm-synth", split="test"), args.n, eps_list,
                    args.queries)
    pneu = pneumonia_models()
    if pneu:
        data = medrobust.load_dataset("medmnist", split="test", path=str(PNEUMONIA))
        rows += evaluate("pneumoniamnist", pneu, data, args.n, eps_list, args.queries)
    text = table(rows, args.queries)
    print(text)
    if args.write:
        write(text)


if __name__ == "__main__":
    main()
