"""`python -m updp` is the same as the `updp` console script."""

from updp.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
