"""Every file medrobust writes stays inside its folder: a symbolic link planted in a run folder received from
someone else (at a file's name, at a temporary file's name, or as a sub-folder) is refused with one line and the
file it points to is byte-identical afterwards; CSV cells that a spreadsheet would run as formulas are escaped."""

from __future__ import annotations

import csv
import os
import shutil
import sqlite3

import pytest
import torch
import yaml
from conftest import tiny_spec
from typer.testing import CliRunner

from medrobust.cli import app
from medrobust.config import load_config
from medrobust.files import UnsafePathError, csv_cell, make_dirs, write_atomic, write_csv, write_json
from medrobust.models.card import ModelCard, save_checkpoint
from medrobust.models.wrapper import Model
from medrobust.runner import run_experiment
from medrobust.store import Store

SECRET = b"export PATH=/usr/bin  # a shell start-up file the user owns\n"


@pytest.fixture()
def victim(tmp_path):
    """A file outside the folders under test, which no write may change."""
    path = tmp_path / "outside" / ".bashrc"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


def test_a_link_at_the_final_name_is_refused_and_its_target_kept(tmp_path, victim):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "summary.json").symlink_to(victim)
    with pytest.raises(UnsafePathError, match="summary.json' is a symbolic link"):
        write_json(folder / "summary.json", {"a": 1})
    assert victim.read_bytes() == SECRET
    assert (folder / "summary.json").is_symlink()  # left as it was: refused, not silently replaced
    assert sorted(p.name for p in folder.iterdir()) == ["summary.json"]  # no temporary file left behind


def test_a_link_at_the_old_temporary_name_is_never_opened(tmp_path, victim):
    folder = tmp_path / "run"
    folder.mkdir()
    for name in (".report.html.tmp", ".spec.json.tmp", ".summary.md.tmp"):
        (folder / name).symlink_to(victim)
    write_atomic(folder / "report.html", "<html></html>")
    write_json(folder / "spec.json", {"name": "x"})
    assert victim.read_bytes() == SECRET
    assert (folder / "report.html").read_text() == "<html></html>"
    assert not (folder / "report.html").is_symlink()


def test_a_folder_link_that_leads_out_of_the_root_is_refused(tmp_path, victim):
    run = tmp_path / "run"
    run.mkdir()
    (run / "models").symlink_to(victim.parent, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="outside the folder"):
        write_atomic(run / "models" / ".bashrc", "pwned", root=run)
    with pytest.raises(UnsafePathError, match="outside the folder"):
        make_dirs(run / "models" / "new" / "deeper", root=run)
    assert victim.read_bytes() == SECRET
    assert sorted(p.name for p in victim.parent.iterdir()) == [".bashrc"]
    # a link that stays inside the root is fine
    (run / "real").mkdir()
    (run / "alias").symlink_to(run / "real", target_is_directory=True)
    write_atomic(run / "alias" / "a.txt", "ok", root=run)
    assert (run / "real" / "a.txt").read_text() == "ok"


def test_a_checkpoint_is_not_saved_through_a_linked_model_cache(tmp_path, victim):
    run = tmp_path / "run"
    run.mkdir()
    (run / "models").symlink_to(victim.parent, target_is_directory=True)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    card = ModelCard(name="m", architecture="x", task="classification", in_channels=1, num_classes=2,
                     class_names=["a", "b"], spatial_dims=2, input_shape=[1, 2, 2], bounds=(0.0, 1.0))
    with pytest.raises(UnsafePathError, match="outside the folder"):
        save_checkpoint(Model(net, bounds=(0.0, 1.0)), card, run / "models" / "m", root=run)
    assert sorted(p.name for p in victim.parent.iterdir()) == [".bashrc"]


@pytest.mark.parametrize("side", ["results.db", "results.db-wal", "results.db-shm", "results.db-journal"])
def test_the_store_refuses_a_linked_database_or_side_file(tmp_path, victim, side):
    run = tmp_path / "run"
    run.mkdir()
    (run / side).symlink_to(victim)
    with pytest.raises(UnsafePathError, match=f"{side}' is a symbolic link"):
        Store(run / "results.db")
    assert victim.read_bytes() == SECRET


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
        ("+1+2", "'+1+2"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcmd", "'\tcmd"),
        ("\rcmd", "'\rcmd"),
        ("small-cnn", "small-cnn"),  # a dash inside is harmless
        (-0.25, -0.25),  # numbers, negative ones included, stay numbers
        (3, 3),
        (None, None),
    ],
)
def test_formula_cells_are_escaped_and_numbers_kept(value, written):
    assert csv_cell(value) == written


