"""The HTML report: self-contained, every section, numbers equal to summary.json, escaped user strings, checks
that fire on broken results, a single-model run, and a look in a real (headless) browser."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import sqlite3
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from medrobust.cli import app
from medrobust.config import load_config
from medrobust.report import build_report
from medrobust.runner import run_experiment
from medrobust.train import TrainSettings, train

DATA = {"name": "derm-synth", "params": {"size": 16, "n": 60}}
EVIL = 'evil<script>alert("x")</script>'
SECTIONS = [
    "1. Threat model and provenance",
    "2. Generalizability vs robustness",
    "3. Robustness curves",
    "4. Perturbation size and perceptibility",
    "5. Clinically relevant breakdown",
    "6. Gallery",
    "7. Warnings",
]
MELANOMA = 1  # derm-synth classes: nevus, melanoma, seborrheic_keratosis


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint, tmp_path_factory) -> list[Path]:
    """The session's shared small-cnn (seed 0) and one trained the same way with seed 1."""
    folder = tmp_path_factory.mktemp("ckpt") / "tiny1"
    train(TrainSettings(architecture="small-cnn", arch_kwargs={"width": 4}, dataset="derm-synth",
                        dataset_params=DATA["params"], epochs=2, seed=1), folder)
    return [tiny_checkpoint, folder]


def make_spec(models: list[dict], perturbations: list[dict], **extra) -> dict:
    return {"name": "report-test", "seed": 1, "batch_size": 12, "limit": 24, "dataset": DATA, "models": models,
            "perturbations": perturbations, **extra}


@pytest.fixture(scope="module")
def run_dir(checkpoints, tmp_path_factory) -> Path:
    spec = make_spec(
        [{"name": "tiny", "checkpoint": str(checkpoints[0])}, {"name": EVIL, "checkpoint": str(checkpoints[1])}],
        [
            {"corruption": "gaussian_noise", "strengths": [0.05, 0.2]},
            {"attack": "fgsm", "strengths": [0.01, 0.05]},
            {"attack": "pgd", "strengths": [0.01, 0.05], "params": {"steps": 5}},
            {"attack": "deepfool", "strengths": [0.05, 0.2, 1.0], "params": {"steps": 20}},
        ],
        reference_strength={"linf": 0.04},
    )
    out = tmp_path_factory.mktemp("run") / "run"
    run_experiment(load_config(spec), out, quiet=True)
    return out


@pytest.fixture(scope="module")
def report(run_dir) -> tuple[Path, Path, str]:
    html_path, md_path = build_report(run_dir)
    return html_path, md_path, html_path.read_text()


class Cells(HTMLParser):
    """Collects h2 texts, img srcs, and the attributes of every element with data-value or data-flips."""

    def __init__(self) -> None:
        super().__init__()
        self.h2: list[str] = []
        self.imgs: list[str] = []
        self.values: list[dict[str, str]] = []
        self.flips: list[dict[str, str]] = []
        self._in_h2 = False
        self._table_model: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "h2":
            self._in_h2 = True
            self.h2.append("")
        if tag == "img":
            self.imgs.append(a.get("src") or "")
        if tag == "table" and "clinical" in (a.get("class") or ""):
            self._table_model = a.get("data-model")
        if "data-value" in a:
            self.values.append(a)
        if "data-flips" in a:
            self.flips.append({**a, "model": self._table_model})

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        if self._in_h2:
            self.h2[-1] += data


def parse(html: str) -> Cells:
    p = Cells()
    p.feed(html)
    return p


def hand_store(run: Path, models: list[tuple[str, str, int, tuple[float, float]]], cell_keys: list[str]):
    """A results.db written by hand: one run with ``models`` (name, task, number of classes, bounds) and the cells
    ``cell_keys``; returns (store, run id)."""
    from medrobust.store import ModelRow, Store

    store = Store(run / "results.db")
    rows = [ModelRow(name, f"fp-{name}", task, [f"class {k}" for k in range(k)], bounds, "hand-written", {})
            for name, task, k, bounds in models]
    run_id = store.start_run({"name": run.name}, "hash", {"medrobust": "test"}, "cpu", 0, rows, cell_keys)
    return store, run_id


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns("report.html", "summary.md"))
    return dst


