"""`python -m analysis` runs the `mnist-analysis` command."""

from analysis.cli import main

if __name__ == "__main__":
    main()
