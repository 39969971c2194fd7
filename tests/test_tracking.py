"""MLflow logging of a run (medrobust.tracking): a real run logged to a temporary local store through the command
line and read back with MLflow's own client; the same folder logged again updates its MLflow run; the spec
cannot choose the destination; without MLflow a one-line error comes before any work."""

from __future__ import annotations

import json
import sqlite3
import sys

import pytest
import yaml
from typer.testing import CliRunner

from medrobust.cli import app
from medrobust.config import SpecError, load_config
from medrobust.report.analysis import Finding, ModelChecks
from medrobust.tracking import (
    MAX_TAG,
    Keys,
    checks_tag,
    description,
    log_run,
    metric_key,
    model_checks_tag,
    spec_params,
    summary_metrics,
)

mlflow = pytest.importorskip("mlflow", reason="MLflow is an extra: pip install 'medrobust[mlflow]'")
from mlflow.tracking import MlflowClient  # noqa: E402

runner = CliRunner()
SPEC = {
    "name": "tracked",
    "seed": 0,
    "batch_size": 32,
    "dataset": {"name": "derm-synth", "params": {"size": 16, "n": 90}},
    "models": [{"name": "small", "train": {"architecture": "small-cnn", "arch_kwargs": {"width": 4}, "epochs": 1}}],
    "perturbations": [
        {"attack": "fgsm", "strengths": [0.01, 0.03]},
        {"corruption": "gaussian_noise", "strengths": [0.05]},
    ],
}


def write_spec(tmp_path, **extra):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**SPEC, **extra}))
    return path


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tracked")
    run_dir, store = tmp / "run", tmp / "store"
    result = runner.invoke(
        app, ["run", str(write_spec(tmp)), "--out", str(run_dir), "--quiet", "--mlflow", str(store)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    return run_dir, store, result.output


def report_warnings(run_dir):
    """The warning titles summary.md lists (its "## Warnings" section: one "- **title**: message" line each)."""
    section = (run_dir / "summary.md").read_text().split("\n## Warnings\n", 1)[1]
    return [line[4:].split("**", 1)[0] for line in section.splitlines() if line.startswith("- **")]


def only_run(store):
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_a_run_logged_to_a_local_store_reads_back(logged):
    run_dir, store, output = logged
    assert "mlflow: logged run" in output and "in experiment 'tracked'" in output
    client, run = only_run(store)
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    # the spec as parameters
    params = run.data.params
    assert params["name"] == "tracked" and params["models.0.name"] == "small"
    assert params["models.0.train.architecture"] == "small-cnn" and params["models.0.train.arch_kwargs.width"] == "4"
    assert params["perturbations.0.strengths.1"] == "0.03" and params["perturbations.1.corruption"] == "gaussian_noise"
    # every summary value with its interval, the same numbers as summary.json
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = run.data.metrics
    clean = next(r for r in summary if r["perturbation"] == "clean" and r["metric"] == "accuracy")
    assert metrics["small/clean/accuracy"] == pytest.approx(clean["value"], abs=1e-12)
    assert metrics["small/clean/accuracy.ci_low"] == pytest.approx(clean["ci_low"], abs=1e-12)
    assert metrics["small/clean/accuracy.ci_high"] == pytest.approx(clean["ci_high"], abs=1e-12)
    fgsm = next(
        r for r in summary if r["perturbation"] == "fgsm" and r["strength"] == 0.03 and r["metric"] == "accuracy"
    )
    assert metrics["small/fgsm/0.03/accuracy"] == pytest.approx(fgsm["value"], abs=1e-12)
    finite = [r for r in summary if isinstance(r["value"], float) and r["value"] == r["value"]]
    assert sum(1 for k in metrics if not k.endswith((".ci_low", ".ci_high"))) == len(finite)
    # the weights' fingerprint and the sanity checks as tags, summary.md as the description
    with sqlite3.connect(run_dir / "results.db") as db:
        fingerprint = db.execute("SELECT fingerprint FROM models WHERE name='small'").fetchone()[0]
        failed = [n for (n,) in db.execute("SELECT name FROM checks WHERE model='small' AND NOT passed ORDER BY rowid")]
    assert run.data.tags["model/small/fingerprint"] == fingerprint
    # the checks tags say what the report says: FGSM alone backs the worst case, so the report warns, and no tag
    # says "passed" (they did, beside this warning, before)
    warned = report_warnings(run_dir)
    assert "worst case not checked by a strong attack" in warned
    assert run.data.tags["medrobust.warnings"] == str(len(warned))
    assert run.data.tags["medrobust.checks"].startswith(f"{len(warned)} warning")
    assert "worst case not checked by a strong attack" in run.data.tags["medrobust.checks"]
    expected = ("failed: " + ", ".join(failed) + "; " if failed else "") + f"warnings: {len(warned)} (see summary.md)"
    assert run.data.tags["model/small/checks"] == expected
    assert "passed" not in run.data.tags["model/small/checks"] + run.data.tags["medrobust.checks"]
    assert run.data.tags["medrobust.run_folder"] == str(run_dir.resolve())
    assert run.data.tags["mlflow.note.content"] == (run_dir / "summary.md").read_text()
    # the report and the tables as artifacts, byte for byte
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "summary.md", "summary.json", "summary.csv", "spec.json"} <= names
    local = client.download_artifacts(run.info.run_id, "summary.json", str(run_dir.parent))
    assert open(local, "rb").read() == (run_dir / "summary.json").read_bytes()
    # the artifacts live in the store's folder, nothing was written beside the command
    assert (store / "artifacts").is_dir()


def test_logging_the_folder_again_updates_its_mlflow_run(logged, tmp_path):
    run_dir, store, _ = logged
    client, first = only_run(store)
    # a resume with other threads (how it runs, not what it computes) logs into the same MLflow run
    result = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--out", str(run_dir), "--quiet", "--threads", "1",
                                 "--mlflow", str(store)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"mlflow: updated run {first.info.run_id}" in result.output
    _, again = only_run(store)  # still one MLflow run, the same one, and the metrics were written again
    assert again.info.run_id == first.info.run_id and again.data.metrics == first.data.metrics
    assert len(client.get_metric_history(first.info.run_id, "small/clean/accuracy")) == 2


def test_odd_folder_names(logged, tmp_path):
    import shutil

    run_dir, _, _ = logged
    quoted = tmp_path / "o'brien \\" / "run"  # a quote and a backslash in the path: logged twice, one MLflow run
    shutil.copytree(run_dir, quoted)
    store = tmp_path / "store"
    for verb in ("logged", "updated"):
        result = runner.invoke(app, ["report", str(quoted), "--mlflow", str(store)])
        assert result.exit_code == 0, result.output
        assert f"mlflow: {verb} run" in result.output
    _, run = only_run(store)
    assert run.data.tags["medrobust.run_folder"] == str(quoted.resolve())
    # a local store whose path a database URI would misread, and an unknown scheme: one line, before any work
    for bad, message in ((tmp_path / "q?x", "a local store's path cannot hold '?', '#' or '%'"),
                         ("htp://example.org", "unknown scheme 'htp'")):
        result = runner.invoke(app, ["report", str(quoted), "--mlflow", str(bad)])
        assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "q").exists() and not (tmp_path / "q?x").exists()