def test_report_is_self_contained_with_every_section(report):
    html_path, md_path, html = report
    assert html_path.name == "report.html" and md_path.name == "summary.md"
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I), "network asset in report"
    assert "<link" not in html and "<script" not in html and "@import" not in html
    cells = parse(html)
    assert [h.strip() for h in cells.h2] == SECTIONS
    assert len(cells.imgs) >= 6  # headline, curves, perceptibility, minimal perturbations, one gallery per model
    for src in cells.imgs:
        assert src.startswith("data:image/png;base64,")
        png = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        png.load()
        assert png.width > 300 and png.height > 200
    md = md_path.read_text()
    for heading in ("## Threat model", "## Generalizability vs robustness", "## Robustness curves", "## Warnings"):
        assert heading in md


def test_gallery_shows_the_stored_examples(report, run_dir):
    from medrobust.report.analysis import gallery
    from medrobust.report.data import load_run

    _, _, html = report
    assert html.count('<figure class="gallery"') == 2  # one per model
    run = load_run(run_dir)
    galleries = gallery(run, {"linf": 0.04})
    assert [g.model for g in galleries] == ["tiny", EVIL]
    con = sqlite3.connect(run_dir / "results.db")
    for g in galleries:
        assert g.samples == [0, 1]  # the spec's default gallery: the first two test samples
        # one row per perturbation, at the reference strength (Linf 0.04 -> 0.05; others: the middle strength)
        assert [(r.perturbation, r.strength) for r in g.rows] == [
            ("gaussian_noise", 0.2), ("fgsm", 0.05), ("pgd", 0.05), ("deepfool", 0.2)]
        for row in g.rows:
            for i in g.samples:
                label, clean_pred, pred, linf = con.execute(
                    "SELECT label, clean_pred, pred, linf FROM records WHERE model=? AND perturbation=? AND "
                    "strength=? AND sample_index=?", (g.model, row.perturbation, row.strength, i)).fetchone()
                assert (g.label[i], g.clean_pred[i], row.pred[i]) == (label, clean_pred, pred)
                assert row.changed[i] == (pred != clean_pred)
                # the stored delta is x_pert - x in float16: its Linf is the record's, to float16 precision
                assert float(abs(row.delta[i]).max()) == pytest.approx(linf, rel=2e-3, abs=1e-4)
                if row.kind == "attack" and row.perturbation != "deepfool":
                    assert float(abs(row.delta[i]).max()) <= row.strength * (1 + 1e-3)


def test_report_without_stored_examples_says_why(checkpoints, tmp_path):
    spec = make_spec([{"name": "tiny", "checkpoint": str(checkpoints[0])}],
                     [{"attack": "fgsm", "strengths": [0.01]}], gallery=0)
    run_experiment(load_config(spec), tmp_path / "run", quiet=True)
    con = sqlite3.connect(tmp_path / "run" / "results.db")
    assert con.execute("SELECT COUNT(*) FROM examples").fetchone()[0] == 0
    html_path, _ = build_report(tmp_path / "run")
    html = html_path.read_text()
    assert '<figure class="gallery"' not in html and "No example images" in html


def test_headline_numbers_equal_summary_json(report, run_dir):
    _, _, html = report
    summary = json.loads((run_dir / "summary.json").read_text())
    index = {(r["model"], r["perturbation"], r["strength"], r["metric"]): r["value"] for r in summary}
    cells = parse(html).values
    # per model: linf table (clean, worst case, fgsm, pgd) + l2 table (clean, worst case, deepfool)
    assert len(cells) == 2 * 7
    for c in cells:
        key = (c["data-model"], c["data-perturbation"], float(c["data-strength"]), c["data-metric"])
        assert key in index, key
        assert float(c["data-value"]) == index[key]
    linf = {float(c["data-strength"]) for c in cells if c["data-perturbation"] in ("fgsm", "pgd", "worst_case[linf]")}
    l2 = {float(c["data-strength"]) for c in cells if c["data-perturbation"] in ("deepfool", "worst_case[l2]")}
    assert linf == {0.05}  # nearest to the spec's reference_strength linf=0.04
    assert l2 == {0.2}  # no reference for l2: the middle strength
    # the shown text is the same number rounded
    worst = index[("tiny", "worst_case[linf]", 0.05, "accuracy")]
    assert f'data-value="{worst!r}"><strong>{worst:.3f}</strong>' in html


def test_user_strings_are_escaped(report):
    _, md_path, html = report
    assert EVIL not in html and "<script" not in html
    assert "evil&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert EVIL in {c["data-model"] for c in parse(html).values}  # the parser unescapes it back
    assert "<script" not in md_path.read_text()