def test_write_csv_escapes_every_formula_cell(tmp_path):
    write_csv(tmp_path / "t.csv", ["model", "value"], [{"model": "=1+1", "value": -0.5}, {"model": "ok", "value": 2}])
    with (tmp_path / "t.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows == [{"model": "'=1+1", "value": "-0.5"}, {"model": "ok", "value": "2"}]


@pytest.fixture(scope="module")
def _finished(tiny_checkpoint, tmp_path_factory):
    spec = tiny_spec(tiny_checkpoint, models=[{"name": "=cmd|' /C calc'!A0", "checkpoint": str(tiny_checkpoint)}],
                     perturbations=[{"corruption": "gaussian_noise", "strengths": [0.05]}])
    run = tmp_path_factory.mktemp("finished") / "run"
    run_experiment(load_config(spec), run, quiet=True)
    return run, spec


@pytest.fixture()
def finished_run(_finished, tmp_path):
    """A copy of a finished run (run once per module), for a test to plant links in."""
    run, spec = _finished
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run", spec


@pytest.mark.parametrize("name", ["summary.csv", "summary.json", "comparisons.csv", "comparisons.json",
                                  "report.html", "summary.md"])
def test_report_refuses_a_planted_link_in_one_line(finished_run, victim, name):
    run, _ = finished_run
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(victim)
    done = CliRunner().invoke(app, ["report", str(run)])
    assert done.exit_code == 2, done.output
    lines = [line for line in done.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "is a symbolic link" in lines[0] and "Traceback" not in done.output, done.output
    assert victim.read_bytes() == SECRET


def test_export_refuses_a_planted_link_and_run_refuses_a_linked_spec(finished_run, victim, tmp_path):
    run, spec = finished_run
    (run / "records.csv").symlink_to(victim)
    done = CliRunner().invoke(app, ["export", str(run), "--format", "csv"])
    assert done.exit_code == 2 and "records.csv' is a symbolic link" in done.output, done.output
    assert victim.read_bytes() == SECRET
    # the same run again (resume) finds spec.json replaced by a link
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    os.replace(run / "spec.json", tmp_path / "spec.json.bak")
    (run / "spec.json").symlink_to(victim)
    done = CliRunner().invoke(app, ["run", str(spec_path), "--out", str(run), "--quiet"])
    assert done.exit_code == 2 and "spec.json' is a symbolic link" in done.output, done.output
    assert victim.read_bytes() == SECRET
    # a lock file planted as a link: the lock would open and truncate its target
    (run / "spec.json").unlink()
    os.replace(tmp_path / "spec.json.bak", run / "spec.json")
    (run / ".medrobust.lock").unlink(missing_ok=True)
    (run / ".medrobust.lock").symlink_to(victim)
    done = CliRunner().invoke(app, ["run", str(spec_path), "--out", str(run), "--quiet"])
    assert done.exit_code == 2 and ".medrobust.lock' is a symbolic link" in done.output, done.output
    assert victim.read_bytes() == SECRET


def test_model_names_and_sample_ids_cannot_inject_formulas(finished_run):
    run, _ = finished_run
    with (run / "summary.csv").open(newline="") as fh:
        models = {row["model"] for row in csv.DictReader(fh)}
    assert models == {"'=cmd|' /C calc'!A0"}
    done = CliRunner().invoke(app, ["export", str(run), "--format", "csv"])
    assert done.exit_code == 0, done.output
    with (run / "records.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["model"] == "'=cmd|' /C calc'!A0" for r in rows)
    # the store keeps the name as given: only the spreadsheet-facing CSV is escaped
    con = sqlite3.connect(run / "results.db")
    assert {m for (m,) in con.execute("SELECT DISTINCT model FROM records")} == {"=cmd|' /C calc'!A0"}
    con.close()
    shutil.rmtree(run)


def test_output_paths_are_checked_before_any_work(tmp_path, victim):
    runner = CliRunner()
    # evaluate --json into a missing folder: refused before the model is even read (this one does not exist)
    done = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "no-model"), "--json",
                               str(tmp_path / "missing" / "out.json")])
    assert done.exit_code == 2 and "its folder" in done.output and "does not exist" in done.output, done.output
    # ... or onto a planted link
    (tmp_path / "out.json").symlink_to(victim)
    done = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "no-model"), "--json", str(tmp_path / "out.json")])
    assert done.exit_code == 2 and "out.json' is a symbolic link" in done.output, done.output
    # train --out naming a file: refused before the settings are checked (--epochs 0 would be refused later)
    done = runner.invoke(app, ["train", "--epochs", "0", "--out", str(victim)])
    assert done.exit_code == 2 and "is a file; expected a folder" in done.output, done.output
    assert victim.read_bytes() == SECRET


