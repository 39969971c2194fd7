"""The tables `medrobust run` prints: accuracy under each perturbation, and CLEVER (a size, not a score) apart."""

from __future__ import annotations

import math

from rich.console import Console

from medrobust.cli import clever_table, robustness_table


def row(model, pert, strength, metric, value, n=4, ci=(None, None)):
    return {"model": model, "perturbation": pert, "strength": strength, "metric": metric, "value": value, "n": n,
            "ci_low": ci[0], "ci_high": ci[1]}


SUMMARY = [
    row("a", "clean", 0.0, "accuracy", 0.75),
    row("b", "clean", 0.0, "accuracy", 1.0),
    row("a", "fgsm", 0.03, "accuracy", 0.25),
    row("b", "fgsm", 0.03, "accuracy", 0.5),
    row("a", "matched_noise[fgsm]", 0.03, "accuracy", 0.75),
    row("b", "matched_noise[fgsm]", 0.03, "accuracy", 1.0),
    row("a", "clever[l2]", 0.0, "clever", 0.123456, n=3, ci=(0.1, 0.2)),
    row("a", "clever[l2]", 0.0, "clever_flagged", 1 / 3, n=3, ci=(0.06, 0.79)),
    row("b", "clever[l2]", 0.0, "clever", 0.5, n=4, ci=(0.25, 0.75)),
    row("b", "clever[l2]", 0.0, "clever_flagged", 0.0, n=4, ci=(0.0, 0.49)),
]


def text(table) -> str:
    console = Console(width=160, record=True)
    console.print(table)
    return console.export_text()


def cells(shown: str) -> dict[str, list[str]]:
    """The table's header ("┃") and body ("│") rows: first cell -> the others."""
    out = {}
    for line in shown.splitlines():
        for bar in "┃│":
            if line.startswith(bar):
                first, *rest = [c.strip() for c in line.split(bar)[1:-1]]
                out[first] = rest
    return out


def test_clever_is_no_row_of_the_accuracy_table():
    shown = text(robustness_table(SUMMARY, {"linf": 0.03}, {"fgsm": "linf"}, ["a", "b"]))
    assert cells(shown) == {
        "perturbation @ strength": ["a", "b"],
        "clean": ["0.750", "1.000"],
        "fgsm @ 0.03": ["0.250 (0.750)", "0.500 (1.000)"],
    }
    assert "clever" not in shown.lower()


def test_clever_has_a_table_of_its_own():
    shown = text(clever_table(SUMMARY, ["a", "b"]))
    assert shown.startswith("CLEVER: estimated minimal perturbation (a size, not a score)")
    assert cells(shown) == {
        "model": ["estimate", "median", "95% interval", "degenerate fits", "n"],
        "a": ["clever[l2]", "0.1235", "[0.1000, 0.2000]", "33% (1/3)", "3"],
        "b": ["clever[l2]", "0.5000", "[0.2500, 0.7500]", "0% (0/4)", "4"],
    }
    # a model without a clean-correct sample has no estimate: dashes, not NaN
    empty = [row("c", "clever[l2]", 0.0, "clever", math.nan, n=0, ci=(math.nan, math.nan)),
             row("c", "clever[l2]", 0.0, "clever_flagged", math.nan, n=0)]
    assert cells(text(clever_table(empty)))["c"] == ["clever[l2]", "-", "-", "-", "0"]
    assert clever_table(SUMMARY[:6]) is None  # no CLEVER in the run: no table


def test_output_to_a_log_is_not_wrapped_at_80_columns(monkeypatch, capsys):
    import medrobust.cli as cli

    monkeypatch.delenv("COLUMNS", raising=False)
    line = "resnet epoch  12  loss 0.3065  val: accuracy 0.803  balanced_accuracy 0.803  auc 0.923  (extra words)"
    assert len(line) > 80
    cli._consoles.err.print(line)  # stderr is captured: not a terminal
    assert capsys.readouterr().err.rstrip("\n") == line
    monkeypatch.setenv("COLUMNS", "60")  # a width the user asks for is kept
    assert cli._consoles.err.width == 60


def test_summary_markdown_escapes_html_but_keeps_comparison_signs():
    from medrobust.report.markdown import cell

    assert cell("p < 0.001, n >= 10") == "p < 0.001, n >= 10"
    assert cell("<script>x</script> | &lt;") == "&lt;script>x&lt;/script> \\| &amp;lt;"
