"""`python -m updp` is the same as the `updp` console script."""

from updp.cli import console_main

if __name__ == "__main__":
    console_main()
