"""The ``medrobust`` command line: each command is a few lines that call the library."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from medrobust.registry import parse_value

#: the command-line parser's own error (an option of the wrong type, a missing or unknown option)
_UsageError: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


@contextmanager
def _one_line_usage() -> Iterator[None]:
    """A usage error of the parser (``--limit abc``) as one line and exit code 2, like every other bad input;
    the parser's own format is a usage block and a box of several lines."""
    try:
        yield
    except _UsageError as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # `medrobust` alone: the help, as the parser shows it
            raise
        ctx = getattr(err, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = " ".join(getattr(err, "format_message", err.__str__)().split())
        _consoles.err.print(f"error: {message}{hint}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(code=2) from None


class _Group(TyperGroup):
    """The command group, with the parser's usage errors as one line (see :func:`_one_line_usage`)."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _one_line_usage():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _one_line_usage():
            return super().invoke(ctx)


app = typer.Typer(
    cls=_Group,
    help="Generalizability vs robustness of medical-imaging networks (Paschali et al., MICCAI 2018).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class _Consoles:
    """Consoles made on first use, so the terminal width (COLUMNS) is read when a command runs."""

    @property
    def out(self) -> Console:
        return self._make(stderr=False)

    @property
    def err(self) -> Console:
        return self._make(stderr=True)

    @staticmethod
    def _make(stderr: bool) -> Console:
        import os
        import sys

        stream = sys.stderr if stderr else sys.stdout
        # into a log or CI (not a terminal, no COLUMNS): long lines are not wrapped at Rich's default 80 columns
        wide = not os.environ.get("COLUMNS") and not (hasattr(stream, "isatty") and stream.isatty())
        return Console(stderr=stderr, width=LOG_WIDTH if wide else None)


#: the width of output that goes to a file or pipe instead of a terminal
LOG_WIDTH = 200

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


def _notify(message: str) -> None:
    """Progress lines of a run; they carry user names, so they are printed as plain text, never as markup."""
    _consoles.err.print(message, highlight=False, markup=False)


def parse_pairs(pairs: list[str] | None, what: str) -> dict[str, Any]:
    """``key=value`` options as a dict; a key given twice is an error (the first value would be lost)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{what} {pair!r} must look like key=value")
        if key in out:
            raise ValueError(f"{what} {key} is given twice ({key}={out[key]!r} and {pair!r}); give it once")
        out[key] = parse_value(value)
    return out


def _option_error(err: Any, options: dict[str, str]) -> str:
    """A pydantic ValidationError of command-line options as one line: the option, what was expected, the value."""
    from medrobust.registry import error_line

    return error_line(err, lambda path: options.get(path, path))


def set_threads(threads: int | None) -> None:
    """``--threads``: torch's CPU threads for this process (results depend on it in the last bits)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads {threads} must be >= 1")
        import torch

        torch.set_num_threads(threads)


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
def list_cmd(what: str | None = typer.Argument(None, help="attacks, corruptions, models or datasets")) -> None:
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
def describe(
    kind: str = typer.Argument(..., help="attack, corruption, model or dataset"),
    name: str = typer.Argument(..., help="a registered name (see `medrobust list`)"),
) -> None:
    """The parameters of a registered attack, corruption, model or dataset, with their types and defaults."""
    from medrobust.attacks import ATTACKS
    from medrobust.corruptions import CORRUPTIONS
    from medrobust.data import DATASETS
    from medrobust.models.zoo import MODELS
    from medrobust.registry import Registry

    registries: dict[str, Registry[Any]] = {
        "attack": ATTACKS,
        "corruption": CORRUPTIONS,
        "model": MODELS,
        "dataset": DATASETS,
    }
    with user_errors():
        if kind.rstrip("s") not in registries:
            from medrobust.registry import unknown_name_message

            raise ValueError(unknown_name_message("kind", kind, list(registries)))
        summary, rows = registries[kind.rstrip("s")].describe(name)
    table = Table(title=escape(f"{kind.rstrip('s')} {name}"), title_justify="left", caption=escape(summary))
    table.caption_justify = "left"
    for column in ("parameter", "type", "default"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(escape(v) for v in row))
    _consoles.out.print(table)


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
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's)"),
    out: Path = typer.Option(..., "--out", "-o", help="checkpoint folder to write"),
    defense: str = typer.Option(
        "none", help="robust training: none, adversarial, ensemble_adversarial or jacobian (see --defense-param)"
    ),
    defense_param: list[str] = typer.Option(
        None,
        "--defense-param",
        "-D",
        help="defense setting key=value, e.g. eps=0.0078, method=pgd|fast|trades, steps=7, warmup_epochs=2, "
        "sources=[a,b] (checkpoint folders), weight=0.01, select=robust",
    ),
    trust_code: bool = typer.Option(False, "--trust-code", help="allow module:function architectures (they run code)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train a model, keep the best validation checkpoint, write weights and a JSON model card."""
    from medrobust.seeding import deterministic_algorithms
    from medrobust.train import TrainSettings, epoch_line
    from medrobust.train import train as run_train

    setup_logging(verbose)
    with user_errors():
        from medrobust.files import check_output_folder

        check_output_folder(out)  # before the training, not after it
        set_threads(threads)
        defense_spec = {"kind": defense, **parse_pairs(defense_param, "--defense-param")}
        _check_defense(defense_spec)
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
            trust_code=trust_code,
            defense=defense_spec,
        )
        sources = {}
        if settings.defense["sources"]:
            from medrobust.cells import file_digest
            from medrobust.models import load_model

            for folder in settings.defense["sources"]:
                net, card_ = load_model(folder, device=device, trust_code=trust_code)
                path = Path(folder) if Path(folder).is_dir() else Path(folder).parent
                sources[folder] = (net, file_digest(path / card_.weights))

        def show(epoch: int, row: dict[str, float]) -> None:
            _consoles.out.print(epoch_line(settings.name or arch, row), highlight=False)

        with deterministic_algorithms(device):
            _, card = run_train(settings, out, progress=show, sources=sources)
    test = ", ".join(f"{k} {v:.3f}" for k, v in card.metrics["test"].items())
    _consoles.out.print(f"saved {out} (best epoch {card.training['best_epoch']}): test {test}", highlight=False)


def _check_defense(spec: dict[str, Any]) -> None:
    """``--defense`` and ``--defense-param`` checked with the option that set each bad value named."""
    from pydantic import ValidationError

    from medrobust.defenses import DefenseSpec

    try:
        DefenseSpec.model_validate(spec)
    except ValidationError as err:
        raise ValueError(
            _option_error(err, {key: "--defense" if key == "kind" else f"--defense-param {key}" for key in spec})
        ) from None


def _check_seed(seed: int) -> None:
    from medrobust.types import SEED_MAX

    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"--seed {seed} must be an integer in [0, {SEED_MAX}]")


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


