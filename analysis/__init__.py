"""Analysis of MNIST workbench runs stored in MLflow: metrics, figures, galleries and reports.

`runs` reads runs back from a tracking store, `metrics` computes diagnostics from arrays, `plots` and
`gallery` draw them, `report` assembles a per-run report and `cli` is the `mnist-analysis` command.
Submodules are imported on demand so that `import analysis` stays cheap.
"""

from analysis.runs import AnalysisError

__all__ = ["AnalysisError"]