def test_malignant_to_benign_flips_match_the_records(report, run_dir, tmp_path):
    _, _, html = report
    con = sqlite3.connect(run_dir / "results.db")

    def flips(model: str, pert: str, strength: float, malignant: set[int]) -> tuple[int, int]:
        rows = con.execute("SELECT label, clean_pred, pred FROM records WHERE model=? AND perturbation=? AND "
                           "abs(strength - ?) < 1e-9", (model, pert, strength)).fetchall()
        eligible = [r for r in rows if r[0] in malignant and r[1] in malignant]
        return sum(r[2] not in malignant for r in eligible), len(eligible)

    shown = {(f["model"], f["data-perturbation"]): (int(f["data-flips"]), int(f["data-eligible"]))
             for f in parse(html).flips}
    for model in ("tiny", EVIL):
        assert shown[(model, "fgsm")] == flips(model, "fgsm", 0.05, {MELANOMA})
        assert shown[(model, "deepfool")] == flips(model, "deepfool", 0.2, {MELANOMA})
    # configurable groups: call nevus and seborrheic keratosis "malignant" instead
    copy = copy_run(run_dir, tmp_path)
    html2 = build_report(copy, malignant=["Nevus", "seborrheic_keratosis"])[0].read_text()
    shown2 = {(f["model"], f["data-perturbation"]): (int(f["data-flips"]), int(f["data-eligible"]))
              for f in parse(html2).flips}
    assert shown2[("tiny", "pgd")] == flips("tiny", "pgd", 0.05, {0, 2})


def test_warnings_fire_on_broken_results(run_dir, tmp_path):
    copy = copy_run(run_dir, tmp_path)
    con = sqlite3.connect(copy / "results.db")
    with con:
        # fgsm on "tiny" at eps=0.05 now leaves every sample correct: weaker than noise and non-monotone
        con.execute("UPDATE records SET pred=label WHERE model='tiny' AND perturbation='fgsm' AND strength > 0.04")
        # deepfool never changes a prediction: a minimal attack that fails
        con.execute("UPDATE records SET pred=clean_pred WHERE perturbation='deepfool'")
    con.close()
    html = build_report(copy)[0].read_text()
    section = html[html.index('id="warnings"'):]
    assert "No warnings." not in section
    assert re.search(r"attack weaker than noise</span>fgsm on tiny", section)
    assert re.search(r"non-monotone curve</span>accuracy under fgsm on tiny rises", section)
    assert re.search(r"minimal attack rarely succeeds</span>deepfool on tiny fooled only 0%", section)
    assert "1.000" in html[html.index('id="headline-linf"'):html.index('id="curves"')]  # fgsm row, from the store


def test_stored_sanity_checks_appear_in_the_warnings(run_dir, checkpoints, tmp_path, monkeypatch):
    from medrobust.attacks.base import Attack
    from medrobust.checks import MEANINGS, CheckResult
    from medrobust.store import Store

    def refuse(*args, **kwargs):
        raise AssertionError("the report ran an attack")

    monkeypatch.setattr(Attack, "detailed", refuse)
    copy = copy_run(run_dir, tmp_path)
    store = Store(copy / "results.db")
    digest = {m.name: m.fingerprint for m in store.run_models(store.latest_run())}["tiny"]
    store.write_checks("tiny", digest, [
        CheckResult("logits", True, 0.0, "Outputs are logits.", MEANINGS["logits"]),
        CheckResult("unbounded", False, 0.375, "PGD (Linf, 20 steps) with eps = 1 leaves accuracy 0.375.",
                    MEANINGS["unbounded"]),
        CheckResult("more_steps", True, float("nan"), "Skipped.", MEANINGS["more_steps"]),
    ])
    store.write_checks(EVIL, "weights-of-another-run", [CheckResult("gradients", False, 1.0, "stale", "stale")])
    store.close()
    html_path, md_path = build_report(copy)
    html = html_path.read_text()
    section = html[html.index('id="warnings"'):]
    assert "unbounded attack fails</span>tiny: PGD (Linf, 20 steps) with eps = 1 leaves accuracy 0.375." in section
    assert "<strong>What it means:</strong> With a budget covering the whole input range" in section
    assert "Sanity checks passed for tiny: logits, more steps; failed (see above): unbounded.</li>" in section
    # checks of other weights are not shown, and the report says so
    assert "stale" not in section
    assert "No sanity checks for evil&lt;script&gt;" in section
    assert "ran on other weights than the ones shown" in html
    assert re.search(r'href="#warnings">7 Warnings \((\d+)\)', html).group(1) == str(section.count('<span class="tag">'))
    md = md_path.read_text()
    assert "- **unbounded attack fails**: tiny: PGD (Linf, 20 steps)" in md and "*What it means:* With a budget" in md
    assert "- Sanity checks passed for tiny: logits, more steps; failed (see above): unbounded." in md


