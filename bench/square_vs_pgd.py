"""Square (black box, 1,000 queries) vs PGD-20 (white box) at Linf 8/255 on trained small models.

Success rate over the clean-correct samples among the first 200 test images; run by hand:

    .venv/bin/python bench/square_vs_pgd.py
    PYTHONPATH=/tmp/ta .venv/bin/python bench/square_vs_pgd.py   # + torchattacks' Square as a reference

The reference column needs torchattacks in a scratch folder (``pip install --no-deps --target /tmp/ta
torchattacks``), never a dependency: it tells a weak implementation from a gap that is the attack's own.

Models: the derm demo's small-cnn (runs/demo, `make demo`) and the PneumoniaMNIST models that
bench/autoattack_reference.py trains under runs/bench-pneumonia (each skipped when absent).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

import medrobust
from medrobust.attacks import PGD, Square
from medrobust.data.base import iterate_batches

ROOT = Path(__file__).resolve().parents[1]
PNEUMONIA = {"path": str(ROOT.parent / "shared" / "data" / "pneumoniamnist.npz")}


def cases() -> list[tuple[str, Path, str, dict]]:
    out = [(f"derm {c.parent.name}", c.parent, "derm-synth", {})
           for c in sorted((ROOT / "runs" / "demo" / "models").glob("small-cnn-*/model.json"))]
    for arch in ("small-cnn", "resnet"):
        folder = ROOT / "runs" / "bench-pneumonia" / arch
        if (folder / "model.json").exists():
            out.append((f"pneumoniamnist {arch}", folder, "medmnist", PNEUMONIA))
    return out


def reference_square(model, x, y, eps: float, queries: int) -> torch.Tensor | None:
    """torchattacks' Square (Linf, margin loss, p_init 0.8) on the same samples, when it is importable."""
    try:
        import torchattacks
    except ImportError:
        return None

    class Net(torch.nn.Module):
        def forward(self, z):
            return model(z)

    attack = torchattacks.Square(Net(), norm="Linf", eps=eps, n_queries=queries, n_restarts=1, p_init=0.8,
                                 loss="margin", seed=0)
    return attack(x, y)


def main(n: int = 200, eps: float = 8 / 255, queries: int = 1000) -> None:
    torch.set_num_threads(2)
    print(f"| model | clean-correct | PGD-20 success | Square-{queries} success | reference Square success | "
          "median queries | s PGD / s Square |")
    print("|---|---|---|---|---|---|---|")
    for label, folder, dataset, params in cases():
        model, _ = medrobust.load_model(folder)
        batch = next(iterate_batches(medrobust.load_dataset(dataset, split="test", **params), n, n))
        with torch.no_grad():
            keep = model(batch.x).argmax(1) == batch.y
        x, y = batch.x[keep], batch.y[keep]

        def success(x_adv: torch.Tensor) -> float:
            with torch.no_grad():
                return float((model(x_adv).argmax(1) != y).float().mean())

        t0 = time.perf_counter()
        pgd = success(PGD(steps=20)(model, "classification", x, y, eps=eps, generator=torch.Generator().manual_seed(0)))
        t1 = time.perf_counter()
        res = Square(queries=queries).detailed(model, "classification", x, y, eps=eps, generator=torch.Generator().manual_seed(0))
        t2 = time.perf_counter()
        q = sorted(res.info["queries"])
        ref = reference_square(model, x, y, eps, queries)
        ref_text = "-" if ref is None else f"{success(ref):.3f}"
        print(f"| {label} | {len(y)} | {pgd:.3f} | {success(res.x_adv):.3f} | {ref_text} | {q[len(q) // 2]} | "
              f"{t1 - t0:.1f} / {t2 - t1:.1f} |", flush=True)


if __name__ == "__main__":
    main()
