"""Shared machinery of the fake agent CLIs (fake_claude.py, fake_codex.py, fake_agent.py).

Standard library only, and only cheap modules at import time: the fakes are started as
``sys.executable path/to/fake_x.py ...`` many times per test run.

Directives are read from the prompt text (anywhere in it), then from the environment variable
``FAKE_AGENT_DIRECTIVES`` (handy when the prompt is built by the code under test). For a directive
given more than once, the first occurrence wins.

    @fixture=NAME      replay tests/fixtures/agent-transcripts/NAME.{stdout,stderr,exitcode}
    @sleep=SECONDS     sleep (float) before the final output
    @ignore-term       ignore SIGTERM (the @child too), so only SIGKILL ends it
    @exit=N            exit with N (0..255) whatever the output was
    @ratelimit         rate-limited run (exit 1)
    @child             spawn a long-sleeping child in the same process group before sleeping
    @escape            spawn a long-sleeping child in a session of its own (setsid): it leaves the
                       agent's process group, as a daemonising tool would
    @write=FILENAME    write FILENAME (relative to the working directory) at startup
    @counter=PATH      increment the integer in file PATH on every run (flock'ed)
    @fail-until=N      with @counter: runs 1..N-1 fail (exit 1), run N and later succeed
    @fail-fixture=NAME the fixture replayed by a failing @fail-until run (default: per fake)
    @silent=SECONDS    print nothing at all (stdout or stderr) for that long at the start
    @turns=N           (fake_claude, stream-json) N assistant messages, @sleep before each, then
                       a result with num_turns N (instead of a fixture)
    @cost=USD          (fake_claude) the result reports total_cost_usd USD
    @commit=FILENAME   at startup, write FILENAME and commit it (git, in the working directory)
                       with subject "fake: add FILENAME" (before any @write)
    @ask=TOOL          (fake_claude) ask for permission to use TOOL through the permission-prompt
                       tool, as Claude Code does, and answer with what it said

``FAKE_AGENT_LOG=/path``: one JSON line per event, appended with a single O_APPEND write:
``start`` (first thing), ``parsed`` (the options the CLI's parser saw, ``prompt`` and
``prompt_bytes``, and what the fake read from its options, e.g. ``resume``), ``message`` (a user
message read from stdin while it runs, ``text``), ``child`` / ``escaped`` (with ``child_pid``), ``sleep`` (right before sleeping: all
setup is done, signal dispositions are final), ``end`` (with ``code``, or ``signal`` when ended
by SIGTERM/SIGINT/SIGHUP). Every line has event, pid, t, argv, cwd, ws, ppid, pgid.
A run ended by SIGKILL has no ``end`` line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~4 ms at each start)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES_DIR = os.environ.get("FAKE_AGENT_FIXTURES") or os.path.join(
    os.path.dirname(HERE), "fixtures", "agent-transcripts"
)

USAGE_EXIT = 2  # bad arguments / bad directive / unknown fixture

_VALUE_DIRECTIVES = (
    "fixture", "sleep", "exit", "write", "counter", "fail-until", "fail-fixture",
    "silent", "turns", "cost", "commit", "ask",
)  # fmt: skip
_FLAG_DIRECTIVES = ("ratelimit", "ignore-term", "child", "escape")
# "@name" or "@name=value", not preceded by a word char (so e-mail addresses don't match).
_DIRECTIVE_RE = re.compile(r"(?<![\w@])@([a-z][a-z-]*)(?:=([^\s'\"`]*))?(?![\w-])")
_NUMBER_RE = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_FIXTURE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

_CHILD_CODE = (
    "import signal, sys, time\n"
    "if sys.argv[2] == '1':\n"
    "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "time.sleep(1000)\n"
)


class UsageError(Exception):
    """Wrong arguments or directives: reported on stderr, exit USAGE_EXIT."""


class Directives:
    def __init__(self) -> None:
        self.fixture: str | None = None
        self.sleep: float = 0.0
        self.exit: int | None = None
        self.write: str | None = None
        self.counter: str | None = None
        self.fail_until: int | None = None
        self.fail_fixture: str | None = None
        self.silent: float = 0.0
        self.turns: int | None = None
        self.cost: float | None = None
        self.commit: str | None = None
        self.ask: str | None = None
        self.ratelimit = False
        self.ignore_term = False
        self.child = False
        self.escape = False

    def __repr__(self) -> str:
        return f"Directives({self.__dict__!r})"


def parse_directives(text: str) -> Directives:
    d = Directives()
    seen: set[str] = set()
    for m in _DIRECTIVE_RE.finditer(text):
        name, value = m.group(1), m.group(2)
        if name in _FLAG_DIRECTIVES:
            if value is not None:
                raise UsageError(f"directive @{name} takes no value (got {m.group(0)!r})")
            setattr(d, name.replace("-", "_"), True)
        elif name in _VALUE_DIRECTIVES and name not in seen:  # first occurrence wins
            seen.add(name)
            _set_value(d, name, value)
        # any other @word (an @mention, a decorator...) is not ours
    if d.fail_until is not None and d.counter is None:
        raise UsageError("@fail-until=N needs @counter=PATH (the file that counts the runs)")
    return d


def _set_value(d: Directives, name: str, value: str | None) -> None:
    if not value:
        raise UsageError(f"directive @{name} needs a value: @{name}=...")
    attr = name.replace("-", "_")
    if name in ("sleep", "silent", "cost"):
        if not _NUMBER_RE.fullmatch(value):
            raise UsageError(f"@{name} needs a number (e.g. @{name}=0.5), got {value!r}")
        setattr(d, attr, float(value))
    elif name in ("exit", "fail-until", "turns"):
        if not value.isdigit() or (name == "exit" and int(value) > 255):
            raise UsageError(f"@{name} needs an integer (0..255 for @exit), got {value!r}")
        setattr(d, attr, int(value))
    elif name in ("fixture", "fail-fixture"):
        setattr(d, attr, check_fixture_name(value))
    else:  # write, counter, commit, ask
        setattr(d, attr, value)


def check_fixture_name(name: str) -> str:
    if not _FIXTURE_NAME_RE.fullmatch(name) or not os.path.exists(
        os.path.join(FIXTURES_DIR, name + ".exitcode")
    ):
        raise UsageError(f"unknown fixture {name!r} (see {FIXTURES_DIR})")
    return name


# --------------------------------------------------------------------------- output


class Output:
    """What a run prints: ``pre_*`` before the @sleep, ``post_*`` after it. With ``steps``, each
    step's stdout comes after an @sleep of its own (and post_* right after the last). ``then``
    runs last, before the exit (e.g. answering user messages read from stdin)."""

    def __init__(
        self,
        post_out: bytes = b"",
        code: int = 0,
        pre_out: bytes = b"",
        pre_err: bytes = b"",
        post_err: bytes = b"",
        steps: list[bytes] | None = None,
        then: Callable[[Fake], None] | None = None,
    ) -> None:
        self.pre_out, self.pre_err = pre_out, pre_err
        self.post_out, self.post_err = post_out, post_err
        self.code = code
        self.steps = steps
        self.then = then


def read_fixture(name: str) -> tuple[bytes, bytes, int]:
    base = os.path.join(FIXTURES_DIR, check_fixture_name(name))
    with open(base + ".stdout", "rb") as f:
        out = f.read()
    with open(base + ".stderr", "rb") as f:
        err = f.read()
    with open(base + ".exitcode", "rb") as f:
        code = int(f.read().strip())
    return out, err, code


def replay(name: str, stderr_first: bool = False) -> Output:
    """The fixture's bytes, split so that the last stdout line comes after the @sleep
    (a stream-json/JSONL run shows its early events, then sleeps, then its final event)."""
    out, err, code = read_fixture(name)
    cut = out.rfind(b"\n", 0, len(out) - 1) + 1 if out else 0
    o = Output(pre_out=out[:cut], post_out=out[cut:], code=code)
    if stderr_first:
        o.pre_err = err
    else:
        o.post_err = err
    return o


def rewrite(data: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    """``data`` with ``change`` applied to each JSON object line (in place); other lines, and
    lines ``change`` leaves as they were, keep their bytes."""
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            before = json.dumps(obj, sort_keys=True)
            change(obj)
            if json.dumps(obj, sort_keys=True) != before:
                lines[i] = json.dumps(obj, separators=(",", ":")).encode()
    return b"\n".join(lines)


def jsonl(data: bytes) -> list[dict[str, Any]]:
    """The JSON objects among the lines of ``data`` (non-JSON lines skipped)."""
    objs: list[dict[str, Any]] = []
    for line in data.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            objs.append(obj)
    return objs


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except OSError:  # reader gone (EPIPE) or closed fd: a real CLI would just go on
            return
        view = view[n:]


# --------------------------------------------------------------------------- the run


class Fake:
    def __init__(self, name: str) -> None:
        self.name = name
        self.log_path = os.environ.get("FAKE_AGENT_LOG")
        self.started = False
        self.ended = False
        self.child_pid: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            if signal.getsignal(sig) is not signal.SIG_IGN:  # keep what nohup & co. ignore
                signal.signal(sig, self._on_signal)
        self.log("start")
        self.started = True

    # -- logging
    def log(self, event: str, **extra: object) -> None:
        if not self.log_path:
            return
        try:
            cwd: str | None = os.getcwd()
        except OSError:
            cwd = None
        rec = {
            "event": event,
            "pid": os.getpid(),
            "t": time.time(),
            "argv": sys.argv,
            "cwd": cwd,
            "ws": os.environ.get("DISPATCH_RUNNER_WORKSPACE"),
            "ppid": os.getppid(),
            "pgid": os.getpgid(0),
            "fake": self.name,
        }
        rec.update(extra)
        line = (json.dumps(rec) + "\n").encode()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write on an O_APPEND fd: lines never interleave
        finally:
            os.close(fd)

    def _log_end(self, **extra: object) -> None:
        if self.started and not self.ended:
            self.ended = True
            self.log("end", **extra)

    def _on_signal(self, signum: int, frame: object) -> None:
        # Log, then die of the same signal with its default action, so the parent sees
        # returncode == -signum exactly as with a process that never handled it.
        try:
            self._log_end(signal=signum)
        except OSError:
            pass  # dying of the signal matters more than the log line
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)  # not reached

    # -- directives with side effects
    def setup(self, d: Directives) -> None:
        if d.ignore_term:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if d.commit:
            commit_file(d.commit, f"written by {self.name} pid {os.getpid()}\n")
        if d.write:
            with open(d.write, "w", encoding="utf-8") as f:
                f.write(f"written by {self.name} pid {os.getpid()} in {os.getcwd()}\n")

    def spawn_child(self, ignore_term: bool, *, escape: bool = False) -> None:
        devnull = os.devnull
        pid = os.posix_spawn(
            sys.executable,
            [sys.executable, "-S", "-c", _CHILD_CODE, "fake-agent-child", "1" if ignore_term else "0"],
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, devnull, os.O_WRONLY, 0),
            ],
            # With @ignore-term, SIGTERM stays SIG_IGN across the exec (no window in which the
            # child could still die of it); otherwise every signal starts with its default.
            setsigdef=(signal.SIGINT, signal.SIGHUP) + (() if ignore_term else (signal.SIGTERM,)),
            setsid=escape,
        )
        if escape:  # left to fend for itself: only something that tracks the run finds it
            self.log("escaped", child_pid=pid)
        else:
            self.child_pid = pid
            self.log("child", child_pid=pid)

    def _reap_child(self) -> None:
        if self.child_pid is None:
            return
        try:
            os.kill(self.child_pid, signal.SIGKILL)
            os.waitpid(self.child_pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass

    def finish(self, code: int) -> None:
        self._reap_child()  # on a normal exit; after a signal the child is left to the group kill
        self._log_end(code=code)
        os._exit(code)

    def play(self, out: Output, d: Directives) -> None:
        if d.child:
            self.spawn_child(d.ignore_term)
        if d.escape:
            self.spawn_child(d.ignore_term, escape=True)
        self.pause(d.silent, "silent")
        write_all(1, out.pre_out)
        write_all(2, out.pre_err)
        for step in out.steps or ():
            self.pause(d.sleep)
            write_all(1, step)
        if out.steps is None:
            self.pause(d.sleep)
        write_all(1, out.post_out)
        write_all(2, out.post_err)
        if out.then is not None:
            out.then(self)
        self.finish(out.code if d.exit is None else d.exit)

    def pause(self, seconds: float, event: str = "sleep") -> None:
        if seconds <= 0:
            return
        self.log(event, seconds=seconds)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(left)


def commit_file(name: str, text: str) -> None:
    """Write ``name`` and commit it in the working directory's git repository."""
    import subprocess  # only needed here

    with open(name, "w", encoding="utf-8") as f:
        f.write(text)
    who = ["-c", "user.name=fake", "-c", "user.email=fake@example.invalid"]
    for args in (["add", "--", name], [*who, "commit", "-q", "-m", f"fake: add {name}"]):
        done = subprocess.run(["git", *args], capture_output=True, check=False)
        if done.returncode != 0:
            raise UsageError(f"@commit={name}: git {args[-3:]} failed: {done.stderr.decode().strip()}")


