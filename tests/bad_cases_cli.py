"""Rows of the bad-input table (tests/test_bad_input.py): cli.

Model cards, command-line options, spec fields, attack parameters and training options that are the wrong type,
out of range or the wrong kind of path: each is refused before any data is loaded or any attack runs, on one line
that names the value, the key and what was expected.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bad_input_kit import Case, copy_ckpt, run_args, write_spec

SEED_RANGE = r"\[0, 9223372036854775807\]"


def _card_text(ckpt: Path, d: Path, text: str | bytes) -> Path:
    """A copy of the checkpoint whose model.json holds ``text`` as it is."""
    out = d / "ckpt"
    shutil.copytree(ckpt, out)
    (out / "model.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    return out


def _card_folder(ckpt: Path, d: Path) -> Path:
    """A copy of the checkpoint whose model.json is a folder."""
    out = d / "ckpt"
    shutil.copytree(ckpt, out)
    (out / "model.json").unlink()
    (out / "model.json").mkdir()
    return out


def _ev(model: Path, *extra: str) -> list[str]:
    return ["evaluate", "--model", str(model), "--limit", "8", *extra]


def _attack(ckpt: Path, spec: str) -> list[str]:
    return _ev(ckpt, "--attack", spec)


def _train(d: Path, *extra: str) -> list[str]:
    return ["train", "--out", str(d / "run"), "-d", "size=16", "-d", "n=40", "--epochs", "1", *extra]


def _pgd(d: Path, ckpt: Path, **params) -> list[str]:
    return run_args(d, write_spec(d, ckpt, perturbations=[{"attack": "pgd", "strengths": [0.01], "params": params}]))


def _trained(d: Path, **train) -> list[str]:
    return run_args(d, write_spec(d, None, models=[{"name": "m", "train": {"architecture": "small-cnn", "epochs": 1,
                                                                             **train}}]))


CARD = r"model card '[^']+/ckpt/model\.json' is not valid: "

CLI_CASES: list[Case] = [
    # --- model cards: every field has exactly its type, sizes agree, the file itself is bounded ---------------------
    Case("card num_classes as a string", lambda c, d: _ev(copy_ckpt(c, d, num_classes="3")),
         CARD + r"num_classes: input should be a valid integer \(got '3'\)"),
    Case("card num_classes negative", lambda c, d: _ev(copy_ckpt(c, d, num_classes=-3)),
         CARD + r"num_classes: input should be greater than or equal to 1 \(got -3\)"),
    Case("card class_names not a list", lambda c, d: _ev(copy_ckpt(c, d, class_names="nevus")),
         CARD + r"class_names: input should be a valid list \(got 'nevus'\)"),
    Case("card class_names fewer than num_classes", lambda c, d: _ev(copy_ckpt(c, d, class_names=["a", "b"])),
         CARD + r"class_names has 2 names \['a', 'b'\] but num_classes is 3; expected one name per class"),
    Case("card arch_kwargs a list", lambda c, d: _ev(copy_ckpt(c, d, arch_kwargs=[4])),
         CARD + r"arch_kwargs: input should be a valid dictionary \(got \[4\]\)"),
    Case("card input_shape of strings", lambda c, d: _ev(copy_ckpt(c, d, input_shape=["3", "16", "16"])),
         CARD + r"input_shape\.0: input should be a valid integer \(got '3'\)"),
    Case("card input_shape empty", lambda c, d: _ev(copy_ckpt(c, d, input_shape=[])),
         CARD + r"input_shape \[\] must be 3 sizes >= 1: channels, then the 2 spatial sizes"),
    Case("card input_shape with a zero", lambda c, d: _ev(copy_ckpt(c, d, input_shape=[3, 0, 16])),
         CARD + r"input_shape \[3, 0, 16\] must be 3 sizes >= 1"),
    Case("card input_shape channels differ from in_channels",
         lambda c, d: _ev(copy_ckpt(c, d, input_shape=[1, 16, 16])),
         CARD + r"input_shape \[1, 16, 16\] starts with 1 channels but in_channels is 3"),
    Case("card in_channels 0", lambda c, d: _ev(copy_ckpt(c, d, in_channels=0)),
         CARD + r"in_channels: input should be greater than or equal to 1 \(got 0\)"),
    Case("card spatial_dims 5", lambda c, d: _ev(copy_ckpt(c, d, spatial_dims=5)),
         CARD + r"spatial_dims: input should be less than or equal to 3 \(got 5\)"),
    Case("card arch_kwargs width 0", lambda c, d: _ev(copy_ckpt(c, d, arch_kwargs={"width": 0})),
         r"model card '[^']+model\.json': small-cnn: width=0 must be an integer >= 1"),
    Case("card arch_kwargs width -3", lambda c, d: _ev(copy_ckpt(c, d, arch_kwargs={"width": -3})),
         r"model card '[^']+model\.json': small-cnn: width=-3 must be an integer >= 1"),
    Case("card arch_kwargs width a string", lambda c, d: _ev(copy_ckpt(c, d, arch_kwargs={"width": "abc"})),
         CARD + r"arch_kwargs: small-cnn: width='abc' must be an integer"),
    Case("card arch_kwargs sets in_channels", lambda c, d: _ev(copy_ckpt(c, d, arch_kwargs={"in_channels": 3})),
         CARD + r"arch_kwargs sets in_channels=3, which medrobust passes the architecture itself"),
    Case("card task unknown", lambda c, d: _ev(copy_ckpt(c, d, task="regression")),
         CARD + r"task: task 'regression' is not one of classification, ordinal, segmentation"),
    Case("card bounds NaN", lambda c, d: _ev(copy_ckpt(c, d, bounds=[float("nan"), 1.0])),
         CARD + r"bounds \[nan, 1\.0\] must be two finite numbers, low < high"),
    Case("card std 0", lambda c, d: _ev(copy_ckpt(c, d, std=[0, 1, 1])),
         CARD + r"std \[0\.0, 1\.0, 1\.0\] must be 3 finite numbers > 0, one per input channel"),
    Case("card dataset.params a list", lambda c, d: _ev(copy_ckpt(c, d, dataset={"name": "derm-synth", "params": [1]})),
         CARD + r"dataset\.params \[1\] must be a mapping of dataset parameters"),
    Case("card nested 10000 levels deep", lambda c, d: _ev(_card_text(c, d, '{"name": ' + "[" * 10000 + "]" * 10000
                                                                      + "}")),
         r"model\.json': JSON nested deeper than 32 levels"),
    Case("card of 2 MB", lambda c, d: _ev(_card_text(c, d, '{"name": "' + "x" * 2_000_000 + '"}')),
         r"model\.json' is 2,000,012 bytes; a model card is at most 1,000,000"),
    Case("card not UTF-8", lambda c, d: _ev(_card_text(c, d, b"\xff\xfe{}")),
         r"model\.json' is not UTF-8 text \(byte 0\); expected a JSON model card"),
    Case("card a JSON list", lambda c, d: _ev(_card_text(c, d, json.dumps([1, 2]))),
         CARD + r"expected a JSON object of fields, got list"),
    Case("card model.json is a folder", lambda c, d: _ev(_card_folder(c, d)),
         r"model card '[^']+model\.json' is not a file; expected the JSON card written by `medrobust train`"),
    # --- a weights file where a checkpoint folder is expected -------------------------------------------------------
    Case("evaluate --model the .safetensors file", lambda c, d: _ev(c / "model.safetensors"),
         r"checkpoint '[^']+model\.safetensors' is a file; expected a checkpoint folder holding model\.json and its "
         r"weights \(or the path of that model\.json\); did you mean its folder '[^']+tiny'\?"),
    Case("spec checkpoint the .safetensors file", lambda c, d: run_args(d, write_spec(d, c / "model.safetensors")),
         r"model\.safetensors' is a file; expected a checkpoint folder.*did you mean its folder"),
    Case("spec transfer source the .safetensors file", lambda c, d: run_args(d, write_spec(d, c, perturbations=[
        {"attack": "transfer", "strengths": [0.01], "params": {"sources": [str(c / "model.safetensors")]}}])),
         r"transfer source '[^']+model\.safetensors' is neither a model of this spec \(tiny\) nor a checkpoint folder"
         r" with a model\.json; '[^']+' is a file: did you mean its folder '[^']+tiny'\?"),
    Case("train ensemble source the .safetensors file", lambda c, d: _train(
        d, "--defense", "ensemble_adversarial", "-D", "eps=0.01", "-D", f"sources={c / 'model.safetensors'}"),
         r"model\.safetensors' is a file; expected a checkpoint folder.*did you mean its folder"),
    Case("evaluate --model a YAML file", lambda c, d: _ev(write_spec(d, c)),
         r"checkpoint '[^']+spec\.yaml' is a file; expected a checkpoint folder holding model\.json"),
    # --- attack parameters: the attack, the key and the type -------------------------------------------------------
    Case("--attack pgd steps=1.5", lambda c, d: _attack(c, "pgd:eps=0.01,steps=1.5"),
         r"pgd: steps=1\.5 must be an integer"),
    Case("--attack pgd step_size=abc", lambda c, d: _attack(c, "pgd:eps=0.01,step_size=abc"),
         r"pgd: step_size='abc' must be a number or none"),
    Case("--attack pgd keep_best=maybe", lambda c, d: _attack(c, "pgd:eps=0.01,keep_best=maybe"),
         r"pgd: keep_best='maybe' must be true or false"),
    Case("--attack pgd eps= (empty)", lambda c, d: _attack(c, "pgd:eps="), r"'pgd:eps=': eps='' is not a number"),
    Case("--attack pgd steps given twice", lambda c, d: _attack(c, "pgd:eps=0.01,steps=5,steps=50"),
         r"spec 'pgd:eps=0\.01,steps=5,steps=50': parameter 'steps' is given twice; give it once"),
    Case("--attack cw steps=abc", lambda c, d: _attack(c, "cw:steps=abc"), r"cw: steps='abc' must be an integer"),
    Case("spec pgd steps 1.5", lambda c, d: _pgd(d, c, steps=1.5),
         r"spec\.yaml: perturbations\.0: pgd: steps=1\.5 must be an integer"),
    Case("spec pgd steps '10'", lambda c, d: _pgd(d, c, steps="10"),
         r"spec\.yaml: perturbations\.0: pgd: steps='10' must be an integer"),
    Case("spec pgd step_size a list", lambda c, d: _pgd(d, c, step_size=[0.1]),
         r"perturbations\.0: pgd: step_size=\[0\.1\] must be a number or none"),
    # --- command-line options -------------------------------------------------------------------------------------
    Case("-d size=abc", lambda c, d: _ev(c, "-d", "size=abc"), r"derm-synth: size='abc' must be an integer"),
    Case("-d the same key twice", lambda c, d: _ev(c, "-d", "size=16", "-d", "size=24"),
         r"--data-param size is given twice \(size=16 and 'size=24'\); give it once"),
    Case("evaluate --limit abc", lambda c, d: _ev(c, "--limit", "abc"),
         r"error: Invalid value for '--limit': .*valid integer.*\(see `\S+ evaluate --help`\)"),
    Case("evaluate without --model", lambda c, d: ["evaluate"], r"error: Missing option '--model'"),
    Case("a command that does not exist", lambda c, d: ["evaluat"], r"error: No such command 'evaluat'"),
    Case("evaluate --seed -1", lambda c, d: _ev(c, "--seed", "-1"), r"--seed -1 must be an integer in " + SEED_RANGE),
    Case("evaluate --seed 2**70", lambda c, d: _ev(c, "--seed", str(2**70)),
         r"--seed 1180591620717411303424 must be an integer in " + SEED_RANGE),
    Case("report --reference linf=abc", lambda c, d: ["report", str(d), "--reference", "linf=abc"],
         r"--reference linf=abc: 'abc' is not a number; expected e\.g\. linf=0\.0078"),
    # --- train options ---------------------------------------------------------------------------------------------
    Case("train -a width=abc", lambda c, d: _train(d, "-a", "width=abc"), r"small-cnn: width='abc' must be an integer"),
    Case("train -a width=0", lambda c, d: _train(d, "-a", "width=0"),
         r"small-cnn: width=0 must be an integer >= 1 \(channels of the first conv block\)"),
    Case("train -a in_channels=1", lambda c, d: _train(d, "-a", "in_channels=1"),
         r"arch_kwargs sets in_channels=1, which medrobust passes the architecture itself"),
    Case("train --lr inf", lambda c, d: _train(d, "--lr", "inf"), r"lr=inf must be a finite number > 0"),
    Case("train --arch unknown", lambda c, d: _train(d, "--arch", "small-cnnn"),
         r"unknown model 'small-cnnn'; did you mean 'small-cnn'\?"),
    Case("train --defense bogus", lambda c, d: _train(d, "--defense", "bogus"),
         r"--defense: input should be 'none', 'adversarial', 'ensemble_adversarial' or 'jacobian' \(got 'bogus'\)"),
    Case("train -D eps=abc", lambda c, d: _train(d, "--defense", "adversarial", "-D", "eps=abc"),
         r"--defense-param eps: input should be a valid number.*\(got 'abc'\)"),
    Case("train -D steps=1.5", lambda c, d: _train(d, "--defense", "adversarial", "-D", "eps=0.01", "-D", "steps=1.5"),
         r"--defense-param steps: input should be a valid integer.*\(got 1\.5\)"),
    Case("train -D an unknown key",
         lambda c, d: _train(d, "--defense", "adversarial", "-D", "eps=0.01", "-D", "stepz=3"),
         r"--defense-param stepz: extra inputs are not permitted \(got 3\)"),
    # --- spec fields: one line naming each key path, read strictly ----------------------------------------------------
    Case("spec batch_size a string", lambda c, d: run_args(d, write_spec(d, c, batch_size="x")),
         r"spec\.yaml: batch_size: Input should be a valid integer \(got 'x'\)"),
    Case("spec batch_size true", lambda c, d: run_args(d, write_spec(d, c, batch_size=True)),
         r"batch_size: Input should be a valid integer \(got True\)"),
    Case("spec limit -1", lambda c, d: run_args(d, write_spec(d, c, limit=-1)),
         r"limit: Input should be greater than or equal to 1 \(got -1\)"),
    Case("spec models a mapping", lambda c, d: run_args(d, write_spec(d, c, models={})),
         r"models: Input should be a valid list \(got \{\}\)"),
    Case("spec perturbations a number", lambda c, d: run_args(d, write_spec(d, c, perturbations=5)),
         r"perturbations: Input should be a valid list \(got 5\)"),
    Case("spec strengths a string", lambda c, d: run_args(d, write_spec(d, c, perturbations=[
        {"attack": "fgsm", "strengths": "0.1"}])),
         r"perturbations\.0\.strengths: Input should be a valid list \(got '0\.1'\)"),
    Case("spec trust_code 'yes'", lambda c, d: run_args(d, write_spec(d, c, trust_code="yes")),
         r"trust_code: Input should be a valid boolean \(got 'yes'\)"),
    Case("spec three bad keys on one line",
         lambda c, d: run_args(d, write_spec(d, c, seed="s", batch_size="x", limit=0)),
         r"spec\.yaml: seed: .*\(got 's'\); batch_size: .*\(got 'x'\); limit: .*\(got 0\)"),
    Case("spec checkpoint a number",
         lambda c, d: run_args(d, write_spec(d, c, models=[{"name": "a", "checkpoint": 5}])),
         r"models\.0\.checkpoint: checkpoint 5 must be the path of a checkpoint folder"),
    Case("spec dataset size a string", lambda c, d: run_args(d, write_spec(d, c, dataset={
        "name": "derm-synth", "params": {"size": "abc"}})),
         r"dataset: params: derm-synth: size='abc' must be an integer"),
    Case("spec train arch_kwargs width a string", lambda c, d: _trained(d, arch_kwargs={"width": "a"}),
         r"models\.0\.train: arch_kwargs: small-cnn: width='a' must be an integer"),
    Case("spec train arch_kwargs sets num_classes", lambda c, d: _trained(d, arch_kwargs={"num_classes": 2}),
         r"models\.0\.train: arch_kwargs sets num_classes=2"),
]
