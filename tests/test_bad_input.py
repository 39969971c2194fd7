"""Bad input, table-driven: every case gives exit code 2 and one line naming the problem (or the documented
behaviour), writes nothing outside the run folder, and no payload of a crafted checkpoint or spec ever runs.

Each case builds its files in a fresh folder, runs one command line in-process, and checks: the exit code, a
message, no traceback, and that the only files created or changed are the ones the case allows (its run
folder). Security cases also check that the marker file their payload would create does not exist.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_cases_cli import CLI_CASES
from bad_cases_data import DATA_CASES
from bad_input_kit import (
    DATA,
    MARKER,
    Case,
    cast_weights,
    copy_ckpt,
    finished_run,
    nan_weights,
    payload,
    raw_spec,
    run_args,
    runner,
    write_npz,
    write_spec,
)
from filelock import FileLock

import medrobust
from medrobust.cli import app
from medrobust.models import load_model
from medrobust.train import TrainSettings, train


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad-input") / "tiny"
    train(TrainSettings(architecture="small-cnn", arch_kwargs={"width": 4}, dataset="derm-synth",
                        dataset_params=DATA["params"], epochs=1, seed=0), out)
    return out


LINKED = r"is a symbolic link; medrobust does not write through links"
OUTSIDE = ("target.txt", "outside")


CASES = [
    # --- security: checkpoints and specs are data ---------------------------------------------------------------
    Case("card factory os:system (evaluate)", lambda c, d: ["evaluate", "--model", str(copy_ckpt(
        c, d, architecture="os:system", arch_kwargs=payload(d)))], r"'os:system' is a module:function factory.*--trust-code",
        marker=True),
    Case("card factory numpy:load with pickles (evaluate)", lambda c, d: ["evaluate", "--model", str(copy_ckpt(
        c, d, architecture="numpy:load", arch_kwargs={"file": str(d / "evil.pkl"), "allow_pickle": True}))],
        r"'numpy:load' is a module:function factory", marker=True),
    Case("card factory in a spec checkpoint (run)", lambda c, d: run_args(d, write_spec(d, copy_ckpt(
        c, d, architecture="os:system", arch_kwargs=payload(d)))), r"module:function factory.*trust_code: true",
        marker=True),
    Case("spec train.architecture factory (run)", lambda c, d: run_args(d, write_spec(d, None, models=[
        {"name": "m", "train": {"architecture": "os:system", "arch_kwargs": payload(d), "epochs": 1}}])),
        r"'os:system' is a module:function factory", marker=True),
    Case("train --arch factory", lambda c, d: ["train", "--arch", "os:system", "-a", f"command=touch {d / MARKER}",
                                               "--out", str(d / "run")], r"module:function factory", marker=True),
    Case("transfer source with a factory card", lambda c, d: run_args(d, write_spec(d, c, perturbations=[
        {"attack": "transfer", "strengths": [0.01], "params": {"sources": [str(copy_ckpt(
            c, d, architecture="os:system", arch_kwargs=payload(d)))]}}])), r"module:function factory", marker=True),
    Case("card weights ../ path", lambda c, d: ["evaluate", "--model", str(copy_ckpt(
        c, d, weights="../../../etc/passwd"))], r"weights '\.\./\.\./\.\./etc/passwd' must be a plain file name"),
    Case("card weights absolute path", lambda c, d: ["evaluate", "--model", str(copy_ckpt(
        c, d, weights="/etc/passwd"))], r"must be a plain file name inside the checkpoint folder"),
    Case("card weights symlink out of the folder", lambda c, d: ["evaluate", "--model", str(_symlinked(c, d))],
         r"outside the checkpoint folder"),
    Case("card weights hidden file", lambda c, d: ["evaluate", "--model", str(copy_ckpt(c, d, weights=".w.safetensors"))],
         r"must be a plain file name"),
    Case("card weights not a weights suffix", lambda c, d: ["evaluate", "--model", str(copy_ckpt(c, d, weights="model.pkl"))],
         r"ending in \.safetensors, \.pt, \.pth"),
    Case("model name with a newline", lambda c, d: run_args(d, write_spec(d, c, models=[
        {"name": "a\nb", "checkpoint": str(c)}])), r"must be printable text"),
    Case("model name too long", lambda c, d: run_args(d, write_spec(d, c, models=[
        {"name": "x" * 200, "checkpoint": str(c)}])), r"at most 128 characters"),
    # --- silently wrong results -------------------------------------------------------------------------------
    Case("NaN logits (run)", lambda c, d: run_args(d, write_spec(d, nan_weights(c, d))), r"NaN or infinite outputs",
         may_write=("run", "ckpt")),
    Case("NaN logits (evaluate)", lambda c, d: ["evaluate", "--model", str(nan_weights(c, d)), "--limit", "8"],
         r"NaN or infinite outputs", may_write=("ckpt",)),
    Case("NaN in the images", lambda c, d: ["evaluate", "--model", str(c), "--dataset", "medmnist", "-d",
                                            f"path={write_npz(d, images=_nan_images)}"], r"NaN or infinite values"),
    Case("float labels", lambda c, d: ["evaluate", "--model", str(c), "--dataset", "medmnist", "-d",
                                       f"path={write_npz(d, labels=lambda n: np.full((n, 1), 0.5))}"],
         r"non-integer values; expected class indices"),
    Case("negative labels", lambda c, d: ["evaluate", "--model", str(c), "--dataset", "medmnist", "-d",
                                          f"path={write_npz(d, labels=lambda n: -np.ones((n, 1), dtype=int))}"],
         r"negative labels"),
    Case("class names differ from the card", lambda c, d: run_args(d, write_spec(d, copy_ckpt(
        c, d, class_names=["benign", "malignant", "other"]))), r"predicts classes \['benign', 'malignant', 'other'\] but"),
    Case("class_map names an unknown class", lambda c, d: run_args(d, write_spec(d, c, models=[
        {"name": "tiny", "checkpoint": str(c), "class_map": {"mole": "nevus"}}])), r"class_map names \['mole'\]"),
    Case("failed spec keeps a finished run's spec.json", lambda c, d: run_args(
        d, write_spec(d, c, perturbations=[{"attack": "pgd", "strengths": [0.01], "params": {"stepz": 3}}])
        if finished_run(c, d) else None), r"did you mean 'steps'", unchanged=("run/spec.json", "run/results.db")),
    Case("empty results.db (run)", lambda c, d: [*run_args(d, write_spec(d, c))] if _empty_db(d) else [],
         r"results\.db' is empty \(0 bytes\)", unchanged=("run/results.db",)),
    Case("empty results.db (report)", lambda c, d: ["report", str(d / "run")] if _empty_db(d) else [],
         r"is empty \(0 bytes\)", unchanged=("run/results.db",)),
    Case("corrupt results.db (run)", lambda c, d: run_args(d, write_spec(d, c)) if _junk_db(d) else [],
         r"is not a SQLite database", unchanged=("run/results.db",)),
    Case("corrupt results.db (export)", lambda c, d: ["export", str(d / "run")] if _junk_db(d) else [],
         r"is not a SQLite database", unchanged=("run/results.db",)),
    Case("report keeps a good report.html", lambda c, d: ["report", str(_report_then_empty(c, d))],
         r"holds no finished cells", unchanged=("run/report.html",)),
    Case("strength .inf", lambda c, d: run_args(d, write_spec(d, c, perturbations=[{"attack": "fgsm", "strengths": [float("inf")]}])),
         r"must be finite numbers >= 0"),
    Case("strength NaN", lambda c, d: run_args(d, write_spec(d, c, perturbations=[{"attack": "fgsm", "strengths": [float("nan")]}])),
         r"must be finite numbers >= 0"),
    Case("negative strength", lambda c, d: run_args(d, write_spec(d, c, perturbations=[{"attack": "fgsm", "strengths": [-0.1]}])),
         r"must be finite numbers >= 0"),
    Case("another experiment in the folder", lambda c, d: run_args(d, write_spec(d, c, dataset={
        "name": "derm-synth", "params": {"size": 16, "n": 48}})) if finished_run(c, d) else [],
         r"holds another experiment \(dataset: .*--force", unchanged=("run/spec.json", "run/results.db")),
    Case("a second run while one holds the folder", lambda c, d: run_args(d, write_spec(d, c)) if _locked(d) else [],
         r"is in use by another medrobust run", may_write=("run",)),
    # --- tracebacks before: now one line -------------------------------------------------------------------------
    Case("weights of another shape", lambda c, d: ["evaluate", "--model", str(copy_ckpt(c, d, num_classes=5,
         class_names=list("abcde"), dataset={"name": "derm-synth"}))],
         r"do not fit the card's architecture 'small-cnn' \(3 channels, 5 classes\)"),
    Case("card label shares of another class count", lambda c, d: ["evaluate", "--model", str(copy_ckpt(c, d,
         num_classes=5, class_names=list("abcde")))], r"dataset.label_fractions \[.*\] must be 5 shares >= 0"),
    Case("weights file truncated", lambda c, d: ["evaluate", "--model", str(_truncated(c, d))], r"cannot be read"),
    Case("weights file missing", lambda c, d: ["evaluate", "--model", str(_no_weights(c, d))], r"does not exist"),
    Case("card not JSON", lambda c, d: ["evaluate", "--model", str(_card_text(c, d, "{not json"))], r"is not valid"),
    Case("card with an unknown key", lambda c, d: ["evaluate", "--model", str(copy_ckpt(c, d, shell="rm -rf /"))],
         r"is not valid: shell: extra inputs are not permitted \(got 'rm -rf /'\)"),
    Case("spec device cuda without CUDA", lambda c, d: run_args(d, write_spec(d, c, device="cuda")),
         r"CUDA is not available here"),
    Case("spec device bogus", lambda c, d: run_args(d, write_spec(d, c, device="gpu0")), r"'gpu0' is not a torch device"),
    Case("evaluate --device bogus", lambda c, d: ["evaluate", "--model", str(c), "--device", "gpu0"],
         r"'gpu0' is not a torch device"),
    Case("spec path is a folder", lambda c, d: ["run", str(d), "--out", str(d / "run")], r"is a folder"),
    Case("spec file missing", lambda c, d: ["run", str(d / "nope.yaml"), "--out", str(d / "run")], r"does not exist"),
    Case("spec not YAML", lambda c, d: ["run", str(_text(d, "spec.yaml", "a: [b")), "--out", str(d / "run")],
         r"not valid YAML"),
    Case("spec is a list", lambda c, d: ["run", str(_text(d, "spec.yaml", "- 1\n- 2\n")), "--out", str(d / "run")],
         r"expected a mapping"),
    Case("--out is a file", lambda c, d: ["run", str(write_spec(d, c)), "--out", str(_text(d, "run", "x"))],
         r"is a file", unchanged=("run",)),
    Case(".npz that is not a zip", lambda c, d: ["evaluate", "--model", str(c), "--dataset", "medmnist", "-d",
                                                f"path={_text(d, 'x.npz', 'hello')}"], r"is not a \.npz archive"),
    Case("evaluate --limit 0", lambda c, d: ["evaluate", "--model", str(c), "--limit", "0"], r"limit=0 must be"),
    Case("pgd:eps=abc", lambda c, d: ["evaluate", "--model", str(c), "--attack", "pgd:eps=abc"],
         r"eps='abc' is not a number"),
    Case("pgd:eps=-1", lambda c, d: ["evaluate", "--model", str(c), "--attack", "pgd:eps=-1"],
         r"eps=-1.0 must be a finite number >= 0"),
    Case("unknown attack parameter", lambda c, d: ["evaluate", "--model", str(c), "--attack", "pgd:eps=0.1,stepz=2"],
         r"did you mean 'steps'"),
    Case("duplicate model names", lambda c, d: run_args(d, write_spec(d, c, models=[
        {"name": "a", "checkpoint": str(c)}, {"name": "a", "checkpoint": str(c)}])), r"repeated: \['a'\]"),
    Case("transfer source missing", lambda c, d: run_args(d, write_spec(d, c, perturbations=[
        {"attack": "transfer", "strengths": [0.01], "params": {"sources": [str(d / "none")]}}])),
         r"neither a model of this spec"),
    Case("train --epochs 0", lambda c, d: ["train", "--epochs", "0", "--out", str(d / "run")], r"epochs=0 must be >= 1"),
    Case("report on a folder without results.db", lambda c, d: ["report", str(d)], r"has no results\.db"),
    Case("export on a missing folder", lambda c, d: ["export", str(d / "nope")], r"has no results\.db"),
    Case("model outputs 5 classes, card says 3 (trusted factory)", lambda c, d: [
        "evaluate", "--model", str(_five_way(d)), "--limit", "8", "--trust-code"],
         r"model 'five' cannot take the inputs of dataset 'derm-synth' \(one sample: \[3, 16, 16\]\): it returns 5 "
         r"outputs, the data have 3 classes", may_write=("ckpt5",)),
    Case("evaluate --device cuda without CUDA", lambda c, d: ["evaluate", "--model", str(c), "--device", "cuda"],
         r"CUDA is not available here", skip=lambda: "this machine has CUDA" if torch.cuda.is_available() else ""),
    Case("summary.csv links out of the run folder", lambda c, d: run_args(d, write_spec(d, c)) if _link_out(d) else [],
         r"summary\.csv' is a symbolic link; medrobust does not write through links", unchanged=("target.txt",)),
    Case("read-only run folder", lambda c, d: run_args(d, write_spec(d, c)) if _read_only(d) else [],
         r"is not writable", unchanged=("run",),
         skip=lambda: "root writes to read-only folders" if os.geteuid() == 0 else ""),
    # --- untrusted YAML: bounded, nothing silently dropped --------------------------------------------------------
    Case("YAML alias bomb in a spec", lambda c, d: run_args(d, raw_spec(d, c, "lol: &a [x, x, x, x, x, x, x, x, x]\n"
         "lol2: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nlol3: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n")),
         r"line 10: the alias \*a is not accepted"),
    Case("YAML key given twice (perturbations)", lambda c, d: run_args(d, raw_spec(d, c,
         "perturbations:\n  - {attack: fgsm, strengths: [0.01]}\n")), r"line 9: key 'perturbations' is given twice"),
    Case("YAML key given twice inside a model", lambda c, d: run_args(d, raw_spec(d, c, "", models=(
         f"models:\n  - name: a\n    checkpoint: {c}\n    name: b\n"))), r"line 8: key 'name' is given twice"),
    Case("YAML nested 200 levels deep", lambda c, d: run_args(d, raw_spec(d, c, "deep: " + "[" * 200 + "]" * 200 + "\n")),
         r"nested deeper than 32 levels"),
    Case("spec file of 2 MB", lambda c, d: run_args(d, raw_spec(d, c, "# " + "x" * 2_000_000 + "\n")),
         r"2,000,\d+ bytes; a spec or label file is at most 1,000,000"),
    # --- numbers out of range -----------------------------------------------------------------------------------------
    Case("spec seed 2**70", lambda c, d: run_args(d, write_spec(d, c, seed=2**70)), r"seed: .*less than or equal to "
         r"9223372036854775807"),
    Case("spec seed -1", lambda c, d: run_args(d, write_spec(d, c, seed=-1)), r"seed: .*greater than or equal to 0"),
    Case("train --seed 2**64", lambda c, d: ["train", "--seed", str(2**64), "--out", str(d / "run")],
         r"seed=18446744073709551616 must be an integer in \[0, 9223372036854775807\]"),
    Case("run --threads 0", lambda c, d: run_args(d, write_spec(d, c), "--threads", "0"), r"--threads 0 must be >= 1"),
    Case("run --address without the ray executor", lambda c, d: run_args(d, write_spec(d, c), "--address", "1.2.3.4:6379"),
         r"address '1\.2\.3\.4:6379' is used by the ray executor only"),
    Case("run --shard-size 0", lambda c, d: run_args(d, write_spec(d, c), "--shard-size", "0"),
         r"--shard-size: input should be greater than or equal to 1 \(got 0\)"),
    Case("run --executor threads", lambda c, d: run_args(d, write_spec(d, c), "--executor", "threads"),
         r"--executor: input should be 'local', 'processes' or 'ray' \(got 'threads'\)"),
    Case("spec executor workers with local", lambda c, d: run_args(d, write_spec(d, c, executor={"workers": 2})),
         r"workers: 2 is used by the processes executor only"),
    # --- sizes from untrusted data, refused before any memory is asked for ------------------------------------------
    Case("card arch_kwargs ask for terabytes (evaluate)", lambda c, d: ["evaluate", "--model", str(copy_ckpt(
        c, d, arch_kwargs={"width": 10**6}))], r"would hold 90,000,074,000,006 parameters \(335,276\.4 GiB as float32\)"
        r".*MEDROBUST_MAX_PARAMETERS"),
    Case("spec train arch_kwargs ask for terabytes (run)", lambda c, d: run_args(d, write_spec(d, None, models=[
        {"name": "m", "train": {"architecture": "small-cnn", "arch_kwargs": {"width": 10**6}, "epochs": 1}}])),
        r"'small-cnn' with arch_kwargs \{'width': 1000000\} would hold"),
    Case("card weights stored as float64 (evaluate)", lambda c, d: ["evaluate", "--model", str(cast_weights(c, d))],
         r"'[^']+' is stored as float64 but the card's architecture 'small-cnn' holds float32 there; it would be cast"),
    Case("headline_metric of another task", lambda c, d: run_args(d, write_spec(d, c, headline_metric="dice")),
         r"headline_metric 'dice' is not a score of dataset 'derm-synth' \(a classification task\); expected one of "
         r"\['accuracy', 'auc', 'balanced_accuracy'\]"),
    Case("an npz label of 10**9", lambda c, d: ["evaluate", "--model", str(c), "--dataset", "medmnist", "-d",
         f"path={write_npz(d, labels=lambda n: np.where(np.arange(n) == 0, 10**9, np.arange(n) % 2)[:, None])}"],
         r"the largest label 1000000000 implies 1,000,000,001 classes but the file holds 36 labels in all"),
    Case("derm-synth size 100000", lambda c, d: run_args(d, write_spec(d, c, dataset={
        "name": "derm-synth", "params": {"size": 100000, "n": 40}})), r"size=100000 must be <= 1024 pixels"),
    Case("derm-synth n 10**8", lambda c, d: run_args(d, write_spec(d, c, dataset={
        "name": "derm-synth", "params": {"size": 64, "n": 10**8}})),
         r"n=100000000 images of 64x64 would take 1144\.4 GiB \(at most 4 GiB\)"),
    Case("--reference strength the run does not have", lambda c, d: ["report", str(finished_run(c, d)), "--reference",
         "linf=0.5"], r"--reference linf=0\.5: the run has no linf strength 0\.5; its linf strengths: 0\.01"),
    Case("--reference of an unknown norm", lambda c, d: ["report", str(finished_run(c, d)), "--reference", "l3=0.1"],
         r"--reference l3=0\.1: no attack of this run has norm 'l3'; its norms: linf"),
    Case("spec reference_strength of an unknown norm", lambda c, d: run_args(d, write_spec(
        d, c, reference_strength={"linfinity": 0.01})), r"reference_strength: norm 'linfinity' is not one of linf, l2, l0"),
    Case("spec reference_strength of 0", lambda c, d: run_args(d, write_spec(d, c, reference_strength={"l2": 0.0})),
         r"reference_strength: l2: 0\.0 must be a finite strength > 0"),
    # --- documented behaviour (exit 0) --------------------------------------------------------------------------
    Case("absolute model name stays inside the run folder", lambda c, d: run_args(d, write_spec(d, None, models=[
        {"name": str(d / "elsewhere"), "train": {"architecture": "small-cnn", "arch_kwargs": {"width": 2}, "epochs": 1}}],
        perturbations=[])), r"cells run", code=0, check=lambda d: _no_path(d / "elsewhere")),
    Case("--malignant is escaped in summary.md", lambda c, d: ["report", str(finished_run(c, d)), "--malignant",
                                                               "<img src=x onerror=alert(1)>|"], r"report:", code=0,
         check=lambda d: _escaped_summary(d / "run" / "summary.md")),
    Case("model name ../../x stays inside the run folder", lambda c, d: run_args(d, write_spec(d, None, models=[
        {"name": "../../x", "train": {"architecture": "small-cnn", "arch_kwargs": {"width": 2}, "epochs": 1}}],
        perturbations=[])), r"cells run", code=0),
    Case("model name with Rich markup", lambda c, d: run_args(d, write_spec(d, c, models=[
        {"name": "a[/]b [bold]", "checkpoint": str(c)}])), r"a\[/\]b \[bold\]", code=0),
    Case("eps above the input range warns", lambda c, d: run_args(d, write_spec(d, c, perturbations=[
        {"attack": "fgsm", "strengths": [2.0]}])), r"warning: fgsm eps \[2\.0\] on tiny is at least its whole input range",
        code=0),
    # --- a store that proves it is whole: tampered JSON columns are named, not low-level errors ----------------
    Case("records: probs_json not JSON (report)", lambda c, d: ["report", str(_tampered(
        c, d, "UPDATE records SET probs_json='[0.1, 0.2' WHERE sample_index=3 AND perturbation='fgsm'"))],
        r"record 3 of tiny / fgsm at 0\.01: probs_json is not valid JSON; results\.db was changed outside"),
    Case("records: probs_json of strings (export)", lambda c, d: ["export", str(_tampered(
        c, d, "UPDATE records SET probs_json='[\"a\", \"b\", \"c\"]' WHERE sample_index=0 AND kind='clean'"))],
        r"record 0 of tiny / clean at 0: probs_json holds non-numbers"),
    Case("records: detail_json an array (report)", lambda c, d: ["report", str(_tampered(
        c, d, "UPDATE records SET detail_json='[1]' WHERE sample_index=1 AND perturbation='fgsm'"))],
        r"record 1 of tiny / fgsm at 0\.01: detail_json holds a JSON list, expected a dict"),
    Case("cells: strengths_json nested 100000 deep (report)", lambda c, d: ["report", str(_tampered(
        c, d, "UPDATE cells SET strengths_json='" + "[" * 100_000 + "]" * 100_000 + "' WHERE perturbation='fgsm'"))],
        r"cell tiny / fgsm: strengths_json is not valid JSON"),
    Case("cells: threat_json a string (export)", lambda c, d: ["export", str(_tampered(
        c, d, "UPDATE cells SET threat_json='\"linf\"' WHERE perturbation='fgsm'"))],
        r"cell tiny / fgsm: threat_json holds a JSON str, expected a dict"),
    Case("models: card_json a list (report)", lambda c, d: ["report", str(_tampered(
        c, d, "UPDATE models SET card_json='[]'"))], r"model tiny: card_json holds a JSON list, expected a dict"),
    Case("models: bounds_json of one number (report)", lambda c, d: ["report", str(_tampered(
        c, d, "UPDATE models SET bounds_json='[0]'"))], r"model tiny: bounds_json holds \[0\], expected two numbers"),
    Case("runs: spec_json truncated (report)", lambda c, d: ["report", str(_tampered(
        c, d, "UPDATE runs SET spec_json=substr(spec_json, 1, 20)"))], r"run 1: spec_json is not valid JSON"),
    Case("runs: versions_json null (report)", lambda c, d: ["report", str(_tampered(
        c, d, "UPDATE runs SET versions_json='null'"))],
         r"run 1: versions_json holds a JSON NoneType, expected a dict"),
    # --- the model cache of a run folder is checked before reuse ------------------------------------------------
    Case("cached model with other weights", lambda c, d: _swapped_cache(c, d),
         r"model 'm': the weights cached in .* \(fingerprint [0-9a-f]+\) are not the ones this run folder trained",
         may_write=("run", "other", "spec.yaml"), unchanged=("run/results.db", "run/summary.json")),
    Case("cached model whose card records other arch_kwargs", lambda c, d: _recarded_cache(c, d),
         r"model 'm': the cached model in .* records arch_kwargs \{'width': 64\} but the spec trains it with "
         r"\{'width': 2\}; delete that folder", may_write=("run", "spec.yaml"), unchanged=("run/results.db",)),
    # --- data of another input shape than the card's -----------------------------------------------------------
    Case("grayscale data for a colour model", lambda c, d: ["evaluate", "--model", str(c), "--dataset", "medmnist",
                                                            "-d", f"path={write_npz(d, labels=lambda n: (np.arange(n) % 3)[:, None])}"],
         r"model 'small-cnn-derm-synth-s0' takes inputs of shape \[3, 16, 16\] \(channels first\) but dataset 'medmnist' gives "
         r"\[1, 28, 28\]"),
    Case("images of another size warn", lambda c, d: ["evaluate", "--model", str(c), "-d", "size=24", "--limit", "8",
                                                      "--attack", "fgsm:eps=0.01"],
         r"warning: model 'small-cnn-derm-synth-s0' was trained on \[16, 16\] images but dataset 'derm-synth' gives \[24, 24\]", code=0),
    Case("evaluate --attack transfer", lambda c, d: ["evaluate", "--model", str(c), "--attack",
                                                    f"transfer:eps=0.01,sources=[{c}]"],
         r"--attack transfer: a transfer attack crafts its examples on other models.*run a spec instead"),
    # --- MLflow: checked before the run --------------------------------------------------------------------------
    Case("MLflow server that does not answer", lambda c, d: run_args(d, write_spec(d, c), "--mlflow",
                                                                     "http://127.0.0.1:9"),
         r"MLflow server 'http://127\.0\.0\.1:9' cannot be reached \(.*refused\)", skip=lambda: _no_mlflow()),
    Case("link planted in the run folder's MLflow store", lambda c, d: _mlflow_link(c, d),
         r"run/mlflow/artifacts/summary\.json' is a symbolic link; medrobust does not write through links",
         unchanged=("target.txt",), skip=lambda: _no_mlflow()),
    # --- a link planted in a run folder: refused with one line; what it points at keeps its bytes -----------------
    Case("link at summary.json (report)", lambda c, d: ["report", str(_planted(c, d, "summary.json"))],
         r"summary\.json' " + LINKED, unchanged=OUTSIDE),
    Case("link at report.html (report)", lambda c, d: ["report", str(_planted(c, d, "report.html"))],
         r"report\.html' " + LINKED, unchanged=OUTSIDE),
    Case("link at comparisons.json (report)", lambda c, d: ["report", str(_planted(c, d, "comparisons.json"))],
         r"comparisons\.json' " + LINKED, unchanged=OUTSIDE),
    Case("link at summary.md (run)", lambda c, d: run_args(d, write_spec(d, c)) if _planted(
        c, d, "summary.md", finished=False) else [], r"summary\.md' " + LINKED, unchanged=OUTSIDE),
    Case("link at spec.json (run)", lambda c, d: run_args(d, write_spec(d, c)) if _planted(
        c, d, "spec.json", finished=False) else [], r"spec\.json' " + LINKED, unchanged=OUTSIDE),
    Case("link at results.db-wal (run)", lambda c, d: run_args(d, write_spec(d, c)) if _planted(
        c, d, "results.db-wal", finished=False) else [], r"results\.db-wal' " + LINKED, unchanged=OUTSIDE),
    Case("link at the lock file (run)", lambda c, d: run_args(d, write_spec(d, c)) if _planted(
        c, d, ".medrobust.lock", finished=False) else [], r"\.medrobust\.lock' " + LINKED, unchanged=OUTSIDE),
    Case("model cache folder links out (run)", lambda c, d: run_args(d, write_spec(d, None, models=[
        {"name": "m", "train": {"architecture": "small-cnn", "arch_kwargs": {"width": 2}, "epochs": 1}}],
        perturbations=[])) if _planted(c, d, "models", finished=False, folder=True) else [],
         r"run/models' " + LINKED, unchanged=OUTSIDE, check=lambda d: _empty(d / "outside")),
    Case("link at records.csv (export)", lambda c, d: ["export", str(_planted(c, d, "records.csv")), "--format", "csv"],
         r"records\.csv' " + LINKED, unchanged=OUTSIDE),
    Case("export --out through a link", lambda c, d: ["export", str(_planted(c, d, "out.json")), "--out",
                                                      str(d / "run" / "out.json")],
         r"out\.json' " + LINKED, unchanged=OUTSIDE),
    Case("--force adds to another experiment's folder", lambda c, d: [*run_args(d, write_spec(d, c, dataset={
        "name": "derm-synth", "params": {"size": 16, "n": 48}}), "--force")] if finished_run(c, d) else [],
         r"cells run", code=0),
]

CASES += DATA_CASES + CLI_CASES

FIVE_WAY = """
from medrobust.models.zoo import SmallCNN