def test_export_out_is_checked_before_the_records_are_read(finished_run, tmp_path):
    run, _ = finished_run
    done = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path)])
    assert done.exit_code == 2 and "is a folder; expected the path of a file" in done.output, done.output
    done = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "nowhere" / "r.csv")])
    assert done.exit_code == 2 and "does not exist" in done.output, done.output


def test_a_cell_with_records_deleted_is_refused_by_report_and_export(finished_run):
    run, _ = finished_run
    assert CliRunner().invoke(app, ["report", str(run)]).exit_code == 0
    before = (run / "report.html").read_bytes()
    con = sqlite3.connect(run / "results.db")
    key, n = con.execute(
        "SELECT cell_key, COUNT(*) FROM records WHERE perturbation='gaussian_noise' GROUP BY cell_key").fetchone()
    assert n == 12
    with con:
        con.execute("DELETE FROM records WHERE cell_key=? AND sample_index >= 6", (key,))
    con.close()
    for args in (["report", str(run)], ["export", str(run), "--format", "json"]):
        done = CliRunner().invoke(app, args)
        assert done.exit_code == 2, (args, done.output)
        lines = [line for line in done.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "cell =cmd|' /C calc'!A0 / gaussian_noise at 0.05 holds 6 of its 12 records" in lines[0]
    assert (run / "report.html").read_bytes() == before  # the good report stays
    assert not (run / "records.json").exists()


@pytest.mark.parametrize("table", ["records", "cells"])
def test_a_dropped_table_is_not_recreated_and_the_good_report_stays(finished_run, table):
    run, spec = finished_run
    assert CliRunner().invoke(app, ["report", str(run)]).exit_code == 0
    before = (run / "report.html").read_bytes()
    con = sqlite3.connect(run / "results.db")
    with con:
        con.execute(f"DROP TABLE {table}")
    con.close()
    done = CliRunner().invoke(app, ["report", str(run)])
    assert done.exit_code == 2, done.output
    lines = [line for line in done.output.splitlines() if line.strip()]
    assert len(lines) == 1 and f"has no {table} table (dropped or damaged outside medrobust)" in lines[0], lines
    assert (run / "report.html").read_bytes() == before
    con = sqlite3.connect(run / "results.db")
    assert table not in {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    con.close()


def test_a_report_interrupted_while_writing_leaves_the_old_report_whole(finished_run, monkeypatch):
    """Interrupted at the rename of report.html (the moment a kill would hurt most): the previous report is
    byte-identical and no temporary file is left behind."""
    run, _ = finished_run
    assert CliRunner().invoke(app, ["report", str(run)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.suffix in (".html", ".md")}
    real_replace = os.replace

    def interrupted(src, dst, *args, **kwargs):
        if str(dst).endswith("report.html"):
            raise KeyboardInterrupt  # as a Ctrl-C there; a SIGKILL leaves at most the temporary file
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", interrupted)
    from medrobust.report import build_report

    with pytest.raises(KeyboardInterrupt):
        build_report(run)
    monkeypatch.setattr(os, "replace", real_replace)
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.suffix in (".html", ".md")}
    assert after == before
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
