from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worker.durations import BadDuration, format_duration, parse_duration, parse_when


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0s", 0), ("90s", 90), ("10m", 600), ("2h", 7200), ("3d", 259200), ("1h30m", 5400)],
)
def test_parses_durations_as_written_in_options_and_environment(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "10", "ten minutes", "-5m", "5x", "m5"])
def test_refuses_what_is_not_a_duration(text):
    with pytest.raises(BadDuration):
        parse_duration(text)


def test_formats_durations_back_compactly():
    assert format_duration(timedelta(hours=26, minutes=5)) == "1d2h5m"
    assert format_duration(timedelta(0)) == "0s"


def test_reads_a_time_as_iso_or_as_a_duration_before_now():
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)
    assert parse_when("2h", now) == datetime(2026, 11, 22, 10, tzinfo=UTC)
    assert parse_when("2026-11-22T03:00:00Z", now) == datetime(2026, 11, 22, 3, tzinfo=UTC)
    assert parse_when("2026-11-22T03:00:00", now).tzinfo is UTC
    with pytest.raises(BadDuration):
        parse_when("yesterday", now)


def test_logging_survives_a_closed_stderr(monkeypatch, capsys):
    import io

    from worker.logs import _StderrLogger

    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr("sys.stderr", closed)
    _StderrLogger().info("still fine")  # must not raise
    live = io.StringIO()
    monkeypatch.setattr("sys.stderr", live)
    _StderrLogger().info("written")
    assert live.getvalue() == "written\n"