def build(in_channels, num_classes, width=4):
    return SmallCNN(in_channels, 5, width=width)  # ignores num_classes: five outputs whatever the card says
"""


def _five_way(d: Path) -> Path:
    """A checkpoint whose (trusted) factory returns 5 outputs while its card says 3 classes."""
    import sys

    from medrobust.models.card import ModelCard, build_model, save_checkpoint

    module = f"fiveway_{abs(hash(str(d)))}"
    (d / f"{module}.py").write_text(FIVE_WAY)
    sys.path.insert(0, str(d))  # stays importable for the command; the module name is unique to this case
    card = ModelCard(name="five", architecture=f"{module}:build", in_channels=3, num_classes=3,
                     class_names=["nevus", "melanoma", "seborrheic_keratosis"], input_shape=[3, 16, 16],
                     dataset=DATA)
    save_checkpoint(build_model(card, trust_code=True), card, d / "ckpt5")
    return d / "ckpt5"


def _link_out(d: Path) -> bool:
    (d / "run").mkdir()
    (d / "target.txt").write_text("keep me")
    (d / "run" / "summary.csv").symlink_to(d / "target.txt")
    return True


def _read_only(d: Path) -> bool:
    (d / "run").mkdir()
    (d / "run").chmod(0o555)
    return True


def _empty(folder: Path) -> None:
    assert not any(folder.iterdir()), "a file was written through the link"


def _no_path(path: Path) -> None:
    """The model named by an absolute path was cached inside the run folder, under a safe name."""
    assert not list(path.parent.glob(path.name + "*")), "a model name became a path outside the run folder"
    (folder,) = (path.parent / "run" / "models").iterdir()
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*elsewhere-[0-9a-f]{16}", folder.name), folder.name


def _escaped_summary(path: Path) -> None:
    text = path.read_text()
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)>\\|" in text


def _nan_images(n: int) -> np.ndarray:
    images = np.random.default_rng(0).random((n, 16, 16, 3)).astype(np.float32)  # the card's input shape
    images[0, 3, 3, 0] = np.nan
    return images


def _tampered(ckpt: Path, d: Path, sql: str) -> Path:
    """A finished run whose results.db was then edited by ``sql``."""
    run = finished_run(ckpt, d)
    con = sqlite3.connect(run / "results.db")
    with con:
        con.execute(sql)
    con.close()
    return run


def _cached_run(d: Path, **train) -> Path:
    """A spec that trains a tiny model, run once (its model is cached in run/models); the spec stays for the
    case's own command."""
    spec = write_spec(d, None, models=[{"name": "m", "train": {
        "architecture": "small-cnn", "arch_kwargs": {"width": 2}, "epochs": 1, **train}}], perturbations=[])
    assert runner.invoke(app, run_args(d, spec)).exit_code == 0
    return spec