def results_table(title: str, rows: list[dict[str, Any]], width: int | None = None, metric: str = "accuracy") -> Table:
    """One row per perturbation; each attack's matched-noise score sits beside it ("noise"). Columns: the task's
    score first, then whichever of the other metrics the rows have."""
    width = width or _consoles.out.width
    noise = {r["threat_matched_to"]: r.get(metric) for r in rows if r.get("threat_matched_to") is not None}
    table = Table(title=title, title_justify="left")
    columns = [
        (metric, {"accuracy": "acc", "dice": "Dice"}.get(metric, metric), 3),
        ("balanced_accuracy", "bal.acc", 3),
        ("auc", "AUC", 3),
        ("success_rate", "success", 3),
        ("dice_drop", "Dice drop", 3),
        ("flip_rate", "flip rate", 3),
        ("noise", f"noise {'acc' if metric == 'accuracy' else metric}", 3),
        ("l2", "L2", 3),
        ("linf", "Linf", 4),
        ("l0", "L0", 0),
        ("ssim", "SSIM", 3),
        ("seconds", "time s", 1),
    ]
    present = {k for r in rows for k in r} | ({"noise"} if noise else set())
    columns = [c for c in columns if c[0] in present]
    # segmentation: Dice of each structure, clean and under every perturbation
    structures = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith("dice:")]
    columns[1:1] = [(k, f"Dice {k.split(':', 1)[1]}", 3) for k in structures]
    if width < 140:
        columns = [c for c in columns if c[0] not in ("l0", "seconds", "balanced_accuracy")]
    table.add_column("perturbation", overflow="fold", ratio=1)
    for _, header, _ in columns:
        table.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        if row.get("threat_matched_to") is not None:
            continue
        values = {**row, "noise": noise.get(row["perturbation"])}
        table.add_row(escape(str(row["perturbation"])), *(fmt(values.get(key), digits) for key, _, digits in columns))
    table.caption = (
        "L2/Linf/L0: median perturbation size of successful attacks (of all samples for noise and for models "
        f"that decide per pixel); noise: {metric} under Gaussian noise of each attack's per-sample L2 size"
    )
    table.caption_justify = "left"
    return table


