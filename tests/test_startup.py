"""Start-up stays light: the command line's --help, list and describe, and ``import medrobust``, import none of the
heavy optional libraries (module sets, not times: bench/startup.py measures the times). Also the lazy registry
entries and lazy package attributes that make this possible."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types

import pytest

from medrobust.registry import Registry

# none of these may be imported by `medrobust --help`, `list`, `describe` or `import medrobust`
FORBIDDEN = ("monai", "torchio", "matplotlib", "scipy", "pandas", "ray", "mlflow")
# the light commands need none of these either
AVOIDED = ("nibabel", "pydicom", "jinja2", "safetensors", "PIL")


def loaded_after(code: str) -> set[str]:
    """The top-level modules in sys.modules after running ``code`` in a fresh interpreter."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


CLI = """
from typer.testing import CliRunner
from medrobust.cli import app
for args in {commands!r}:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
    assert result.output.strip(), args
"""


def test_help_imports_neither_torch_nor_heavy_libraries():
    modules = loaded_after(CLI.format(commands=[["--help"], ["train", "--help"], ["run", "--help"]]))
    assert not modules & {"torch", *FORBIDDEN, *AVOIDED}


def test_list_and_describe_import_no_heavy_library():
    commands = [
        ["list"],
        ["list", "datasets"],
        ["describe", "attack", "pgd"],
        ["describe", "dataset", "nifti"],
        ["describe", "dataset", "dicom"],
        ["describe", "corruption", "gaussian_blur"],
        ["describe", "corruption", "motion"],
        ["describe", "model", "unet"],
    ]
    modules = loaded_after(CLI.format(commands=commands))
    assert not modules & {*FORBIDDEN, *AVOIDED}


def test_import_medrobust_imports_no_heavy_library():
    assert not loaded_after("import medrobust") & set(FORBIDDEN)


def test_public_api_resolves_lazily():
    code = """
import medrobust, types
import medrobust.evaluate, medrobust.train  # loading the submodules keeps the functions of the same name
assert isinstance(medrobust.evaluate, types.FunctionType) and isinstance(medrobust.train, types.FunctionType)
from medrobust import Model, ModelCard, Perturbation, TrainSettings, attack, clever, load_dataset, load_model
assert set(medrobust.__all__) <= set(dir(medrobust))
for name in medrobust.__all__:
    getattr(medrobust, name)
assert medrobust.types.check_bounds((0, 1)) == (0.0, 1.0)  # a submodule, as an attribute
assert callable(medrobust.metrics.clever.clever_estimate)
try:
    medrobust.no_such_name
except AttributeError as err:
    assert "no_such_name" in str(err)
else:
    raise AssertionError("no AttributeError")
"""
    loaded_after(textwrap.dedent(code))


def test_lazy_entry_listed_without_import_and_imported_on_first_use(monkeypatch):
    module = types.ModuleType("medrobust_lazy_probe")

    def build(size: int = 3, split: str = "test") -> int:
        """A probe builder."""
        return size

    module.build = build  # type: ignore[attr-defined]
    registry: Registry = Registry("probe")
    registry.register_lazy("probe", "medrobust_lazy_probe:build")
    assert registry.names() == ["probe"] and "probe" in registry
    with pytest.raises(ModuleNotFoundError):
        registry.get("probe")  # the module does not exist yet: nothing was imported by names()
    monkeypatch.setitem(sys.modules, "medrobust_lazy_probe", module)
    assert registry.get("probe") is build
    assert registry.build("probe", size=5) == 5
    assert registry.describe("probe") == ("A probe builder.", [("size", "int", "3")])
    with pytest.raises(ValueError, match="did you mean 'size'"):
        registry.build("probe", sise=5)


def test_lazy_entry_of_a_self_registering_module():
    registry: Registry = Registry("probe")
    registry.register_lazy("probe", f"{__name__}:_self_registered")
    registry.register("probe")(_self_registered)  # what the module's decorator does when it is imported
    assert registry.get("probe") is _self_registered
    with pytest.raises(ValueError, match="already registered"):
        registry.register("probe")(_self_registered)


def _self_registered() -> None:
    """A builder that registers itself."""


def test_lazy_registry_errors():
    registry: Registry = Registry("probe")
    registry.register_lazy("probe", "some.module:thing")
    with pytest.raises(ValueError, match="already registered"):
        registry.register_lazy("probe", "other.module:thing")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("probe")(len)  # another object than the lazy entry names
    with pytest.raises(ValueError, match="module:attribute"):
        registry.register_lazy("other", "no_colon")
    with pytest.raises(KeyError, match="did you mean 'probe'"):
        registry.get("prob")


def test_real_registries_list_lazy_entries():
    from medrobust.corruptions import CORRUPTIONS
    from medrobust.data import DATASETS
    from medrobust.tasks import TASKS

    assert {"nifti", "dicom", "derm-synth", "medmnist", "mni152-tissue", "isic", "image-folder"} <= set(
        DATASETS.names()
    )
    assert {"gaussian_blur", "motion", "gibbs", "matched_noise"} <= set(CORRUPTIONS.names())
    assert set(TASKS.names()) == {"classification", "ordinal", "segmentation"}
    from medrobust.corruptions.blur import GaussianBlur
    from medrobust.data.nifti import build_nifti

    assert CORRUPTIONS.get("gaussian_blur") is GaussianBlur and DATASETS.get("nifti") is build_nifti