def _swapped_cache(ckpt: Path, d: Path) -> list[str]:
    """The cached model's weights replaced by other weights of the same shape (another seed's training)."""
    spec = _cached_run(d)
    (cached,) = (d / "run" / "models").iterdir()
    other = d / "other"
    train(TrainSettings(architecture="small-cnn", arch_kwargs={"width": 2}, dataset="derm-synth",
                        dataset_params=DATA["params"], epochs=1, seed=5), other)
    shutil.copyfile(other / "model.safetensors", cached / "model.safetensors")
    return run_args(d, spec)


def _recarded_cache(ckpt: Path, d: Path) -> list[str]:
    """The cached model's card edited to record another architecture's settings (arch_kwargs)."""
    spec = _cached_run(d)
    (cached,) = (d / "run" / "models").iterdir()
    card = json.loads((cached / "model.json").read_text())
    card["arch_kwargs"] = {"width": 64}
    (cached / "model.json").write_text(json.dumps(card))
    return run_args(d, spec)


def _mlflow_link(ckpt: Path, d: Path) -> list[str]:
    """A run folder whose MLflow store holds a link to a file outside it."""
    (d / "target.txt").write_text("keep me")
    (d / "run" / "mlflow" / "artifacts").mkdir(parents=True)
    (d / "run" / "mlflow" / "artifacts" / "summary.json").symlink_to(d / "target.txt")
    return run_args(d, write_spec(d, ckpt, mlflow=True))


