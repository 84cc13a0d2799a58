"""Fake agent CLIs for the tests; run them as ``[sys.executable, FAKE_CLAUDE, ...]``.

See _fakecommon.py for the @directives and FAKE_AGENT_LOG, overlap.py to read that log.
"""

from pathlib import Path

FAKES_DIR = Path(__file__).resolve().parent
FAKE_CLAUDE = FAKES_DIR / "fake_claude.py"
FAKE_CODEX = FAKES_DIR / "fake_codex.py"
FAKE_AGENT = FAKES_DIR / "fake_agent.py"
FIXTURES_DIR = FAKES_DIR.parent / "fixtures" / "agent-transcripts"
FAKE_GEMINI = FAKES_DIR / "fake_gemini.py"
FAKE_OPENCODE = FAKES_DIR / "fake_opencode.py"
