"""Pages of a run's output (`workspaces.log_page`): no line skipped or repeated while the run
writes, a partly written line waits, a byte cursor seeks to where the last page ended."""

from pathlib import Path

from dispatch_runner.workspaces import log_page


def _write(path: Path, out: str = "", err: str = "") -> None:
    with open(path / "run-1.out.log", "a") as f:
        f.write(out)
    with open(path / "run-1.err.log", "a") as f:
        f.write(err)


def test_both_streams_never_skip_or_repeat_a_line_while_the_run_writes(tmp_path: Path) -> None:
    _write(tmp_path, "o1\n", "e1\ne2\n")
    first = log_page(tmp_path, 1, "both", offset=0, limit=10, settled=False)
    assert first.lines == ["o1"] and not first.eof  # stderr waits: stdout is still growing
    _write(tmp_path, "o2\no3\n", "e3\n")
    second = log_page(tmp_path, 1, "both", offset=first.next_offset, limit=10, settled=True)
    assert first.lines + second.lines == ["o1", "o2", "o3", "[stderr] e1", "[stderr] e2", "[stderr] e3"]
    assert second.eof


def test_a_partly_written_line_waits_for_its_newline(tmp_path: Path) -> None:
    _write(tmp_path, "whole\nhal")
    page = log_page(tmp_path, 1, "stdout", offset=0, limit=10, settled=False)
    assert page.lines == ["whole"] and not page.eof
    _write(tmp_path, "f\n")
    rest = log_page(
        tmp_path, 1, "stdout", offset=page.next_offset, limit=10, settled=False, cursor=page.cursor
    )
    assert rest.lines == ["half"]


def test_a_cursor_seeks_where_the_last_page_ended(tmp_path: Path) -> None:
    _write(tmp_path, "".join(f"line {n}\n" for n in range(10)))
    a = log_page(tmp_path, 1, "stdout", offset=0, limit=4, settled=True)
    b = log_page(tmp_path, 1, "stdout", offset=a.next_offset, limit=4, settled=True, cursor=a.cursor)
    c = log_page(tmp_path, 1, "stdout", offset=b.next_offset, limit=4, settled=True, cursor=b.cursor)
    assert a.more and b.more and not c.more and c.eof
    assert a.lines + b.lines + c.lines == [f"line {n}" for n in range(10)]
    # by line offset alone, the same page
    assert log_page(tmp_path, 1, "stdout", offset=4, limit=4, settled=True).lines == b.lines


def test_a_very_long_line_is_cut_for_a_model_and_whole_for_a_person(tmp_path: Path) -> None:
    _write(tmp_path, "x" * 20000 + "\n")
    cut = log_page(tmp_path, 1, "stdout", offset=0, limit=5, settled=True)
    assert cut.lines[0].endswith("… [12000 more characters]")
    whole = log_page(tmp_path, 1, "stdout", offset=0, limit=5, settled=True, whole_lines=True)
    assert whole.lines == ["x" * 20000]
