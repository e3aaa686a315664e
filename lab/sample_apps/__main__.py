"""Run one built-in sample app: ``python -S lab/sample_apps <app> [args]``.

Run as a directory, Python puts this directory first on sys.path; it is replaced by its parent so
that the apps import as the package ``sample_apps`` (their relative imports work) without importing
``lab`` itself, whose ``__init__`` loads the lab's own dependencies.
"""

import importlib
import sys
from pathlib import Path


def main() -> None:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    from sample_apps import APPS  # type: ignore[import-not-found]  # this directory's parent, at run time

    if len(sys.argv) < 2 or sys.argv[1] not in APPS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(APPS)}}} [args...]")
    module = importlib.import_module(f"sample_apps.{sys.argv[1]}")
    module.main(sys.argv[2:])


if __name__ == "__main__":
    main()
