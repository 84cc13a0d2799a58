"""Starting agents and keeping track of them: the supervisor (processes, signals, liveness), the
fork server and its client, the detached per-run shim, and the files a run leaves behind.

Kept import-light on purpose: a shim imports this package once per agent.
"""