def _planted(ckpt: Path, d: Path, name: str, *, finished: bool = True, folder: bool = False) -> Path:
    """A run folder (finished, or new) where ``name`` is a symbolic link to ``d/target.txt`` (or, ``folder``, to
    the folder ``d/outside``), outside the run folder; returns the run folder."""
    run = finished_run(ckpt, d) if finished else d / "run"
    run.mkdir(exist_ok=True)
    (d / "target.txt").write_text("keep me")
    (d / "outside").mkdir()
    link = run / name
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    link.unlink(missing_ok=True)
    link.symlink_to(d / "outside" if folder else d / "target.txt")
    return run


def _no_mlflow() -> str:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return "MLflow is an extra (pip install 'medrobust[mlflow]')"
    return ""


def _symlinked(ckpt: Path, d: Path) -> Path:
    out = copy_ckpt(ckpt, d, weights="w.safetensors")
    (out / "w.safetensors").symlink_to(ckpt / "model.safetensors")
    return out


def _truncated(ckpt: Path, d: Path) -> Path:
    out = copy_ckpt(ckpt, d)
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: len(data) // 3])
    return out


def _no_weights(ckpt: Path, d: Path) -> Path:
    out = copy_ckpt(ckpt, d)
    (out / "model.safetensors").unlink()
    return out


