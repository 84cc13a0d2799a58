"""The fork server's old entry point (`python -m dispatch_runner.forkserver`), kept for peers
that started before an upgrade and still launch it; it lives in launch/forkserver.py."""

import sys

from .launch.forkserver import main

if __name__ == "__main__":
    sys.exit(main())
