"""Agent command lines: a template compiled at dispatch, materialised once when the run starts.

Placeholders: {prompt} (the prompt as one element), {prompt_file} (path of the workspace's
prompt.md), {model}, {workspace}, {task}, {branch}. Each is expanded once, in a single pass: text
put in for one placeholder is never scanned again, so a directory named `{task}` or a task that
mentions `{prompt}` stays literal.

Client text ({prompt}, {task}) is data, never an option: with `end_of_options` (the default) a
`--` goes before the first element that begins with client text, unless the template already
has one there; agent CLIs (commander, clap, yargs) read every element after `--` as data. The
prompt never needs to be an element at all: `stdin: prompt` or {prompt_file} deliver it whole.

The compiled form (stored in the workspace's spec) keeps client text as references, so the store
holds the task once: an element is a literal string, or a list of literal strings and
`{"ref": name}` segments. Pure and stdlib-only: the per-run shim imports this.
"""

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from .validate import human_size

PLACEHOLDERS: Final = ("prompt", "prompt_file", "model", "workspace", "task", "branch", "session_id")
CLIENT_TEXT: Final = frozenset({"prompt", "task"})
# filled when a run starts, not at dispatch: client text, and the agent session a resume run continues
RUN_REFS: Final = CLIENT_TEXT | {"session_id"}
SESSION_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
PLACEHOLDER_RE: Final = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
# Linux refuses any one argv element longer than MAX_ARG_STRLEN (32 pages, the NUL included).
MAX_ARG_BYTES: Final = 32 * 4096 - 1
END_OF_OPTIONS: Final = "--"

Segment = str | dict[str, str]
Element = str | list[Segment]


def unknown_placeholders(element: str) -> list[str]:
    """Names in braces that are not placeholders (a typo such as {promt})."""
    return [name for name in re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", element) if name not in PLACEHOLDERS]


def names(element: str) -> list[str]:
    return PLACEHOLDER_RE.findall(element)


def starts_with_client_text(element: str) -> bool:
    m = PLACEHOLDER_RE.match(element)
    return m is not None and m.group(1) in CLIENT_TEXT


def first_client_index(command: Sequence[str]) -> int | None:
    """Index of the first element whose expansion begins with client text, or None."""
    return next((i for i, el in enumerate(command) if starts_with_client_text(el)), None)


def options_after_client_text(command: Sequence[str]) -> list[str]:
    """Elements that look like options but come after the first client-text element: with `--`
    before that element the CLI would read them as data, so such a template is refused."""
    first = first_client_index(command)
    if first is None:
        return []
    return [el for el in command[first + 1 :] if el.startswith("-") and el != END_OF_OPTIONS]


def compile_argv(
    command: Sequence[str], values: Mapping[str, str | None], *, end_of_options: bool = True
) -> list[Element]:
    """Fill every placeholder but {prompt} and {task} (kept as references) in one pass.

    With no model, an element naming {model} is dropped together with the flag just before it
    (`--model {model}` disappears). With end_of_options, `--` is inserted before the first element
    that begins with client text, unless the template already put one before it."""
    out: list[Element] = []
    inserted = not end_of_options
    for element in command:
        found = names(element)
        if "model" in found and values.get("model") is None and not CLIENT_TEXT & set(found):
            if out and isinstance(out[-1], str) and out[-1].startswith("-") and out[-1] != END_OF_OPTIONS:
                out.pop()
            continue
        compiled = _compile_element(element, values) if found else element
        if element == END_OF_OPTIONS:
            inserted = True
        if not inserted and _begins_with_client_text(compiled):
            out.append(END_OF_OPTIONS)
            inserted = True
        out.append(compiled)
    return out


def _begins_with_client_text(element: Element) -> bool:
    """Decided on the filled element: `{model}{prompt}` with no model begins with the prompt."""
    if isinstance(element, str):
        return False
    first = next((seg for seg in element if seg != ""), "")
    return isinstance(first, dict) and first["ref"] in CLIENT_TEXT


def _compile_element(element: str, values: Mapping[str, str | None]) -> Element:
    segments: list[Segment] = []
    pos = 0
    for m in PLACEHOLDER_RE.finditer(element):
        if m.start() > pos:
            segments.append(element[pos : m.start()])
        name = m.group(1)
        if name in RUN_REFS:
            segments.append({"ref": name})
        else:
            segments.append(values.get(name) or "")
        pos = m.end()
    if pos < len(element):
        segments.append(element[pos:])
    if all(isinstance(s, str) for s in segments):
        return "".join(s for s in segments if isinstance(s, str))
    return segments


def expand(text: str, values: Mapping[str, str]) -> str:
    """Fill the placeholders named in `values` in one pass (a prompt template's {task} and
    {workspace}); what is put in is never scanned again, other braces stay as written."""
    return PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def refs(argv: Sequence[Element]) -> set[str]:
    """Which run-time references (client text, session id) a compiled argv needs."""
    return {seg["ref"] for el in argv if isinstance(el, list) for seg in el if isinstance(seg, dict)}


def render(argv: Sequence[Element], lookup: Callable[[str], str]) -> list[str]:
    """The final argv: references replaced by `lookup(name)`; nothing is expanded twice."""
    out: list[str] = []
    for element in argv:
        if isinstance(element, str):
            out.append(element)
            continue
        out.append("".join(seg if isinstance(seg, str) else lookup(seg["ref"]) for seg in element))
    return out


def argv_problem(argv: Sequence[str], env: Mapping[str, str], *, arg_max: int) -> str | None:
    """Why the kernel would refuse to exec this argv (E2BIG), as a phrase, or None."""
    biggest = max(argv, key=lambda a: len(a.encode()), default="")
    size = len(biggest.encode())
    if size > MAX_ARG_BYTES:
        return (
            f"one command-line argument would be {human_size(size)}, more than the "
            f"{human_size(MAX_ARG_BYTES + 1)} Linux allows for a single argument"
        )
    total = sum(len(a.encode()) + 1 + 8 for a in argv)
    total += sum(len(k.encode()) + len(v.encode()) + 2 + 8 for k, v in env.items())
    if total > arg_max:
        return (
            f"the command line and environment would be {human_size(total)}, more than the "
            f"{human_size(arg_max)} this system allows (ARG_MAX)"
        )
    return None
