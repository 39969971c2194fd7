"""The run report: records in ``results.db`` -> one self-contained ``report.html`` and ``summary.md``.

A pure function of the store (Paschali et al., MICCAI 2018: generalizability vs robustness at a glance); it
never recomputes an attack. See ``build_report``.
"""

from medrobust.report.build import build_report

__all__ = ["build_report"]
