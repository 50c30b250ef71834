"""``python -m difflab`` is the same as the ``difflab`` command."""

from difflab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