@app.command()
def evaluate(
    model: Path = typer.Option(..., "--model", "-m", help="checkpoint folder (or its model.json)"),
    dataset: str | None = typer.Option(None, help="registered dataset (default: the model card's)"),
    data_param: list[str] = typer.Option(None, "--data-param", "-d", help="dataset parameter key=value"),
    split: str = typer.Option("test"),
    attack: list[str] = typer.Option(None, "--attack", help="e.g. fgsm:eps=0.01, pgd:eps=0.01,steps=10, deepfool"),
    corruption: list[str] = typer.Option(None, "--corruption", help="e.g. gaussian_noise:sigma=0.05"),
    matched_noise: bool = typer.Option(
        True, "--matched-noise/--no-matched-noise", help="noise of each attack's L2 size"
    ),
    limit: int | None = typer.Option(None, help="evaluate the first N samples"),
    batch_size: int = typer.Option(64),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's)"),
    json_out: Path | None = typer.Option(
        None, "--json", help="also write the rows as JSON (standard JSON: null where a value is missing)"
    ),
    trust_code: bool = typer.Option(False, "--trust-code", help="allow module:function architectures (they run code)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Clean metrics and metrics under each attack and corruption, with perturbation sizes."""
    from medrobust.data import load_dataset
    from medrobust.evaluate import evaluate as run_evaluate
    from medrobust.evaluate import parse_perturbation
    from medrobust.models import load_model
    from medrobust.seeding import deterministic_algorithms
    from medrobust.tasks import get_task

    setup_logging(verbose)
    with user_errors():
        from medrobust.types import check_device

        check_device(device)
        _check_seed(seed)
        if json_out is not None:
            from medrobust.files import check_output_file

            check_output_file(json_out)  # before the work, not after it
        set_threads(threads)
        perts = [parse_perturbation("attack", s) for s in attack or []]
        perts += [parse_perturbation("corruption", s) for s in corruption or []]
        from medrobust.attacks import capabilities

        if any(p.kind == "attack" and getattr(capabilities(p.name), "needs_sources", False) for p in perts):
            raise ValueError(
                "--attack transfer: a transfer attack crafts its examples on other models, and `medrobust evaluate` "
                "loads one; run a spec instead (medrobust run), whose transfer attack names its sources: "
                "perturbations: [{attack: transfer, strengths: [...], params: {sources: [checkpoint folder]}}]"
            )
        net, card = load_model(model, device=device, trust_code=trust_code)
        params = parse_pairs(data_param, "--data-param")
        if dataset is None:
            dataset = card.dataset.get("name")
            params = {**card.dataset.get("params", {}), **params}
        if not dataset:
            raise ValueError("the model card names no dataset; pass --dataset")
        ds = load_dataset(dataset, split=split, **params)
        from medrobust.models.compat import check_fit, probe

        check_fit(card.name, card, ds, dataset, _notify)  # the same checks as `medrobust run`
        probe(net, ds, f"model {card.name!r}", dataset, device, card.input_shape)
        with deterministic_algorithms(device):
            result = run_evaluate(
                net,
                ds,
                perts,
                batch_size=batch_size,
                limit=limit,
                seed=seed,
                matched_noise=matched_noise,
                device=device,
                name=card.name,
            )
    rows = result.rows
    n = rows[0]["n"]
    title = escape(f"{card.name} on {dataset}/{split} (n={n}, bounds {list(net.bounds)}, seed {seed})")
    _consoles.out.print(results_table(title, rows, metric=get_task(ds.task).metric))
    if json_out is not None:
        from medrobust.files import write_json

        write_json(json_out, rows, indent=2, default=str)
        _consoles.out.print(f"wrote {json_out}")


# summary metrics of CLEVER (medrobust.results.clever_rows): a perturbation size, never a row of a score table
CLEVER_METRICS = ("clever", "clever_flagged")


def robustness_table(
    summary: list[dict[str, Any]],
    reference: dict[str, float],
    norms: dict[str, str],
    order: list[str] | None = None,
    metric: str = "accuracy",
) -> Table:
    """Generalizability vs robustness: clean accuracy next to accuracy under each perturbation at the
    reference strength of its norm, and the per-sample worst case over attacks. CLEVER scores are sizes, not
    scores: they are left to :func:`clever_table`."""
    value = {(r["model"], r["perturbation"], r["strength"], r["metric"]): r["value"] for r in summary}
    models = order or list(dict.fromkeys(r["model"] for r in summary))
    clever = {r["perturbation"] for r in summary if r["metric"] in CLEVER_METRICS}
    perts = [
        p
        for p in dict.fromkeys(r["perturbation"] for r in summary)
        if p != "clean" and not p.startswith("matched") and p not in clever
    ]
    labels = list(norms)
    perts.sort(key=lambda p: (p.startswith("worst_case"), labels.index(p) if p in labels else -1))

    def ref_strength(pert: str) -> float | None:
        norm = norms.get(pert) or (pert[len("worst_case[") : -1] if pert.startswith("worst_case[") else None)
        attack_norms = {v for v in norms.values() if v}
        if pert == "worst_case" and len(attack_norms) == 1:
            norm = next(iter(attack_norms))
        strengths = sorted({r["strength"] for r in summary if r["perturbation"] == pert})
        if norm in reference:
            return min(strengths, key=lambda s: abs(s - reference[norm]))
        return strengths[len(strengths) // 2] if strengths else None

    table = Table(title=f"Generalizability vs robustness ({metric})", title_justify="left")
    table.add_column("perturbation @ strength", overflow="fold")
    for m in models:
        table.add_column(escape(m), justify="right", no_wrap=True)
    table.add_row("clean", *(fmt(value.get((m, "clean", 0.0, metric))) for m in models))
    for p in perts:
        s = ref_strength(p)
        cells = []
        for m in models:
            acc = value.get((m, p, s, metric))
            noise = value.get((m, f"matched_noise[{p}]", s, metric))
            cells.append(fmt(acc) + (f" ({fmt(noise)})" if noise is not None else ""))
        table.add_row(escape(f"{p} @ {s:.4g}"), *cells)
    table.caption = f"(in brackets: {metric} under Gaussian noise of the attack's per-sample L2 size)"
    table.caption_justify = "left"
    return table


def _interval(row: dict[str, Any] | None, digits: int = 3) -> str:
    """A summary row's 95% interval as "[low, high]", "-" where it has none."""
    low, high = (None, None) if row is None else (row.get("ci_low"), row.get("ci_high"))
    if "-" in (fmt(low), fmt(high)):
        return "-"
    return f"[{fmt(low, digits)}, {fmt(high, digits)}]"


def clever_table(summary: list[dict[str, Any]], order: list[str] | None = None) -> Table | None:
    """CLEVER (Weng et al., ICLR 2018), one row per model and norm: the median estimated minimal perturbation
    (input units) over the clean-correct samples with its 95% interval, and the share of those whose fit was
    degenerate. None when the summary has no CLEVER rows."""
    rows = {(r["model"], r["perturbation"], r["metric"]): r for r in summary if r["metric"] in CLEVER_METRICS}
    if not rows:
        return None
    labels = list(dict.fromkeys(p for _, p, _ in rows))
    models = order or list(dict.fromkeys(m for m, _, _ in rows))
    table = Table(title="CLEVER: estimated minimal perturbation (a size, not a score)", title_justify="left")
    table.add_column("model", overflow="fold")
    table.add_column("estimate", overflow="fold")
    for header in ("median", "95% interval", "degenerate fits", "n"):
        table.add_column(header, justify="right", no_wrap=True)
    for label in labels:
        for m in models:
            median, flagged = rows.get((m, label, "clever")), rows.get((m, label, "clever_flagged"))
            if median is None and flagged is None:
                continue
            n = (median or flagged or {}).get("n")
            share = None if flagged is None else flagged.get("value")
            shown = fmt(share)
            if shown != "-":
                shown = f"{share:.0%}" + (f" ({round(share * n)}/{n})" if n else "")
            table.add_row(
                escape(m),
                escape(label),
                fmt(None if median is None else median.get("value"), 4),
                _interval(median, 4),
                shown,
                fmt(n),
            )
    table.caption = (
        "median over the clean-correct samples (input units, the estimate's norm), bootstrap 95% interval; "
        "degenerate fits: samples whose extreme-value fit failed and fell back to the observed maximum"
    )
    table.caption_justify = "left"
    return table


def _print_run(result: Any, spec: Any) -> None:
    from medrobust.cells import perturbation_labels

    norms = {label: p.threat_norm for label, p in zip(perturbation_labels(spec.perturbations), spec.perturbations)}
    metric = "dice" if any(r["metric"] == "dice" for r in result.summary) else "accuracy"
    order = [m.name for m in spec.models]
    _consoles.out.print(robustness_table(result.summary, spec.reference_strength, norms, order, metric))
    clever = clever_table(result.summary, order)
    if clever is not None:
        _consoles.out.print(clever)
    _consoles.out.print(
        f"{result.cells_run} cells run, {result.cells_skipped} reused, {result.seconds:.0f} s; "
        f"results in {result.run_dir} (results.db, summary.csv, summary.json)",
        highlight=False,
    )
    seconds = _write_report(result.run_dir)
    stages = {**result.stages, "report": seconds}
    _consoles.out.print(
        "time per stage: " + ", ".join(f"{name} {t:.1f} s" for name, t in stages.items()),
        highlight=False,
        soft_wrap=True,
    )


def _write_report(run_dir: Path, **options: Any) -> float:
    """Write the report of ``run_dir``; returns the seconds it took."""
    import time

    from medrobust.report import build_report

    t0 = time.perf_counter()
    with user_errors():
        html, md = build_report(run_dir, **options)
    seconds = time.perf_counter() - t0
    _consoles.out.print(f"report: {html} and {md} ({seconds:.1f} s)", highlight=False)
    return seconds


MLFLOW_HELP = (
    "log the run to MLflow: a tracking URI (http://..., sqlite:///...) or a folder for a local store "
    "(with the spec's mlflow key and no --mlflow: MLFLOW_TRACKING_URI, else RUN/mlflow)"
)


def _tracking_wanted(spec: Any, uri: str | None, run_dir: Path) -> bool:
    """Whether the run is to be logged to MLflow (``--mlflow`` or the spec's ``mlflow`` key); checks up front
    that MLflow is installed and the destination usable, so a long run does not end in such an error."""
    if uri is None and spec.mlflow is None:
        return False
    from medrobust.tracking import check_destination

    check_destination(uri, run_dir)
    return True


def _log_mlflow(run_dir: Path, uri: str | None) -> None:
    """Log a run folder to MLflow; a failure loses nothing (the results stay in the folder) and says how to
    log them later."""
    from medrobust.tracking import first_line, log_run

    try:
        logged = log_run(run_dir, uri)
    except Exception as err:  # a store or server fails in its own ways; the run's results are safe either way
        _consoles.err.print(
            f"error: MLflow logging failed ({first_line(err)}); the results are in {run_dir}; log them later with "
            f"`medrobust report {run_dir} --mlflow URI`",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(code=1) from None
    verb = "updated" if logged.resumed else "logged"
    _consoles.out.print(
        f"mlflow: {verb} run {logged.run_id} in experiment {logged.experiment!r} at {logged.uri} "
        f"({logged.params} params, {logged.metrics} metrics, {len(logged.artifacts)} artifacts)",
        highlight=False,
    )


@app.command()
def run(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="experiment spec (YAML)"),
    out: Path = typer.Option(..., "--out", "-o", help="run directory; re-running resumes"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="logs only, no progress bars"),
    trust_code: bool = typer.Option(False, "--trust-code", help="allow module:function architectures (they run code)"),
    force: bool = typer.Option(False, "--force", help="add to a run folder that holds another experiment"),
    executor: str | None = typer.Option(None, help="local (default) or ray: where the work units run"),
    address: str | None = typer.Option(None, help="Ray cluster address (default: start a local Ray instance)"),
    shard_size: int | None = typer.Option(None, help="samples per work unit (default: one unit per cell)"),
    threads: int | None = typer.Option(None, help="torch CPU threads per process or Ray unit"),
    mlflow: str | None = typer.Option(None, "--mlflow", help=MLFLOW_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run an experiment spec: every model x perturbation x strength; finished cells are skipped."""
    from medrobust.config import load_config
    from medrobust.runner import run_experiment

    setup_logging(verbose or quiet)
    with user_errors():
        spec = load_config(spec_path)
        if threads is not None and threads < 1:
            raise ValueError(f"--threads {threads} must be >= 1")
        chosen = {"name": executor, "address": address, "shard_size": shard_size}
        overrides = {k: v for k, v in chosen.items() if v is not None}
        if overrides or threads is not None:
            from pydantic import ValidationError

            from medrobust.config import ExecutorSpec

            try:
                executor_spec = ExecutorSpec.model_validate({**spec.executor.model_dump(), **overrides})
            except ValidationError as err:
                raise ValueError(
                    _option_error(err, {"name": "--executor", "address": "--address", "shard_size": "--shard-size"})
                ) from None
            update = {"executor": executor_spec, "threads": threads if threads is not None else spec.threads}
            spec = spec.model_copy(update=update)
        tracked = _tracking_wanted(spec, mlflow, out)
        result = run_experiment(spec, out, quiet=quiet, notify=_notify, trust_code=trust_code, force=force)
    _print_run(result, spec)
    if tracked:
        _log_mlflow(result.run_dir, mlflow)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="run directory"),
    format: str = typer.Option("csv", "--format", "-f", help="csv, json or parquet"),
    out: Path | None = typer.Option(None, "--out", "-o", help="file to write (default: RUN/records.FORMAT)"),
) -> None:
    """Export every per-sample record of a run."""
    from medrobust.export import export_records

    with user_errors():
        path = export_records(run_dir, format, out)
    _consoles.out.print(f"wrote {path}", highlight=False)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="run directory (with results.db)"),
    reference: list[str] = typer.Option(None, "--reference", help="headline strength per norm, e.g. linf=0.0078"),
    malignant: list[str] = typer.Option(
        None,
        "--malignant",
        help="class counted as malignant (repeatable; default: the spec's, else melanoma, mel, bcc, akiec on "
        "dermatology classes)",
    ),
    mlflow: str | None = typer.Option(None, "--mlflow", help="log the run to MLflow (tracking URI or folder)"),
) -> None:
    """Write RUN_DIR/report.html (self-contained) and summary.md from the stored results; runs no attack."""
    with user_errors():
        ref = {}
        for norm, value in parse_pairs(reference, "--reference").items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"--reference {norm}={value}: {value!r} is not a number; expected e.g. linf=0.0078")
            ref[norm] = float(value)
        if mlflow is not None:
            from medrobust.tracking import check_destination

            check_destination(mlflow, run_dir)
    _write_report(run_dir, reference_strength=ref or None, malignant=malignant or None)
    if mlflow is not None:
        _log_mlflow(run_dir, mlflow)


@app.command()
def demo(
    task: str = typer.Option(
        "classification",
        help="classification (derm-synth), segmentation (mni152-tissue) or defenses (robust training on derm-synth)",
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="run directory (models are cached here)"),
    mlflow: str | None = typer.Option(None, "--mlflow", help=MLFLOW_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """The main job on built-in data: several models, clean vs noise, artifacts and attacks (--task picks the demo)."""
    from medrobust.config import load_config
    from medrobust.runner import run_experiment

    setup_logging(verbose or quiet)
    with user_errors():
        demos = {
            "classification": ("derm-demo.yaml", "runs/demo"),
            "segmentation": ("mni-demo.yaml", "runs/demo-segmentation"),
            "defenses": ("defenses-demo.yaml", "runs/demo-defenses"),
        }
        if task not in demos:
            from medrobust.registry import unknown_name_message

            raise ValueError(unknown_name_message("demo task", task, list(demos)))
        spec = load_config(Path(__file__).parent / "specs" / demos[task][0])
        out = out or Path(demos[task][1])
        tracked = _tracking_wanted(spec, mlflow, out)
        result = run_experiment(spec, out, quiet=quiet, notify=_notify)
    _print_run(result, spec)
    if tracked:
        _log_mlflow(result.run_dir, mlflow)


def main() -> None:  # pragma: no cover - console entry for `python -m medrobust`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