def _card_text(ckpt: Path, d: Path, text: str) -> Path:
    out = copy_ckpt(ckpt, d)
    (out / "model.json").write_text(text)
    return out


def _text(d: Path, name: str, text: str) -> Path:
    (d / name).write_text(text)
    return d / name


def _empty_db(d: Path) -> bool:
    (d / "run").mkdir()
    (d / "run" / "results.db").write_bytes(b"")
    return True


def _junk_db(d: Path) -> bool:
    (d / "run").mkdir()
    (d / "run" / "results.db").write_bytes(os.urandom(4096))
    return True


def _report_then_empty(ckpt: Path, d: Path) -> Path:
    """A run folder whose report.html is good but whose results.db now holds no finished cells."""
    run = finished_run(ckpt, d)
    con = sqlite3.connect(run / "results.db")
    with con:
        con.execute("DELETE FROM records")
        con.execute("DELETE FROM cells")
    con.close()
    return run


_held: list[FileLock] = []


def _locked(d: Path) -> bool:
    (d / "run").mkdir()
    lock = FileLock(str(d / "run" / ".medrobust.lock"), timeout=0, thread_local=False)
    lock.acquire()
    _held.append(lock)
    return True


def snapshot(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink() or p.is_dir():
            out[str(p.relative_to(root))] = None
        else:
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    if case.name == "spec device cuda without CUDA" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    reason = case.skip() if case.skip else ""
    if reason:
        pytest.skip(reason)
    d = tmp_path / "case"
    d.mkdir()
    monkeypatch.chdir(d)  # anything written to a relative path lands here and is seen by the snapshot
    args = case.setup(ckpt, d)
    before = snapshot(tmp_path)
    outside_before = snapshot(ckpt)
    try:
        result = runner.invoke(app, args, env={"COLUMNS": "200"})
    finally:
        while _held:
            _held.pop().release()
    out = result.output  # stdout and stderr
    assert result.exit_code == case.code, (case.name, out, result.exception)
    assert re.search(case.message, out, flags=re.S), (case.name, out)
    assert "Traceback" not in out
    if case.code == 2:  # one line on stderr
        assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, out
    after = snapshot(tmp_path)
    allowed = tuple(f"case/{p}" for p in case.may_write)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k) or (k in before) != (k in after)}
    stray = sorted(k for k in changed if not k.startswith(allowed))
    assert not stray, (case.name, stray)
    for rel in case.unchanged:
        assert before.get(f"case/{rel}") == after.get(f"case/{rel}"), (case.name, rel)
    assert snapshot(ckpt) == outside_before  # the shared checkpoint is never touched
    if case.marker:
        assert not (d / MARKER).exists(), f"{case.name}: the payload ran"
    if case.check:
        case.check(d)


