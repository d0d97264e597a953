"""The repository's command-line entry point, kept at the top level where the project layout
puts it. The commands live in :mod:`graphslim.cli` (installed inside the ``graphslim``
namespace, so no generic top-level ``cli`` module lands in site-packages); this file only
lets ``python cli.py ...`` run from a checkout."""

from graphslim.cli import app, main

__all__ = ["app", "main"]

if __name__ == "__main__":
    main()
