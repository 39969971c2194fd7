"""Segmentation runs through the runner, store and summary: Dice per structure, HD95, flip rate, Dice drop."""

from __future__ import annotations

import json
import sqlite3

import pytest

from medrobust.config import load_config
from medrobust.runner import run_experiment


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    spec = load_config({
        "seed": 1,
        "batch_size": 4,
        "limit": 4,
        "dataset": {"name": "mni152-tissue", "split": "test"},
        "models": [{"name": "tiny-unet", "train": {
            "architecture": "unet", "arch_kwargs": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
            "epochs": 2, "batch_size": 8, "lr": 0.01,
        }}],
        "perturbations": [
            {"corruption": "rician_noise", "strengths": [0.1]},
            {"attack": "pgd", "strengths": [0.03], "params": {"steps": 3}},
            {"attack": "dag", "strengths": [0.5, 2.0], "params": {"steps": 10, "gamma": 0.2}},
            {"attack": "asma", "strengths": [0.5, 4.0], "params": {"steps": 20, "gamma": 0.3}},
        ],
    })
    run_dir = tmp_path_factory.mktemp("segrun")
    run_experiment(spec, run_dir, quiet=True)
    return run_dir


def rows_of(run_dir):
    return {(r["perturbation"], r["strength"], r["metric"]): r["value"] for r in json.loads((run_dir / "summary.json").read_text())}


def test_segmentation_summary_metrics(seg_run):
    rows = rows_of(seg_run)
    for structure in ("csf", "gm", "wm"):
        assert ("clean", 0.0, f"dice:{structure}") in rows
        assert ("clean", 0.0, f"hd95:{structure}") in rows
    clean = rows[("clean", 0.0, "dice")]
    assert 0.0 <= clean <= 1.0
    # the stored per-sample scores are the mean foreground Dice; dice_drop is clean minus perturbed
    con = sqlite3.connect(seg_run / "results.db")
    scores = [s for (s,) in con.execute("SELECT score FROM records WHERE perturbation='clean'")]
    assert clean == pytest.approx(sum(scores) / len(scores))
    pgd = rows[("pgd", 0.03, "dice")]
    assert rows[("pgd", 0.03, "dice_drop")] == pytest.approx(clean - pgd, abs=1e-9)
    assert rows[("pgd", 0.03, "linf")] == pytest.approx(0.03, abs=1e-6)
    # DAG is minimal: clipping it to a larger L2 budget can only flip more pixels
    assert rows[("dag", 2.0, "flip_rate")] >= rows[("dag", 0.5, "flip_rate")]
    # success per structure: flip rate and Dice drop of each structure
    for structure in ("csf", "gm", "wm"):
        assert 0.0 <= rows[("dag", 2.0, f"flip_rate:{structure}")] <= 1.0
        assert rows[("pgd", 0.03, f"dice_drop:{structure}")] == pytest.approx(
            rows[("clean", 0.0, f"dice:{structure}")] - rows[("pgd", 0.03, f"dice:{structure}")], abs=1e-9)
    assert ("clean", 0.0, "flip_rate:gm") not in rows
    assert rows[("dag", 2.0, "l2")] <= 2.0 + 1e-6
    assert ("matched_noise[dag]", 2.0, "dice") in rows
    # ASMA (all-background target) is scored by IoU with its target; a larger budget gets closer to it
    assert rows[("asma", 4.0, "target_iou")] >= rows[("asma", 0.5, "target_iou")]
    assert ("matched_noise[asma]", 4.0, "target_iou") not in rows
    assert ("worst_case[linf]", 0.03, "dice") in rows or ("worst_case", 0.03, "dice") in rows


def test_segmentation_records_hold_per_structure_details(seg_run):
    con = sqlite3.connect(seg_run / "results.db")
    label, detail = con.execute("SELECT label, detail_json FROM records WHERE perturbation='pgd' LIMIT 1").fetchone()
    assert label == -1
    detail = json.loads(detail)
    assert len(detail["dice"]) == 3 and len(detail["hd95"]) == 3 and 0.0 <= detail["flip"] <= 1.0


def test_segmentation_gallery_examples_are_stored(seg_run):
    import numpy as np

    from medrobust.data import load_dataset
    from medrobust.store import Store

    store = Store(seg_run / "results.db")
    ex = store.examples([k for (k,) in store.conn.execute("SELECT key FROM cells")])
    store.close()
    ds = load_dataset("mni152-tissue", split="test")
    for i in (0, 1):  # default gallery: the first two samples
        x, y, _ = ds[i]
        np.testing.assert_array_equal(ex[("tiny-unet", "clean", 0.0, i, "image")], x.numpy())
        np.testing.assert_array_equal(ex[("tiny-unet", "clean", 0.0, i, "label")], y.numpy())
        assert ex[("tiny-unet", "clean", 0.0, i, "pred")].dtype == np.uint8
        delta = ex[("tiny-unet", "pgd", 0.03, i, "delta")]
        assert delta.dtype == np.float16 and delta.shape == x.shape
        assert 0 < float(np.abs(delta.astype(np.float32)).max()) <= 0.03 * (1 + 1e-3)
        assert ex[("tiny-unet", "dag", 2.0, i, "pred")].shape == y.shape
    assert ("tiny-unet", "clean", 0.0, 2, "image") not in ex
    assert not any(pert.startswith("matched_noise") for (_, pert, _, _, _) in ex)
    # clean: image, label, pred; each perturbed (perturbation, strength): delta and pred; for 2 samples
    perturbed = {("rician_noise", 0.1), ("pgd", 0.03), ("dag", 0.5), ("dag", 2.0), ("asma", 0.5), ("asma", 4.0)}
    assert len(ex) == 2 * (3 + 2 * len(perturbed))


def test_segmentation_report_draws_the_gallery(seg_run):
    import base64
    import io
    import re

    from PIL import Image

    from medrobust.report import build_report
    from medrobust.report.analysis import gallery
    from medrobust.report.data import load_run

    html = build_report(seg_run)[0].read_text()
    (src,) = re.findall(r'<figure class="gallery" data-model="tiny-unet"><img src="data:image/png;base64,([^"]+)"', html)
    png = Image.open(io.BytesIO(base64.b64decode(src)))
    png.load()
    assert png.width > 400 and png.height > 400
    (g,) = gallery(load_run(seg_run), {})
    assert g.orientation == "RAS"  # the MNI slices are drawn anatomically upright
    assert g.dense and [r.title for r in g.rows] == [
        "rician_noise @ 0.1", "pgd @ 0.03", "dag @ 2", "asma @ 4"]
    for row in g.rows:
        for i in g.samples:
            # 'changed' is whether any pixel's predicted label differs from the clean prediction
            assert row.changed[i] == bool((row.pred[i] != g.clean_pred[i]).any())