def test_a_crafted_store_in_the_run_folder_cannot_send_artifacts_out(tmp_path):
    spec = write_spec(tmp_path, perturbations=[{"attack": "fgsm", "strengths": [0.01]}])
    result = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    outside = tmp_path / "outside"
    crafted = MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow' / 'mlflow.db'}")
    crafted.create_experiment("tracked", artifact_location=outside.as_uri())
    spec = write_spec(tmp_path, perturbations=[{"attack": "fgsm", "strengths": [0.01]}], mlflow=True)
    result = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "run"), "--quiet"],
                           env={"MLFLOW_TRACKING_URI": None, "COLUMNS": "200"})
    # the run's results stand; logging is refused at the end, says why and how to log them
    assert result.exit_code == 1
    text = result.output.replace("\n", "")
    assert f"keeps artifacts at '{outside.as_uri()}', outside the run folder" in text
    assert f"medrobust report {tmp_path / 'run'} --mlflow URI" in text
    assert not outside.exists() and (tmp_path / "run" / "summary.json").exists()


def test_the_spec_key_logs_into_the_run_folder_and_cannot_choose_a_destination(tmp_path):
    with pytest.raises(SpecError, match="a spec cannot choose where results are sent"):
        load_config({**SPEC, "mlflow": {"tracking_uri": "http://example.org"}})
    assert load_config({**SPEC, "mlflow": True}).mlflow is not None
    assert load_config({**SPEC, "mlflow": False}).mlflow is None
    spec = write_spec(tmp_path, mlflow={"experiment": "from-spec", "run_name": "first"},
                      perturbations=[{"attack": "fgsm", "strengths": [0.01]}])
    result = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "run"), "--quiet"],
                           env={"MLFLOW_TRACKING_URI": None, "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    client = MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("from-spec").experiment_id])
    assert [r.info.run_name for r in runs] == ["first"]
    assert "mlflow" not in {k.split(".")[0] for k in runs[0].data.params}  # the key itself is not a parameter


def test_without_mlflow_one_line_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    result = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--out", str(tmp_path / "run"),
                                 "--mlflow", str(tmp_path / "store")])
    assert result.exit_code == 2
    assert "MLflow logging needs MLflow: pip install 'medrobust[mlflow]'" in result.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "store").exists()


