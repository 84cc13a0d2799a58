"""Domain values: agent references, priorities and the workspace transition table (DESIGN §1, §3)."""

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatch_runner.errors import InvalidArgument, InvalidTransition
from dispatch_runner.model import FINISHED, NEXT, AgentRef, Priority, WorkspaceState, check_transition

S = WorkspaceState


# ---- AgentRef ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pool", "model"),
    [
        ("claude", "claude", None),
        ("claude:opus", "claude", "opus"),
        ("codex:gpt-5.4", "codex", "gpt-5.4"),
        ("opencode:openrouter/anthropic/claude-sonnet-4", "opencode", "openrouter/anthropic/claude-sonnet-4"),
        ("  gemini:gemini-2.5-pro \n", "gemini", "gemini-2.5-pro"),
        ("my_agent.v2", "my_agent.v2", None),
    ],
)
def test_agent_splits_into_pool_and_model_at_the_first_colon(text: str, pool: str, model: str | None) -> None:
    assert AgentRef.parse(text) == AgentRef(pool=pool, model=model)


@pytest.mark.parametrize(
    ("text", "model"),
    [
        ("codex-spark", None),
        ("codex-spark:fast", "fast"),
        ("codex:gpt-5.3-codex-spark", "gpt-5.3-codex-spark"),
    ],
)
def test_anything_naming_codex_spark_runs_in_the_codex_spark_pool(text: str, model: str | None) -> None:
    ref = AgentRef.parse(text)
    assert (ref.pool, ref.base, ref.model) == ("codex-spark", "codex-spark", model)


def test_agent_ref_prints_as_base_colon_model() -> None:
    assert str(AgentRef.parse("codex:gpt-5.4")) == "codex:gpt-5.4"
    assert str(AgentRef.parse("claude")) == "claude"


@pytest.mark.parametrize(
    "text", ["", "   ", ":opus", "claude opus", "-claude", "claude;rm -rf /", "$(whoami)", "--yolo:x"]
)
def test_malformed_agent_is_refused_with_an_actionable_message(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        AgentRef.parse(text)
    assert info.value.field == "agent"
    assert str(info.value) == (
        f"agent {text.strip()!r} is not of the form base[:model], e.g. claude or codex:gpt-5.4"
    )


@pytest.mark.parametrize(
    "model",
    [
        "",
        "--yolo",
        "-m",
        "--dangerously-skip-permissions",
        "op us",
        "x;y",
        "a\nb",
        ".hidden",
        "/abs",
        "x" * 129,
        "x --yolo",
    ],
)
def test_a_model_variant_that_could_be_read_as_an_option_or_is_malformed_is_refused(model: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        AgentRef.parse(f"gemini:{model}")
    assert info.value.field == "agent"
    shown = repr(model) if len(model) <= 60 else repr(model[:60] + "...")
    assert str(info.value).startswith(
        f"model variant {shown} of agent 'gemini' is not allowed: it must start with a letter or digit"
    )


def test_model_keeps_colons_after_the_first() -> None:
    assert AgentRef.parse("opencode:ollama/llama3:8b") == AgentRef(pool="opencode", model="ollama/llama3:8b")


names = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)
models = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._/@+:-]{0,30}", fullmatch=True)


@given(
    base=names.filter(lambda n: "codex-spark" not in n),
    model=st.one_of(st.none(), models.filter(lambda m: "codex-spark" not in m)),
)
def test_any_well_formed_agent_round_trips(base: str, model: str | None) -> None:
    text = base if model is None else f"{base}:{model}"
    ref = AgentRef.parse(text)
    assert ref == AgentRef(pool=base, model=model)
    assert str(ref) == text


@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=30))
def test_parse_either_returns_a_well_formed_ref_or_raises_invalid_argument(text: str) -> None:
    try:
        ref = AgentRef.parse(text)
    except InvalidArgument as exc:
        assert exc.field == "agent"
        return
    assert ref.pool
    assert " " not in str(ref)
    assert ref.model is None or ref.model != ""


# ---- Priority ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "priority"),
    [
        (None, Priority.MEDIUM),
        ("", Priority.MEDIUM),
        ("critical", Priority.CRITICAL),
        ("HIGH", Priority.HIGH),
        ("Medium", Priority.MEDIUM),
        ("low", Priority.LOW),
    ],
)
def test_priority_parses_case_insensitively_and_defaults_to_medium(
    text: str | None, priority: Priority
) -> None:
    assert Priority.parse(text) is priority


def test_priorities_order_critical_first() -> None:
    assert sorted(Priority) == [Priority.CRITICAL, Priority.HIGH, Priority.MEDIUM, Priority.LOW]
    assert [p.label for p in Priority] == ["critical", "high", "medium", "low"]
    assert [int(p) for p in Priority] == [0, 1, 2, 3]


@pytest.mark.parametrize("text", ["urgent", "1", "med", "label", "mro"])
def test_unknown_priority_lists_the_allowed_values(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        Priority.parse(text)
    assert info.value.field == "priority"
    assert str(info.value) == f"unknown priority {text!r}; use one of critical, high, medium, low"


# ---- the transition table ---------------------------------------------------------------------

ALLOWED = {
    (S.QUEUED, S.RUNNING),
    (S.QUEUED, S.CANCELLED),
    (S.RUNNING, S.QUEUED),  # retry with attempts left, or a rate-limited requeue
    (S.RUNNING, S.COMPLETED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.KILLED),
    (S.RUNNING, S.LOST),
    # a follow-up (dispatch resume, message) queues an ended workspace again to resume its session
    (S.COMPLETED, S.QUEUED),
    (S.FAILED, S.QUEUED),
    (S.KILLED, S.QUEUED),
    (S.LOST, S.QUEUED),
}


@pytest.mark.parametrize(("current", "target"), sorted(ALLOWED))
def test_transition_table_allows_the_design_moves(current: WorkspaceState, target: WorkspaceState) -> None:
    assert check_transition(current, target) is target


@pytest.mark.parametrize(
    ("current", "target"), sorted(set(itertools.product(WorkspaceState, WorkspaceState)) - ALLOWED)
)
def test_transition_table_refuses_every_other_move(current: WorkspaceState, target: WorkspaceState) -> None:
    with pytest.raises(InvalidTransition) as info:
        check_transition(current, target)
    assert str(info.value) == f"workspace state cannot move from {current.value} to {target.value}"


def test_table_covers_every_state_and_finished_states_move_only_to_a_follow_up() -> None:
    assert set(NEXT) == set(WorkspaceState)
    assert FINISHED == {S.COMPLETED, S.FAILED, S.KILLED, S.LOST, S.CANCELLED}
    assert {s for s in WorkspaceState if s.finished} == FINISHED
    assert NEXT[S.CANCELLED] == frozenset()  # it never ran: there is no session to resume
    assert all(NEXT[s] == {S.QUEUED} for s in FINISHED - {S.CANCELLED})
    assert [s.value for s in WorkspaceState] == [
        "queued",
        "running",
        "completed",
        "failed",
        "killed",
        "lost",
        "cancelled",
    ]
