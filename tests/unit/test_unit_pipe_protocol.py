"""The supervisor's parser of what workers send through their pipe (pggit_supervisor.pipe_protocol):
whole lines, partial lines, several lines in one read, and lines that are not the protocol."""

from __future__ import annotations

from pggit_supervisor.pipe_protocol import (
    MAX_LINE_BYTES,
    Alive,
    BadLine,
    Busy,
    Connected,
    Idle,
    LineReader,
    Rescued,
    parse_line,
)


def test_each_message_a_worker_sends_parses_to_its_record():
    assert parse_line(b"alive") == Alive()
    assert parse_line(b"connected") == Connected()
    assert parse_line(b"busy 42 1234") == Busy("42", 1234)
    assert parse_line(b"idle ok") == Idle("ok")
    assert parse_line(b"idle failed") == Idle("failed")
    assert parse_line(b"idle stopped") == Idle("stopped")
    assert parse_line(b"rescued 3") == Rescued(3)


def test_busy_with_tool_group_zero_means_no_tool_yet():
    assert parse_line(b"busy 42 0") == Busy("42", None)


def test_an_empty_or_blank_line_says_nothing():
    assert parse_line(b"") is None
    assert parse_line(b"  \t ") is None


def test_extra_whitespace_between_words_is_tolerated():
    assert parse_line(b"  busy   7   99 \r") == Busy("7", 99)


def test_a_tool_group_that_is_not_a_plain_number_is_a_bad_line():
    for pgid in (b"-5", b"12x", b"\xd9\xa3", b"+3", b"1e3"):  # \xd9\xa3 is an Arabic-Indic digit
        message = parse_line(b"busy 42 " + pgid)
        assert isinstance(message, BadLine), pgid
        assert "process group" in message.why


def test_an_unknown_idle_outcome_is_a_bad_line_naming_the_allowed_ones():
    message = parse_line(b"idle maybe")
    assert isinstance(message, BadLine)
    assert message.why == "the outcome is not one of ok, failed, stopped"


def test_wrong_word_counts_and_unknown_verbs_are_bad_lines():
    for raw in (
        b"busy 42",
        b"busy 1 2 3",
        b"idle",
        b"idle ok now",
        b"alive again",
        b"connected now",
        b"hello",
        b"BUSY 1 2",
        b"rescued",
    ):
        message = parse_line(raw)
        assert isinstance(message, BadLine), raw
        assert message.text == raw.decode()


def test_invalid_utf8_is_a_bad_line_not_a_crash():
    message = parse_line(b"\xff\xfe busy")
    assert isinstance(message, BadLine)
    assert "\ufffd" in message.text


def test_a_bad_lines_text_is_shortened_for_the_log():
    message = parse_line(b"x" * 1000)
    assert isinstance(message, BadLine)
    assert len(message.text) == 200


def test_each_message_renders_the_line_that_parses_back_to_it():
    for message in (Alive(), Connected(), Busy("j-1", 77), Busy("j-2", None), Idle("ok"), Idle("stopped"), Rescued(2)):
        line = message.line()
        assert line.endswith(b"\n")
        assert parse_line(line.rstrip(b"\n")) == message


def test_several_lines_in_one_read_give_their_messages_in_order():
    reader = LineReader()
    assert reader.feed(b"alive\nbusy 5 0\nbusy 5 300\nidle ok\n") == [
        Alive(),
        Busy("5", None),
        Busy("5", 300),
        Idle("ok"),
    ]


def test_a_line_split_across_reads_is_kept_until_its_end_arrives():
    reader = LineReader()
    assert reader.feed(b"busy 12") == []
    assert reader.feed(b"3 45") == []
    assert reader.feed(b"6\nidl") == [Busy("123", 456)]
    assert reader.feed(b"e failed\n") == [Idle("failed")]
    assert reader.feed(b"") == []


def test_a_line_fed_byte_by_byte_parses_once():
    reader = LineReader()
    got = []
    for byte in b"alive\nidle stopped\n":
        got += reader.feed(bytes([byte]))
    assert got == [Alive(), Idle("stopped")]


def test_empty_lines_between_messages_are_skipped():
    assert LineReader().feed(b"\n\nalive\n\n") == [Alive()]


def test_a_bad_line_among_good_ones_does_not_hide_them():
    messages = LineReader().feed(b"alive\nbusy x y\nidle ok\n")
    assert messages[0] == Alive()
    assert isinstance(messages[1], BadLine)
    assert messages[2] == Idle("ok")


def test_an_over_long_line_without_newline_is_dropped_not_buffered_and_reported_once():
    reader = LineReader()
    first = reader.feed(b"a" * (MAX_LINE_BYTES + 1))
    assert len(first) == 1 and isinstance(first[0], BadLine) and "longer than" in first[0].why
    for _ in range(100):  # the worker keeps writing without a newline: nothing grows, nothing repeats
        assert reader.feed(b"b" * MAX_LINE_BYTES) == []
        assert len(reader._partial) <= MAX_LINE_BYTES
    # the rest of that line ends at the next newline and is dropped; what follows parses again
    assert reader.feed(b"bbb\nbusy 9 10\n") == [Busy("9", 10)]


def test_an_over_long_complete_line_in_one_read_is_one_bad_line():
    messages = LineReader().feed(b"busy " + b"9" * MAX_LINE_BYTES + b" 1\nalive\n")
    assert len(messages) == 2
    assert isinstance(messages[0], BadLine) and "longer than" in messages[0].why
    assert messages[1] == Alive()


def test_a_line_of_exactly_the_limit_is_still_parsed():
    job_id = "j" * (MAX_LINE_BYTES - len("busy  1"))
    line = f"busy {job_id} 1".encode()
    assert len(line) == MAX_LINE_BYTES
    assert LineReader().feed(line + b"\n") == [Busy(job_id, 1)]


def test_a_rescue_count_that_is_not_a_small_plain_number_is_a_bad_line():
    for count in (b"-1", b"x", b"1e3", b"9999999"):
        message = parse_line(b"rescued " + count)
        assert isinstance(message, BadLine) and message.why == "the count is not a number", count
