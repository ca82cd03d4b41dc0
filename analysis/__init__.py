"""Analysis of MNIST workbench runs stored in MLflow: metrics, figures, galleries and reports.

`runs` reads runs back from a tracking store, `metrics` and `stats` compute from arrays, `figures/`
draws, `report` and `compare_report` assemble the reports, `publish` logs them back and `cli` is
the `mnist-analysis` command (docs/ARCHITECTURE.md has the whole map). Submodules are imported on
demand so that `import analysis` stays cheap.
"""

from analysis.errors import AnalysisError

__all__ = ["AnalysisError"]
