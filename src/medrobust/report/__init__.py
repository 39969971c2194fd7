"""The run report: records in ``results.db`` -> one self-contained ``report.html`` and ``summary.md``.

A pure function of the store (Paschali et al., MICCAI 2018: generalizability vs robustness at a glance); it
never recomputes an attack. See ``build_report``.
"""

from typing import TYPE_CHECKING

from medrobust._lazy import lazy_getattr

if TYPE_CHECKING:
    from medrobust.report.build import build_report

# build_report (and with it matplotlib and Jinja) is imported on first use; so are the submodules
__getattr__ = lazy_getattr(__name__, {"build_report": "medrobust.report.build"})

__all__ = ["build_report"]