def test_keys_and_params_by_hand():
    assert metric_key("cnn", "apgd(norm=l2,steps=50)", "0.5", "dice:csf") == "cnn/apgd norm_l2 steps_50/0.5/dice.csf"
    assert metric_key("a/b", "matched_noise[pgd]") == "a_b/matched_noise pgd"
    # within MLflow's 250 characters, the longest part shortened to its start and a hash
    long = metric_key("m" * 128, "apgd(" + "x" * 200 + ")", "0.5", "accuracy")
    assert len(long) <= 250 and long.startswith("m" * 128 + "/apgd " + "x" * 50) and long.endswith("/0.5/accuracy")
    # names that clean to the same key keep apart
    keys = Keys()
    assert keys("a/b", "clean") == "a_b/clean" and keys("a_b", "clean").startswith("a_b/clean-")
    assert keys("a/b", "clean") == "a_b/clean"  # the same name keeps its key
    assert spec_params({"name": "x", "models": [{"name": "m", "kw": {}}], "limit": None, "seed": 3}) == {
        "name": "x", "models.0.name": "m", "models.0.kw": "{}", "limit": "null", "seed": "3"}
    rows = [{"model": "m", "perturbation": "clean", "strength": 0.0, "metric": "accuracy", "value": 0.5,
             "ci_low": 0.25, "ci_high": 0.75},
            {"model": "m", "perturbation": "pgd", "strength": 2 / 255, "metric": "accuracy", "value": float("nan"),
             "ci_low": None, "ci_high": None}]
    assert summary_metrics(rows) == {"m/clean/accuracy": 0.5, "m/clean/accuracy.ci_low": 0.25,
                                     "m/clean/accuracy.ci_high": 0.75}
    # a value and its bounds never share a key, however long the names
    rows = [{"model": "m" * 128, "perturbation": "p" * 116, "strength": 0.5, "metric": "accuracy", "value": 0.9,
             "ci_low": 0.8, "ci_high": 0.95}]
    metrics = summary_metrics(rows)
    assert sorted(metrics.values()) == [0.8, 0.9, 0.95] and all(len(k) <= 250 for k in metrics)
    assert not any(k.endswith(("/", ".")) for k in metrics)


def test_a_long_summary_keeps_its_warnings_in_the_description(logged, tmp_path):
    import shutil

    run_dir, _, _ = logged
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("mlflow"))
    text = (copy / "summary.md").read_text()
    head, _, warnings = text.partition("\n## Warnings\n")
    # many models' worth of tables: the warnings at the end lie past MLflow's 8,000 characters
    filler = "".join(f"| model-{i} | 0.500 | [0.400, 0.600] |\n" for i in range(400))
    long = head + "\n" + filler + "\n## Warnings\n" + warnings
    (copy / "summary.md").write_text(long)
    assert len(long) > 2 * MAX_TAG
    logged_again = log_run(copy, str(tmp_path / "store"))
    client = MlflowClient(logged_again.uri)
    run = client.get_run(logged_again.run_id)
    note = run.data.tags["mlflow.note.content"]
    assert len(note) <= MAX_TAG
    first, blank, rest = note.partition("\n\n")
    assert first == (f"*summary.md ({len(long):,} characters) is longer than an MLflow description (8,000): the full "
                     "text is the artifact summary.md. The report's warnings come first; the rest is cut.*")
    assert rest.startswith("## Warnings\n\n- **worst case not checked by a strong attack**: ")
    assert rest.endswith("\n\n*(cut here: the full text is the artifact summary.md)*\n")
    assert "# medrobust report: tracked" in rest  # then the start of summary.md
    # the whole summary.md is the artifact, byte for byte
    local = client.download_artifacts(run.info.run_id, "summary.md", str(tmp_path))
    assert open(local, encoding="utf-8").read() == long


