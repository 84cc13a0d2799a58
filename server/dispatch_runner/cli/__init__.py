"""The command line: `dispatch-runner` (main.py) and the views people read (view.py).

Like the MCP surface it builds typed requests and calls the runner's public face.
"""

from .main import main

__all__ = ["main"]
