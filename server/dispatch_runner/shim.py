"""The per-run shim's old entry point (`python -m dispatch_runner.shim SPEC`), kept for peers
that started before an upgrade and still launch it; the shim lives in launch/shim.py."""

import sys

from .launch.shim import main

if __name__ == "__main__":
    sys.exit(main())