def test_tags_and_description_by_hand():
    unchecked = Finding("worst case not checked by a strong attack", "worst_case at eps = 0.03 rests on fgsm only")
    broken = Finding("unbounded attack", "m: PGD leaves accuracy 0.400", "what it means")
    assert checks_tag([]) == "passed"
    assert checks_tag([unchecked, broken, broken]) == (
        "3 warnings: worst case not checked by a strong attack; unbounded attack (x2)")
    ran = ModelChecks("m", ["logits", "gradients"], [], stored=True)
    failed = ModelChecks("m", ["logits"], ["unbounded", "more_steps"], stored=True)
    absent = ModelChecks("m", [], [], stored=False)
    assert model_checks_tag(ran, 0) == "passed"
    assert model_checks_tag(ran, 1) == "warnings: 1 (see summary.md)"
    assert model_checks_tag(failed, 3) == "failed: unbounded, more_steps; warnings: 3 (see summary.md)"
    assert model_checks_tag(absent, 0) == model_checks_tag(None, 0) == "not run"
    assert model_checks_tag(absent, 2) == "not run; warnings: 2 (see summary.md)"
    # a summary that fits is the description as it is
    assert description("# short\n", [unchecked], limit=100) == "# short\n"
    # a longer one: the note, the warnings, the start of the summary up to a line end, the mark
    summary = "# report\n" + "".join(f"line {i:03d}\n" for i in range(100)) + "## Warnings\n\n- **x**: y\n"
    text = description(summary, [unchecked, broken], limit=600)
    assert len(text) <= 600
    lines = text.split("\n")
    assert lines[0].startswith(f"*summary.md ({len(summary):,} characters) is longer than an MLflow description (600)")
    assert lines[2:6] == ["## Warnings", "", "- **worst case not checked by a strong attack**: worst_case at eps = "
                          "0.03 rests on fgsm only", "- **unbounded attack**: m: PGD leaves accuracy 0.400"]
    assert lines[7] == "# report" and lines[-4].startswith("line ")
    assert lines[-2:] == ["*(cut here: the full text is the artifact summary.md)*", ""]
    # warnings that alone fill the description are cut at a line end too, with the mark
    many = [Finding(f"check {i}", "x" * 50) for i in range(40)]
    text = description(summary, many, limit=600)
    assert len(text) <= 600 and text.endswith("\n\n*(cut here: the full text is the artifact summary.md)*\n")
    assert "- **check 0**: " in text and "# report" not in text


def test_a_link_planted_in_the_run_folders_store_is_refused(logged, tmp_path, monkeypatch):
    """MLflow writes its database's side files and its artifacts by paths of its own: a link anywhere under
    RUN/mlflow is refused before anything is logged, and the file it points at keeps its bytes."""
    import shutil

    from medrobust.tracking import check_destination, log_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    shutil.copytree(logged[0], run_dir)
    target = tmp_path / "victim.txt"
    target.write_text("keep me")
    for planted in ("mlflow/mlflow.db-journal", "mlflow/artifacts/1/abc/artifacts/summary.json"):
        shutil.rmtree(run_dir / "mlflow", ignore_errors=True)
        (run_dir / planted).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / planted).symlink_to(target)
        for call in (lambda: check_destination(None, run_dir), lambda: log_run(run_dir)):
            with pytest.raises(ValueError, match=rf"'{run_dir / planted}' is a symbolic link; medrobust does not"):
                call()
        assert target.read_text() == "keep me"


def test_an_http_server_must_answer_mlflows_api(tmp_path):
    """The up-front check of an HTTP store: a real local HTTP server that answers the API call (200) or asks
    for credentials (401) passes; one that answers 404 (another service, a proxy) and a closed port are one-line
    errors naming the URI and why."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from medrobust.tracking import check_destination

    seen = []

    class Handler(BaseHTTPRequestHandler):
        status = 200

        def do_POST(self):
            seen.append((self.command, self.path, self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(Handler.status)
            self.end_headers()
            self.wfile.write(b'{"experiments": []}')

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_port}"
    try:
        for status in (200, 401, 403):
            Handler.status = status
            check_destination(uri + "/", tmp_path)
        assert seen[0] == ("POST", "/api/2.0/mlflow/experiments/search", b'{"max_results": 1}')
        Handler.status = 404
        with pytest.raises(ValueError, match=rf"MLflow server '{uri}/' cannot be reached \(HTTP 404 from {uri}/api"):
            check_destination(uri + "/", tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ValueError, match=rf"MLflow server '{uri}' cannot be reached \(.*refused"):
        check_destination(uri, tmp_path)  # the port is closed now
    assert not (tmp_path / "mlflow").exists()
