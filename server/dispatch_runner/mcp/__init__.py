"""The MCP surface: server assembly and transports (server.py), the tools (tools.py), pushes to
clients (push.py), and every use of the SDK's private attributes (private.py).

Surfaces build typed requests (`dispatch_runner.actions`) and call the runner's public face;
they never reach the store or the launcher.
"""