def bump_counter(path: str) -> int:
    import fcntl  # only needed here

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = b""
        while chunk := os.read(fd, 4096):
            data += chunk
        n = int(data.strip() or b"0") + 1
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, b"%d\n" % n)
        return n
    finally:
        os.close(fd)


def split_args(argv: list[str], value_flags: set[str]) -> tuple[dict[str, str | bool], list[str]]:
    """Options and positionals. ``--opt=value`` works for any option; ``--opt value`` only for
    those in value_flags; any other option is a boolean switch (unknown flags are accepted)."""
    opts: dict[str, str | bool] = {}
    positionals: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--":
            positionals.extend(it)
        elif not arg.startswith("-") or arg == "-":
            positionals.append(arg)
        else:
            name, eq, value = arg.partition("=")
            if eq:
                opts[name] = value
            elif name in value_flags:
                following = next(it, None)
                if following is None:
                    raise UsageError(f"option {name} needs a value")
                opts[name] = following
            else:
                opts[name] = True
    return opts, positionals


def read_stdin_prompt(prog: str) -> str:
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError(f"{prog}: no prompt given (pass it as an argument or on stdin)")
    return sys.stdin.buffer.read().decode("utf-8", "replace")


def piped_stdin() -> str | None:
    """stdin's text when it is not a terminal (a file, a pipe, /dev/null gives ""), else None."""
    if sys.stdin is None or sys.stdin.isatty():
        return None
    return sys.stdin.buffer.read().decode("utf-8", "replace")