def test_intervals_paired_tests_and_curve_areas_match_the_stored_results(report, run_dir):
    html_path, md_path, html = report
    rows = json.loads((run_dir / "summary.json").read_text())
    index = {(r["model"], r["perturbation"], r["strength"], r["metric"]): r for r in rows}
    # the headline shows each clean score's 95% interval from summary.json
    clean = index[("tiny", "clean", 0.0, "accuracy")]
    assert f"[{clean['ci_low']:.3f}, {clean['ci_high']:.3f}]" in html[html.index('id="headline-linf"'):]
    # the paired tests are those of comparisons.json (one pair: tiny vs the other model)
    comparisons = json.loads((run_dir / "comparisons.json").read_text())
    shown = re.findall(r'data-pair="([^"]+)" data-metric="([^"]+)" data-difference="([^"]+)" data-p="([^"]+)"', html)
    assert shown, "no paired tests in the report"
    stored = {(c["model_a"], c["model_b"], c["perturbation"], c["strength"], c["metric"]): c
              for c in comparisons if c["quantity"] == "value"}
    for pair, metric, diff, p_adj in shown:
        a, b, pert, strength = pair.replace("&lt;", "<").replace("&gt;", ">").replace("&#34;", '"').split("|")
        c = stored[(a, b, pert, float(strength), metric)]
        assert float(diff) == pytest.approx(c["difference"]) and float(p_adj) == pytest.approx(c["p_adjusted"])
    # a curve's area is the mean score over its strengths (every sample is scored at every strength)
    (area,) = [float(v) for v in re.findall(r'data-area="([^"]+)" data-model="tiny" data-perturbation="fgsm"', html)]
    expected = (index[("tiny", "fgsm", 0.01, "accuracy")]["value"] + index[("tiny", "fgsm", 0.05, "accuracy")]["value"]) / 2
    assert area == pytest.approx(expected)
    sentence = re.search(r'<p class="lead">(.*?)</p>', html, flags=re.S).group(1)
    assert "differs significantly" in sentence or "(p = " in sentence
    md = md_path.read_text()
    assert "Paired tests on the same samples" in md and "| tiny | fgsm | 2 |" in md


def test_worst_cases_without_a_strong_attack_are_flagged():
    """Per norm, the strengths whose worst case rests on no autoattack/apgd are named; L0 has no strong attack."""
    from medrobust.report.analysis import Values, unchecked_worst_cases
    from medrobust.report.data import PerturbationInfo, RunData

    def pert(name, norm, strengths):
        return PerturbationInfo(name, "attack", name, norm, False, tuple(strengths), {})

    def run_of(*perts):
        return RunData(Path("."), {}, [], [], list(perts), [], [], 10, 0.0)

    rows = [{"model": "m", "perturbation": label, "strength": s, "metric": "accuracy", "value": 0.5}
            for label, strengths in [("worst_case[linf]", (0.01, 0.02, 0.03)), ("worst_case[l2]", (0.5,)),
                                     ("worst_case[l0]", (0.01,))] for s in strengths]
    values = Values(rows)
    base = [pert("fgsm", "linf", (0.01, 0.02, 0.03)), pert("pgd", "linf", (0.01, 0.02)), pert("cw", "l2", (0.5,)),
            pert("jsma", "l0", (0.01,))]
    found = unchecked_worst_cases(run_of(*base, pert("autoattack", "linf", (0.02, 0.03))), values)
    assert [f.message for f in found] == [
        "worst_case[linf] at eps = 0.01 rests on fgsm, pgd only; no strong attack (apgd, autoattack, fab, fmn) ran "
        "at this strength, so it may be optimistic.",
        "worst_case[l2] at eps = 0.5 rests on cw only; no strong attack (apgd, autoattack, fab, fmn) ran at this "
        "strength, so it may be optimistic.",
    ]
    assert all(f.check == "worst case not checked by a strong attack" and "autoattack" in f.meaning for f in found)
    found = unchecked_worst_cases(run_of(*base, pert("apgd", "linf", (0.01,)), pert("autoattack", "l2", (0.5,))), values)
    assert [f.message.split(" rests")[0] for f in found] == ["worst_case[linf] at eps = 0.02, 0.03"]
    covered = [pert("autoattack", "linf", (0.01, 0.02, 0.03)), pert("autoattack", "l2", (0.5,))]
    assert unchecked_worst_cases(run_of(*base, *covered), values) == []
    # a minimal strong attack (FMN) covers every strength of its norm with one run
    covered = [pert("fmn", "linf", (0.01, 0.02, 0.03)), pert("fmn", "l2", (0.5,))]
    assert unchecked_worst_cases(run_of(*base, *covered), values) == []


