"""The one exception type of the analysis: a problem the user can fix, shown as one line."""


class AnalysisError(RuntimeError):
    """A problem the user can fix (unknown run, wrong store, ...); the message is shown as is."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (MLflow's run on for pages), else its type."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
