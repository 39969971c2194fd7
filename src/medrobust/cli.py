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


def results_table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    columns = [
        ("perturbation", "perturbation", None),
        ("accuracy", "acc", 3),
        ("balanced_accuracy", "bal. acc", 3),
        ("auc", "AUC", 3),
        ("success_rate", "success", 3),
        ("l2", "median L2", 4),
        ("linf", "median Linf", 4),
        ("l0", "median L0", 0),
        ("ssim", "SSIM", 3),
        ("seconds", "time s", 1),
    ]
    for _, header, digits in columns:
        if digits is None:
            table.add_column(header, justify="left", no_wrap=True)
        else:
            table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*(fmt(row.get(key), digits or 0) if digits is not None else escape(str(row[key])) for key, _, digits in columns))
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


def main() -> None:  # pragma: no cover - console entry for `python -m medrobust`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