def test_black_box_finding_is_computed_from_the_records(tmp_path):
    """A hand-written store (no spec, no model cards): Square fools 3 of the 4 samples PGD left correct."""
    from medrobust.store import CellInfo, Record

    run = tmp_path / "bb"
    store, run_id = hand_store(run, [("m", "classification", 2, (0.0, 1.0))], ["c", "pgd", "square"])
    labels = [i % 2 for i in range(10)]
    clean = [lab if i != 9 else 1 - lab for i, lab in enumerate(labels)]  # sample 9 is wrong clean

    def records(key, pert, kind, strength, fooled):
        rows = []
        for i, lab in enumerate(labels):
            pred = 1 - lab if (i in fooled or i == 9) else lab
            rows.append(Record(
                cell_key=key, model="m", perturbation=pert, kind=kind, strength=strength,
                sample_index=i, sample_id=f"s{i}", label=lab, clean_pred=clean[i], pred=pred,
                probs=[0.5, 0.5], l2=0.1, linf=strength, l0=10.0, ssim=0.99,
                psnr=40.0, rho=0.01, score=float(pred == lab),
                detail={"queries": 100} if pert == "square" else None,
            ))
        return rows

    store.write_cell(CellInfo("c", "m", "clean", "clean", {}, [0.0], {"bounds": [0, 1], "seed": 0}),
                     records("c", "clean", "clean", 0.0, set()), run_id, 0.0)
    for name, fooled in (("pgd", {0, 1, 2, 3, 4}), ("square", {0, 1, 2, 5, 6, 7})):
        threat = {"bounds": [0, 1], "seed": 0, "norm": "linf", "eps": [0.03], "minimal": False, "strengths": [0.03]}
        store.write_cell(CellInfo(name, "m", name, "attack", {}, [0.03], threat),
                         records(name, name, "attack", 0.03, fooled), run_id, 0.0)
    store.close()
    html_path, md_path = build_report(run)
    section = html_path.read_text()
    section = section[section.index('id="warnings"'):]
    assert ("black box beats white box</span>m: At Linf eps=0.03, black-box attacks (square) fooled 3 of the 4 "
            "samples that every white-box attack (pgd) left correct (limit 2): samples 5, 6, 7.") in section
    assert "What it means:</strong> Black-box attacks see only the model&#39;s outputs" in section
    assert ("Sanity checks passed for m: none; failed (see above): black box. Its model-level checks are not in "
            "results.db.") in section
    assert "black box beats white box" in md_path.read_text()


def test_incomplete_run_reported_from_the_store_alone(run_dir, tmp_path, monkeypatch):
    """The report reads only results.db: no model card, checkpoint or spec.json is opened (the models' classes,
    task and weights' fingerprint are stored per run), and a cell missing from the store is reported."""
    import medrobust.models.card as card_module
    from medrobust.attacks.base import Attack

    def refuse(*args, **kwargs):
        raise AssertionError("the report ran an attack or read a model file")

    monkeypatch.setattr(Attack, "__call__", refuse)
    monkeypatch.setattr(card_module, "read_card", refuse)
    monkeypatch.setattr(card_module, "load_model", refuse)
    copy = copy_run(run_dir, tmp_path)
    (copy / "spec.json").unlink()
    con = sqlite3.connect(copy / "results.db")
    with con:
        key = con.execute("SELECT key FROM cells WHERE perturbation='pgd' AND model='tiny' AND strengths_json='[0.01, 0.05]'").fetchone()[0]
        con.execute("DELETE FROM records WHERE cell_key=?", (key,))
        con.execute("DELETE FROM cells WHERE key=?", (key,))
        fingerprint = con.execute("SELECT fingerprint FROM models WHERE name='tiny'").fetchone()[0]
    con.close()
    html = build_report(copy)[0].read_text()
    assert "incomplete run</span>1 cells of the spec (a model under a perturbation at one or more strengths)" in html
    assert "nevus, melanoma, seborrheic_keratosis" in html and f"<code>{fingerprint}</code>" in html
    assert "model card not found" not in html


