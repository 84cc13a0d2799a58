#!/bin/sh
# Install dispatch-runner from this checkout as a command on your PATH (~/.local/bin), the way
# Python tools are installed: with pipx if you have it, else uv, else `pip install --user`, else
# (a system Python that refuses --user installs, PEP 668, or a virtualenv's) in a private
# virtual environment linked into ~/.local/bin, which is what pipx itself does.
# Run it again to upgrade. Uninstall: pipx/uv uninstall dispatch-runner, or remove
# ~/.local/bin/dispatch-runner and ~/.local/share/dispatch-runner.
set -eu
cd "$(dirname "$0")/.."
bin="$HOME/.local/bin"
fail() { echo "install: $*" >&2; exit 1; }

python=$(command -v python3 || command -v python || true)
[ -n "$python" ] || fail "no python3 on PATH; install Python 3.11 or newer"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || fail "$python is Python $("$python" -c 'import sys; print(sys.version.split()[0])'); dispatch-runner needs 3.11 or newer"

if command -v pipx >/dev/null 2>&1; then
  pipx install --force --python "$python" .
elif command -v uv >/dev/null 2>&1; then
  uv tool install --force --reinstall --python "$python" .
elif "$python" -c 'import os, sys, sysconfig
managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
sys.exit(1 if managed or sys.prefix != sys.base_prefix else 0)'; then
  "$python" -m pip install --user --upgrade --quiet --disable-pip-version-check .
else
  venv="${XDG_DATA_HOME:-$HOME/.local/share}/dispatch-runner/venv"
  # made once, upgraded in place: a failed upgrade (offline) leaves the working install alone
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --upgrade --quiet --disable-pip-version-check .
  mkdir -p "$bin"
  ln -sf "$venv/bin/dispatch-runner" "$bin/dispatch-runner"
fi

# pipx/uv (PIPX_BIN_DIR, UV_TOOL_BIN_DIR) or pip --user (macOS framework builds) may have put it
# elsewhere: link it where the README and the client manifests expect it
if [ ! -x "$bin/dispatch-runner" ]; then
  found=$(PATH="$("$python" -m site --user-base)/bin:${PIPX_BIN_DIR:-}:${UV_TOOL_BIN_DIR:-}:$PATH" \
          command -v dispatch-runner || true)
  [ -n "$found" ] || fail "installed, but no dispatch-runner command was found; see the messages above"
  mkdir -p "$bin"
  ln -sf "$found" "$bin/dispatch-runner"
fi
version=$("$bin/dispatch-runner" --version) || fail "$bin/dispatch-runner does not run; see the messages above"
echo "installed: $version in $bin" >&2
case ":$PATH:" in
  *":$bin:"*) ;;
  *) echo "note: $bin is not on this shell's PATH yet; a new login shell adds it (Debian's" \
          "~/.profile does), or run: export PATH=\"$bin:\$PATH\"" >&2 ;;
esac
