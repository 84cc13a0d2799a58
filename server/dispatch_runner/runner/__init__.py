"""The service: one `Runner` per peer implements the actions (`dispatch_runner.actions`) over
the store and the launcher, and runs the background loop. This package's exports are its
public face: surfaces (MCP, CLI) import nothing else of it, nor the store or the launcher."""

from .doctor import checks as doctor_checks
from .remote import LOGS_PATH
from .service import Runner, RunnerStatistics, peer_id, run_drainer

__all__ = ["LOGS_PATH", "Runner", "RunnerStatistics", "doctor_checks", "peer_id", "run_drainer"]