def test_single_model_run_and_cli(checkpoints, tmp_path):
    spec = make_spec([{"name": "solo", "checkpoint": str(checkpoints[0])}],
                     [{"attack": "fgsm", "strengths": [0.01, 0.03, 0.05]}, {"corruption": "salt_pepper", "strengths": [0.02]}])
    run_experiment(load_config(spec), tmp_path / "solo", quiet=True)
    result = CliRunner().invoke(app, ["report", str(tmp_path / "solo"), "--reference", "linf=0.01"])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "solo" / "report.html").read_text()
    cells = parse(html)
    assert [h.strip() for h in cells.h2] == SECTIONS
    assert {(c["data-perturbation"], float(c["data-strength"])) for c in cells.values} == {
        ("clean", 0.0), ("worst_case", 0.01), ("fgsm", 0.01)}
    assert "solo scores" in html  # the one-model headline sentence
    assert "| solo |" in (tmp_path / "solo" / "summary.md").read_text()
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and "has no results.db" in bad.output


def test_segmentation_run_reports_dice_and_structures(tmp_path):
    """A segmentation store (label = pred = -1, Dice in score, per-structure values in detail_json), written by
    hand and without spec or model cards: the report scores by Dice and lists per-structure Dice and HD95."""
    from medrobust.results import summarise, write_summary
    from medrobust.store import CellInfo, Record

    run = tmp_path / "seg"
    store, run_id = hand_store(run, [("unet", "segmentation", 4, (0.0, 1.0))], ["c", "f0.01", "f0.02"])

    def records(key, pert, kind, strength, scores):
        return [Record(
            cell_key=key, model="unet", perturbation=pert, kind=kind, strength=strength,
            sample_index=i, sample_id=f"s{i}", label=-1, clean_pred=-1, pred=-1, probs=[],
            l2=10 * strength, linf=strength, l0=100.0, ssim=0.99, psnr=40.0, rho=0.01, score=sc,
            detail={"dice": [sc, sc / 2, 1.0], "hd95": [1.0, 2.0, None], "flip": 1 - sc, "flip_s": [1 - sc] * 3},
        ) for i, sc in enumerate(scores)]

    clean = [0.9, 0.8, 0.7, 0.6]
    store.write_cell(CellInfo("c", "unet", "clean", "clean", {}, [0.0], {"bounds": [0, 1], "seed": 0}),
                     records("c", "clean", "clean", 0.0, clean), run_id, 0.0)
    for s, drop in ((0.01, 0.2), (0.02, 0.4)):
        threat = {"bounds": [0, 1], "seed": 0, "norm": "linf", "eps": [s], "minimal": False, "strengths": [s]}
        recs = records(f"f{s}", "fgsm", "attack", s, [c - drop for c in clean])
        recs += records(f"f{s}", "matched_noise[fgsm]", "corruption", s, [c - 0.01 for c in clean])
        store.write_cell(CellInfo(f"f{s}", "unet", "fgsm", "attack", {}, [s], threat), recs, run_id, 0.0)
    summary = summarise(store.records(), {"fgsm": "linf"}, {"unet": "segmentation"},
                        {"unet": [f"class {k}" for k in range(4)]})
    store.close()
    write_summary(summary, run)
    html = build_report(run)[0].read_text()
    index = {(r["model"], r["perturbation"], r["strength"], r["metric"]): r["value"]
             for r in json.loads((run / "summary.json").read_text())}
    cells = parse(html).values
    assert {(c["data-perturbation"], c["data-metric"]) for c in cells} == {
        ("clean", "dice"), ("worst_case", "dice"), ("fgsm", "dice")}
    for c in cells:
        assert float(c["data-value"]) == index[(c["data-model"], c["data-perturbation"], float(c["data-strength"]), "dice")]
    assert index[("unet", "clean", 0.0, "dice")] == pytest.approx(0.75)
    section = html[html.index('id="clinical"'):html.index('id="gallery"')]
    assert 'class="structures"' in section and "class 1" in section and "HD95" in section
    assert "malignant" not in section.split("</h2>", 1)[1]
    # the only warning: FGSM alone backs the worst case (no spurious findings from a segmentation store)
    warned = html[html.index('id="warnings"'):]
    assert warned.count('<span class="tag">') == 1
    assert "worst case not checked by a strong attack</span>worst_case at eps = " in warned


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0"]
# Injected into a copy of the report (which itself has no script): records resource and script errors, then, once
# loaded, writes what it saw into the DOM for --dump-dom, and logs a line that proves console capture works.
PROBE_HEAD = ("<script>window.__errs=[];window.addEventListener('error',function(e){window.__errs.push(1);},true);"
              "</script>")