class CliExit(Exception):
    """An early exit that imitates the real CLI (e.g. a CLI-side argument error)."""

    def __init__(self, code: int, stdout: bytes = b"", stderr: bytes = b"") -> None:
        super().__init__(code)
        self.code, self.stdout, self.stderr = code, stdout, stderr


def main(
    name: str,
    parse_args: Callable[[list[str]], tuple[str, dict[str, Any]]],
    build_output: Callable[[dict[str, Any], Directives, bool, int | None], Output],
) -> None:
    """Run one fake.

    parse_args(argv) -> (prompt, ctx); it may raise UsageError or CliExit. ``ctx["options"]``,
    the options the parser saw, is logged (``parsed``) with the prompt.
    build_output(ctx, directives, failing, attempt) -> Output; ``failing`` is True on a run
    that @fail-until makes fail, ``attempt`` the @counter value (or None).
    """
    fake = Fake(name)
    try:
        prompt, ctx = parse_args(sys.argv[1:])
        fake.log(
            "parsed",
            options=sorted(ctx.get("options", {})),
            prompt=prompt[:2000],
            prompt_bytes=len(prompt.encode()),
            **ctx.get("log", {}),
        )
        d = parse_directives(prompt + "\n" + os.environ.get("FAKE_AGENT_DIRECTIVES", ""))
        fake.setup(d)
        attempt = bump_counter(d.counter) if d.counter else None
        failing = d.fail_until is not None and attempt is not None and attempt < d.fail_until
        out = build_output(ctx, d, failing, attempt)
    except UsageError as e:
        write_all(2, f"{name}: {e}\n".encode())
        fake.finish(USAGE_EXIT)
        return
    except CliExit as e:
        write_all(1, e.stdout)
        write_all(2, e.stderr)
        fake.finish(e.code)
        return
    fake.play(out, d)
