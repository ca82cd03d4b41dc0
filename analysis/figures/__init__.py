"""The figures of both reports, one Display convention (see `common.py`)."""
