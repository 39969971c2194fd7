"""The ``medrobust`` command line: each command is a few lines that call the library."""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from medrobust.registry import parse_value

app = typer.Typer(
    help="Generalizability vs robustness of medical-imaging networks (Paschali et al., MICCAI 2018).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class _Consoles:
    """Consoles made on first use, so the terminal width (COLUMNS) is read when a command runs."""

    @property
    def out(self) -> Console:
        return Console()

    @property
    def err(self) -> Console:
        return Console(stderr=True)


_consoles = _Consoles()

USER_ERRORS = (ValueError, KeyError, FileNotFoundError, TypeError, ImportError, NotADirectoryError)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a bad input into one clear error line and exit code 2 (no traceback)."""
    try:
        yield
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        _consoles.err.print(f"[bold red]error:[/] {escape(str(message))}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(code=2) from None


def parse_pairs(pairs: list[str] | None, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {pair!r} must look like key=value")
        out[key.strip()] = parse_value(value)
    return out


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=_consoles.err, show_path=False)],
    )


@app.callback()
def _startup() -> None:
    """Generalizability vs robustness of medical-imaging networks (Paschali et al., MICCAI 2018)."""
    from medrobust.allocator import tune_allocator

    tune_allocator()


@app.command("list")
def list_cmd(what: Optional[str] = typer.Argument(None, help="attacks, corruptions, models or datasets")) -> None:
    """List registered attacks, corruptions, models and datasets."""
    import medrobust

    kinds = {
        "attacks": medrobust.list_attacks,
        "corruptions": medrobust.list_corruptions,
        "models": medrobust.list_models,
        "datasets": medrobust.list_datasets,
    }
    with user_errors():
        if what is not None and what not in kinds:
            from medrobust.registry import unknown_name_message

            raise ValueError(unknown_name_message("list", what, list(kinds)))
        for kind, fn in kinds.items():
            if what in (None, kind):
                _consoles.out.print(f"[bold]{kind}[/]: " + ", ".join(fn()), highlight=False)


@app.command()
def train(
    arch: str = typer.Option("small-cnn", "--arch", help="registered model or module:function factory"),
    dataset: str = typer.Option("derm-synth", help="registered dataset"),
    data_param: list[str] = typer.Option(None, "--data-param", "-d", help="dataset parameter key=value"),
    arch_param: list[str] = typer.Option(None, "--arch-param", "-a", help="architecture parameter key=value"),
    epochs: int = typer.Option(10),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(2e-3),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
    out: Path = typer.Option(..., "--out", "-o", help="checkpoint folder to write"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train a model, keep the best validation checkpoint, write weights and a JSON model card."""
    from medrobust.train import TrainSettings, train as run_train

    setup_logging(verbose)
    with user_errors():
        settings = TrainSettings(
            architecture=arch,
            dataset=dataset,
            dataset_params=parse_pairs(data_param, "--data-param"),
            arch_kwargs=parse_pairs(arch_param, "--arch-param"),
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=device,
        )

        def show(epoch: int, row: dict[str, float]) -> None:
            _consoles.out.print(
                f"epoch {epoch:3d}  loss {row['train_loss']:.4f}  val acc {row['val_accuracy']:.3f}  "
                f"val bal-acc {row['val_balanced_accuracy']:.3f}",
                highlight=False,
            )

        _, card = run_train(settings, out, progress=show)
    test = card.metrics["test"]
    _consoles.out.print(
        f"saved {out} (best epoch {card.training['best_epoch']}): test accuracy {test['accuracy']:.3f}, "
        f"balanced accuracy {test['balanced_accuracy']:.3f}, AUC {test['auc']:.3f}",
        highlight=False,
    )


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


def results_table(title: str, rows: list[dict[str, Any]], width: int | None = None) -> Table:
    """One row per perturbation; each attack's matched-noise accuracy sits beside it ("noise acc")."""
    width = width or _consoles.out.width
    noise = {
        r["threat_matched_to"]: r["accuracy"] for r in rows if r.get("threat_matched_to") is not None
    }
    table = Table(title=title, title_justify="left")
    columns = [
        ("accuracy", "acc", 3),
        ("balanced_accuracy", "bal.acc", 3),
        ("auc", "AUC", 3),
        ("success_rate", "success", 3),
        ("noise_accuracy", "noise acc", 3),
        ("l2", "L2", 3),
        ("linf", "Linf", 4),
        ("l0", "L0", 0),
        ("ssim", "SSIM", 3),
        ("seconds", "time s", 1),
    ]
    if width < 140:
        columns = [c for c in columns if c[0] not in ("l0", "seconds", "balanced_accuracy")]
    table.add_column("perturbation", overflow="fold", ratio=1)
    for _, header, _ in columns:
        table.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        if row.get("threat_matched_to") is not None:
            continue
        values = {**row, "noise_accuracy": noise.get(row["perturbation"])}
        table.add_row(escape(str(row["perturbation"])), *(fmt(values.get(key), digits) for key, _, digits in columns))
    table.caption = "L2/Linf/L0: median perturbation size of successful attacks (of all samples for noise); noise acc: accuracy under Gaussian noise of each attack's L2 size"
    table.caption_justify = "left"
    return table


@app.command()
def evaluate(
    model: Path = typer.Option(..., "--model", "-m", help="checkpoint folder (or its model.json)"),
    dataset: Optional[str] = typer.Option(None, help="registered dataset (default: the model card's)"),
    data_param: list[str] = typer.Option(None, "--data-param", "-d", help="dataset parameter key=value"),
    split: str = typer.Option("test"),
    attack: list[str] = typer.Option(None, "--attack", help="e.g. fgsm:eps=0.01, pgd:eps=0.01,steps=10, deepfool"),
    corruption: list[str] = typer.Option(None, "--corruption", help="e.g. gaussian_noise:sigma=0.05"),
    matched_noise: bool = typer.Option(True, "--matched-noise/--no-matched-noise", help="noise of each attack's L2 size"),
    limit: Optional[int] = typer.Option(None, help="evaluate the first N samples"),
    batch_size: int = typer.Option(64),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the rows as JSON"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Clean metrics and metrics under each attack and corruption, with perturbation sizes."""
    from medrobust.data import load_dataset
    from medrobust.evaluate import evaluate as run_evaluate, parse_perturbation
    from medrobust.models import load_model

    setup_logging(verbose)
    with user_errors():
        perts = [parse_perturbation("attack", s) for s in attack or []]
        perts += [parse_perturbation("corruption", s) for s in corruption or []]
        net, card = load_model(model, device=device)
        params = parse_pairs(data_param, "--data-param")
        if dataset is None:
            dataset = card.dataset.get("name")
            params = {**card.dataset.get("params", {}), **params}
        if not dataset:
            raise ValueError("the model card names no dataset; pass --dataset")
        ds = load_dataset(dataset, split=split, **params)
        if ds.num_classes != card.num_classes:
            raise ValueError(
                f"dataset {dataset!r} has {ds.num_classes} classes but model {card.name!r} has {card.num_classes}"
            )
        result = run_evaluate(
            net, ds, perts, batch_size=batch_size, limit=limit, seed=seed, matched_noise=matched_noise, device=device
        )
    rows = result["rows"]
    n = rows[0]["n"]
    _consoles.out.print(results_table(f"{card.name} on {dataset}/{split} (n={n}, bounds {list(net.bounds)}, seed {seed})", rows))
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=2, default=str))
        _consoles.out.print(f"wrote {json_out}")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="run directory"),
    quick: bool = typer.Option(False, help="tiny models and data, for a smoke test"),
    limit: int = typer.Option(100, help="test images evaluated per model"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train (or reuse) three architectures on derm-synth and compare clean vs robust accuracy."""
    from medrobust.demo import DEMO_EPS_LINF, run_demo

    setup_logging(verbose)
    with user_errors():
        results = run_demo(out, quick=quick, limit=limit, notify=lambda m: _consoles.out.print(m, highlight=False))
    for arch, rows in results.items():
        _consoles.out.print(results_table(f"{arch} on derm-synth/test (n={rows[0]['n']})", rows))
    table = Table(title=f"Generalizability vs robustness (Linf attacks at eps={DEMO_EPS_LINF:.4f} = 2/255)", title_justify="left")
    for header in ("model", "clean", "FGSM", "PGD", "DF L2", "CW L2", "JSMA L0", "worst"):
        table.add_column(header, justify="left" if header == "model" else "right", no_wrap=True)
    for arch, rows in results.items():
        by = {r["perturbation"].split("(")[0]: r for r in rows if not r["perturbation"].startswith("matched")}
        attacks = [r for r in rows if r["kind"] == "attack" and r["threat_eps"] is not None]
        worst = min(r["accuracy"] for r in attacks) if attacks else math.nan
        table.add_row(
            arch, fmt(by["clean"]["accuracy"]), fmt(by["fgsm"]["accuracy"]), fmt(by["pgd"]["accuracy"]),
            fmt(by["deepfool"]["l2"], 3), fmt(by["cw"]["l2"], 3), fmt(by["jsma"]["l0"], 0), fmt(worst),
        )
    table.caption = (
        "clean / FGSM / PGD / worst: test accuracy; DF, CW L2 and JSMA L0: median minimal perturbation "
        "(input units; L0 in features)"
    )
    table.caption_justify = "left"
    _consoles.out.print(table)
    _consoles.out.print(f"results written to {out}/results.json")


def main() -> None:  # pragma: no cover - console entry for `python -m medrobust`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
