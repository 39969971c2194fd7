"""Untrusted sizes under a real memory limit: in one child process whose address space is capped
(``resource.setrlimit(RLIMIT_AS)``) at what its imports use plus 1 GiB, a few-byte input that promises gigabytes
(a YAML alias bomb, a PNG header, a MedMNIST label, a dataset size, an architecture width) is refused with one
line before anything is allocated, never a MemoryError or a traceback. A control allocation of 2 GiB in the same
process fails, so the limit is real."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from test_data_checks import _png_header

resource = pytest.importorskip("resource", reason="RLIMIT_AS is POSIX")

CHILD = r"""
import json, resource, sys
from typer.testing import CliRunner
from medrobust.cli import app
import medrobust.data, medrobust.models.zoo, medrobust.config, medrobust.train  # what the commands import

def vm_size():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize"):
            return int(line.split()[1]) * 1024

resource.setrlimit(resource.RLIMIT_AS, (vm_size() + 2**30, resource.RLIM_INFINITY))
out = {}
try:
    bytearray(2 * 2**30)
    out["control"] = "allocated"
except MemoryError:
    out["control"] = "MemoryError"
runner = CliRunner()
for name, argv in json.loads(sys.argv[1]).items():
    r = runner.invoke(app, argv, env={"COLUMNS": "300"})
    out[name] = [r.exit_code, r.stderr, type(r.exception).__name__ if r.exception else None]
print(json.dumps(out))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the address-space size from /proc")
def test_promised_gigabytes_are_refused_under_a_memory_limit(tmp_path):
    folder = tmp_path / "images"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        for k in range(10):  # enough for a validation and a test split
            _png_header(folder / cls / f"{k}.png", 12_000, 10_000)  # 120 million pixels: 360 MB decoded, each
    arrays = {}
    for split, n in (("train", 20), ("val", 8), ("test", 8)):
        arrays[f"{split}_images"] = np.zeros((n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.where(np.arange(n) == 0, 10**9, np.arange(n) % 2)[:, None]
    np.savez(tmp_path / "labels.npz", **arrays)
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
    )
    (tmp_path / "bomb.yaml").write_text(bomb + "models: [{name: m, checkpoint: x}]\n")
    out = str(tmp_path / "out")
    train = ["train", "--epochs", "1", "--out", out]
    cases = {
        "yaml alias bomb": (["run", str(tmp_path / "bomb.yaml"), "--out", out], r"the alias \*a is not accepted"),
        "png header": ([*train, "--dataset", "image-folder", "-d", f"root={folder}", "-d", "size=16"],
                       r"declares 12000 x 10000 = 120,000,000 pixels, above the limit of 100,000,000"),
        "medmnist label": ([*train, "--dataset", "medmnist", "-d", f"path={tmp_path / 'labels.npz'}"],
                           r"the largest label 1000000000 implies 1,000,000,001 classes"),
        "dataset size": ([*train, "--dataset", "derm-synth", "-d", "size=100000"], r"size=100000 must be <= 1024"),
        "architecture width": ([*train, "--dataset", "derm-synth", "-d", "n=40", "-d", "size=16",
                                "-a", "width=1000000"], r"above the limit of 1,000,000,000"),
    }
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps({k: v[0] for k, v in cases.items()})],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results.pop("control") == "MemoryError"  # the limit bites: 2 GiB cannot be had
    import re

    for name, (code, stderr, exception) in results.items():
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code == 2 and exception == "SystemExit", (name, code, exception, stderr)
        assert len(lines) == 1 and re.search(cases[name][1], lines[0]), (name, stderr)
        assert "MemoryError" not in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()