def test_at_least_150_cases() -> None:
    assert len(CASES) >= 150 and len({c.name for c in CASES}) == len(CASES)


def test_api_refuses_factories_and_bad_tensors(ckpt: Path, tmp_path: Path) -> None:
    """The Python API: the same refusals as the command line, and clear errors for bad tensors."""
    evil = copy_ckpt(ckpt, tmp_path, architecture="os:system", arch_kwargs=payload(tmp_path))
    with pytest.raises(ValueError, match="module:function factory"):
        medrobust.load_model(evil)
    assert not (tmp_path / MARKER).exists()
    model, _ = load_model(ckpt)
    x = torch.rand(4, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"do not form a batch.*unsqueeze"):
        medrobust.attack("pgd", model, x[0], y[:1], eps=0.01)
    with pytest.raises(ValueError, match="labels y must be integer class indices"):
        medrobust.attack("pgd", model, x, y.float() + 0.5, eps=0.01)
    bad = x.clone()
    bad[2, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite values in 1 of 4 samples"):
        medrobust.attack("pgd", model, bad, y, eps=0.01)
    # integer-valued float labels are accepted; an empty batch comes back empty
    assert medrobust.attack("fgsm", model, x, y.float(), eps=0.01).shape == x.shape
    empty = medrobust.attack("pgd", model, x[:0], y[:0], eps=0.01)
    assert empty.shape == (0, 3, 16, 16)
