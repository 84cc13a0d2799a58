"""dispatch-runner: run AI coding agents as supervised background sub-agents.

Kept import-light on purpose: the per-run shim and the CLI import this package, and neither may
pay for the MCP SDK or YAML parsing it does not use.
"""

__version__ = "0.1.0"
