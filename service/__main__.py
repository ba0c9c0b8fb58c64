"""`python -m terdguard.service` runs the `terdguard` command line."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