PROBE_TAIL = ("<script>window.addEventListener('load',function(){var im=[].slice.call(document.images);"
              "var bad=im.filter(function(i){return !(i.complete&&i.naturalWidth>0&&i.naturalHeight>0);}).length;"
              "var d=document.createElement('div');d.id='probe';d.setAttribute('data-images',im.length);"
              "d.setAttribute('data-broken',bad);d.setAttribute('data-errors',window.__errs.length);"
              "d.setAttribute('data-sections',document.querySelectorAll('section > h2').length);"
              "document.body.appendChild(d);console.log('medrobust-probe-loaded');});</script>")


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=90)


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium (/usr/bin/chromium) is not installed; "
                    "`make test-browser` installs Debian's chromium package")
def test_report_in_headless_chromium(report, tmp_path):
    _, _, html = report
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_TAIL + "</body>", 1))
    done = chromium(["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], tmp_path / "profile1")
    assert done.returncode == 0, done.stderr[-2000:]
    marker = re.search(r'<div id="probe" ([^>]*)>', done.stdout)
    assert marker, "the page never finished loading:\n" + done.stdout[-500:]
    attrs = dict(re.findall(r'(data-[a-z]+)="(\d+)"', marker.group(1)))
    assert attrs == {"data-images": str(html.count("<img ")), "data-broken": "0", "data-errors": "0",
                     "data-sections": str(len(SECTIONS))}
    logged = console_lines(done.stderr)
    assert any("medrobust-probe-loaded" in line for line in logged), "console capture does not work"
    assert [line for line in logged if "medrobust-probe-loaded" not in line] == []

    shot = tmp_path / "report.png"
    report_file = tmp_path / "report.html"
    report_file.write_text(html)
    done = chromium([f"--screenshot={shot}", "--window-size=1280,4000", report_file.as_uri()], tmp_path / "profile2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert console_lines(done.stderr) == []
    image = Image.open(shot).convert("L")
    assert image.size == (1280, 4000)
    # not a blank page: text and figures put plenty of dark pixels on it
    dark = sum(image.histogram()[:128]) / (image.width * image.height)
    assert dark > 0.005, dark


def test_minimal_sizes_at_the_budget_are_counted():
    from medrobust.report.analysis import SizeGroup

    vals = {"l2": [0.5, 2.0, 1.99999999], "linf": [0.1, 0.2, 0.2], "l0": [3, 4, 5]}
    # 5 attacked samples: the 3 successful above and 2 left unfooled, one cut off at the budget
    assert SizeGroup("m", "dag", "l2", 2.0, 5, vals, [0.5, 2.0, 1.99999999, 2.0, 1.2]).at_budget == 3
    assert SizeGroup("m", "pgd", "linf", 0.3, 5, vals, [0.1, 0.2, 0.2, 0.3, 0.25]).at_budget == 1
    assert SizeGroup("m", "jsma", "l0", 0.01, 3, vals, [3, 4, 5]).at_budget is None


def test_gallery_figure_handles_volumes_single_samples_and_many_classes():
    import warnings

    import numpy as np

    from medrobust.report.analysis import Gallery, GalleryRow
    from medrobust.report.figures import _display_slice, gallery_figure, sample_chunks

    assert sample_chunks(list(range(10))) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    # an RAS slice (right, anterior) is drawn with anterior up and right to the right; other data as stored
    from medrobust.report.figures import _plane

    a = np.arange(6).reshape(1, 2, 3)  # x = 0..1 (right), y = 0..2 (anterior)
    np.testing.assert_array_equal(_plane(a, up=True), [[2, 5], [1, 4], [0, 3]])
    np.testing.assert_array_equal(_plane(a), a[0])
    assert sample_chunks([]) == [[]]
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 2, (1, 12, 10, 8)).astype(np.float32)  # a volume in bounds (-1, 2)
    label = np.zeros((12, 10, 8), dtype=np.int32)
    label[3:9, 2:8, 5] = 299  # the foreground lies in slice 5 of the last axis only
    pred = label.copy()
    pred[3:5, 2:8, 5] = 0
    row = GalleryRow("fgsm @ 0.1", "fgsm", "attack", 0.1, {7: (0.1 * rng.standard_normal(image.shape)).astype(np.float32)},
                     {7: pred}, {7: True})
    g = Gallery("vol", True, tuple(f"s{k}" for k in range(300)), [7], {7: "case-7"}, {7: image},
                {7: label}, {7: label}, [row], bounds=(-1.0, 2.0))
    assert _display_slice(g, 7) == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no layout collapse with 300 structures in the legend
        uri = gallery_figure(g)
    png = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    png.load()
    assert png.width > 300 and png.height > 300
    # classification, one colour sample
    x = rng.uniform(0, 1, (3, 16, 16)).astype(np.float32)
    row = GalleryRow("pgd @ 0.03", "pgd", "attack", 0.03, {0: np.full_like(x, 0.03)}, {0: 1}, {0: True})
    g = Gallery("rgb", False, ("benign", "malignant"), [0], {0: "img0"}, {0: x}, {0: 0}, {0: 0}, [row])
    assert _display_slice(g, 0) is None
    assert gallery_figure(g).startswith("data:image/png;base64,")


def test_gallery_bounds_come_from_each_models_record_in_the_store(tmp_path):
    from medrobust.report.data import load_run
    from medrobust.store import CellInfo, Record

    run = tmp_path / "bounds"
    store, run_id = hand_store(run, [("a", "classification", 2, (-1.0, 2.0)), ("b", "classification", 2, (0.0, 255.0))],
                               ["ca", "cb"])
    for key, model in (("ca", "a"), ("cb", "b")):
        rec = Record(key, model, "clean", "clean", 0.0, 0, "s0", 0, 0, 0, [0.9, 0.1], 0.0, 0.0, 0.0, 1.0, None, 0.0,
                     1.0, None)
        # the cells' own threat records say other bounds: the models' rows decide
        store.write_cell(CellInfo(key, model, "clean", "clean", {}, [0.0], {"bounds": [0, 1], "seed": 0}), [rec],
                         run_id, 0.0)
    store.close()
    assert load_run(run).bounds == {"a": (-1.0, 2.0), "b": (0.0, 255.0)}


def test_minimal_table_counts_samples_at_the_budget(report, run_dir):
    _, md_path, html = report
    assert "<th class=\"num\">at the budget</th>" in html
    con = sqlite3.connect(run_dir / "results.db")
    # attacked (clean-correct) DeepFool samples of model "tiny" whose L2 reached the largest budget, 1.0, fooled
    # or not: the clip cut them off there
    at, attacked = con.execute(
        "SELECT SUM(l2 >= 1.0 * (1 - 1e-4)), COUNT(*) FROM records WHERE model='tiny' AND perturbation='deepfool' "
        "AND strength=1.0 AND label=clean_pred").fetchone()
    line = [ln for ln in md_path.read_text().splitlines() if ln.startswith("| tiny | deepfool | 1 |")]
    assert len(line) == 1 and line[0].split("|")[6].strip() == f"{at}/{attacked}"


def test_report_writes_the_summary_files_again_from_the_store(run_dir, tmp_path):
    copy = copy_run(run_dir, tmp_path)
    names = ("summary.json", "summary.csv", "comparisons.json", "comparisons.csv")
    for name in names:
        (copy / name).unlink()
    build_report(copy)
    for name in names:
        assert (copy / name).read_bytes() == (run_dir / name).read_bytes(), name


def test_an_interrupted_run_reports_its_wall_time_until_its_last_cell(run_dir, tmp_path):
    copy = copy_run(run_dir, tmp_path)
    con = sqlite3.connect(copy / "results.db")
    with con:
        started, = con.execute("SELECT started FROM runs WHERE id=1").fetchone()
        con.execute("UPDATE runs SET finished=NULL WHERE id=1")
        last, = con.execute("SELECT MAX(finished) FROM cells WHERE run_id=1").fetchone()
    con.close()
    html = build_report(copy)[0].read_text()
    shown = re.search(r"<tr><th>wall time</th><td>([0-9.]+) s", html).group(1)
    assert float(shown) == pytest.approx(last - started, abs=0.06) and float(shown) > 0
    assert "interrupted (last cell stored" in html
