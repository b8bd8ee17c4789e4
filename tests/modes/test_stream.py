"""Record streams in process: a lone record is answered without waiting for company, records already waiting share
a forward pass, order is kept, bad records fail alone, and every format parses as the model expects."""

from __future__ import annotations

import errno
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

import forwardpass
from forwardpass.config import ModelConfig
from forwardpass.errors import ConfigError, DecodeError, ForwardpassError
from forwardpass.model import Model
from forwardpass.modes import stream
from forwardpass.modes.stream import (
    LineTooLong,
    RecordFormat,
    RecordParser,
    StreamStats,
    guess_format,
    read_lines,
    run_stream,
)
from forwardpass.repository import default_repository

WAIT_S = 30  # a step that never comes fails the test instead of hanging it


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Model]:
    """A tabular regression: value = 2*a - b + 1, columns a and b (b imputed as 0 when missing: impute_absent)."""
    folder = tmp_path_factory.mktemp("stream-model") / "affine"
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "c"], ["value"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["batch", 1])],
        initializer=[
            numpy_helper.from_array(np.array([[2.0], [-1.0]], np.float32), "w"),
            numpy_helper.from_array(np.array([1.0], np.float32), "c"),
        ],
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 8
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_bytes(onnx_model.SerializeToString())
    config = {
        "max_batch_size": 16,
        "preprocess": {
            "kind": "tabular",
            "columns": [{"name": "a"}, {"name": "b", "impute": 0.0}],
            "impute_absent": True,
        },
        "postprocess": {"kind": "regression"},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    loaded = forwardpass.load(folder)
    yield loaded
    loaded.close()


class Answers:
    """A `write` callback that keeps each answer and lets a test wait for the n-th."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self.arrived: queue.Queue[int] = queue.Queue()

    def __call__(self, line: bytes) -> None:
        assert line.endswith(b"\n")
        self.lines.append(orjson.loads(line))
        self.arrived.put(len(self.lines))

    def wait(self) -> int:
        return self.arrived.get(timeout=WAIT_S)


def test_a_lone_record_is_answered_before_the_next_one_is_even_read(model: Model) -> None:
    """Each line is given only after the previous answer came: a stream that held a lone record back (waiting to
    fill a batch) would never answer, and the test would fail on its timeout."""
    answers = Answers()

    def lines() -> Iterator[str]:
        for a in range(6):
            yield orjson.dumps({"a": a, "b": 1}).decode() + "\n"
            assert answers.wait() == a + 1

    stats = run_stream(model, lines(), answers)
    assert [line["prediction"] for line in answers.lines] == [{"value": pytest.approx(2 * a - 1 + 1)} for a in range(6)]
    assert (stats.records, stats.batches, stats.batched_records, stats.errors) == (6, 6, 6, 0)


def test_records_already_waiting_share_forward_passes_and_keep_their_order(model: Model) -> None:
    """The first answer is held until every line is queued: the records behind it then go in batches of at most
    --max-batch, and answers still come in input order."""
    queued = threading.Event()

    def lines() -> Iterator[str]:
        for a in range(40):
            yield orjson.dumps({"a": a}).decode() + "\n"
        queued.set()

    answers: list[dict[str, object]] = []

    def write(line: bytes) -> None:
        assert queued.wait(WAIT_S)
        answers.append(orjson.loads(line))

    stats = run_stream(model, lines(), write, max_batch=16)
    assert [answer["line"] for answer in answers] == list(range(1, 41))
    assert [answer["prediction"] for answer in answers] == [{"value": pytest.approx(2 * a + 1)} for a in range(40)]
    assert stats.batches <= 1 + 3  # the first record's pass, then 39 waiting records in passes of <= 16
    assert stats.batched_records == 40


def test_bad_records_get_an_error_line_and_the_stream_goes_on(model: Model) -> None:
    lines = ['{"a": 1}\n', "not json\n", "\n", '{"a": "abc"}\n', "[1, 2]\n", '{"a": 2, "b": 3}\n']
    answers = Answers()
    stats = run_stream(model, lines, answers)
    by_line = {answer["line"]: answer for answer in answers.lines}
    assert sorted(by_line) == [1, 2, 4, 5, 6]  # the blank line is not a record
    assert by_line[1]["prediction"] == {"value": pytest.approx(3.0)}
    assert "is not valid JSON" in str(by_line[2]["error"])
    assert "'abc' is not a number" in str(by_line[4]["error"])
    assert "expected a record" in str(by_line[5]["error"])
    assert by_line[6]["prediction"] == {"value": pytest.approx(2.0)}
    assert (stats.records, stats.errors) == (5, 3)
    assert "5 records (3 errors)" in stats.summary() and "records/s" in stats.summary()
    assert "latency ms p50" in stats.summary()


def test_csv_streams_start_with_their_header(model: Model) -> None:
    answers = Answers()
    run_stream(model, ["b,a\n", "1,2\n", "0,5\n", "1,2,3\n"], answers, record_format="csv")
    assert answers.lines[:2] == [
        {"line": 2, "prediction": {"value": pytest.approx(4.0)}},
        {"line": 3, "prediction": {"value": pytest.approx(11.0)}},
    ]
    assert answers.lines[2] == {"line": 4, "error": "has 3 fields, the header has 2"}


def test_a_csv_stream_whose_header_names_a_column_twice_answers_each_record_with_that_error(model: Model) -> None:
    """'a,b,a' gave each record the last 'a' (the header's dict kept one), where a batch job refuses such a table."""
    answers = Answers()
    run_stream(model, ["a,b,a\n", "1,2,5\n", "3,4,6\n"], answers, record_format="csv")
    twice = "the header names column 'a' twice: which of the two is meant would be a guess; rename one"
    assert answers.lines == [{"line": 2, "error": twice}, {"line": 3, "error": twice}]


def test_a_csv_line_whose_quoted_field_is_not_closed_on_it_is_an_error_not_a_record(model: Model) -> None:
    """A stream takes one record per line: '2,"1' (a field whose line break was inside its quotes) was answered as
    a=2, b=1, a record its writer never wrote."""
    answers = Answers()
    run_stream(model, ["a,b\n", '2,"1\n', '0",7\n', '1,"2"\n'], answers, record_format="csv")
    assert [answer["line"] for answer in answers.lines] == [2, 3, 4]
    assert answers.lines[0]["error"] == (
        "is not a CSV row: a quote opened on this line is not closed on it (a CSV stream takes one record per line)"
    )
    assert answers.lines[1]["error"] == "column 'a': '0\"' is not a number"  # the rest of that field, alone
    assert answers.lines[2] == {"line": 4, "prediction": {"value": pytest.approx(1.0)}}


@pytest.mark.parametrize(
    ("record_format", "lines"),
    [("csv", ["\ufeffa,b\n", "2,1\n"]), ("jsonl", ['\ufeff{"a": 2, "b": 1}\n'])],
    ids=["csv", "jsonl"],
)
def test_a_byte_order_mark_before_the_first_line_is_not_read_as_data(
    model: Model, record_format: RecordFormat, lines: list[str]
) -> None:
    """Excel's "CSV UTF-8" starts with one: every record was refused ("unknown field '\ufeffa'"), a JSONL's first."""
    answers = Answers()
    run_stream(model, lines, answers, record_format=record_format)
    assert answers.lines == [{"line": len(lines), "prediction": {"value": pytest.approx(4.0)}}]


def test_an_input_that_fails_to_read_ends_the_stream_with_an_error_after_the_lines_read(model: Model) -> None:
    """A read error (EIO: `forwardpass stream MODEL /proc/self/mem`, a network file system gone) ended the reader
    thread in a traceback and the stream as if its input had ended: exit 0, every record after it unanswered."""

    def lines() -> Iterator[str]:
        yield '{"a": 1}\n'
        yield '{"a": 2}\n'
        raise OSError(errno.EIO, "Input/output error")

    answers = Answers()
    with pytest.raises(ForwardpassError, match=r"^cannot read line 3 of the input \(Input/output error\)"):
        run_stream(model, lines(), answers)
    assert [answer["prediction"]["value"] for answer in answers.lines] == [pytest.approx(3.0), pytest.approx(5.0)]


def test_the_parser_reads_text_and_text_records_for_text_models() -> None:
    text_model = ModelConfig.from_dict({"preprocess": {"kind": "text"}})
    assert RecordParser("text", text_model).parse("hello, world") == "hello, world"
    jsonl = RecordParser("jsonl", text_model)
    assert jsonl.parse('"plain string"') == "plain string"
    assert jsonl.parse('{"text": "in a record", "id": 4}') == "in a record"
    with pytest.raises(DecodeError, match="needs a 'text' field"):
        jsonl.parse('{"body": "x"}')
    assert (guess_format(Path("a.csv")), guess_format(Path("b.txt")), guess_format(None)) == ("csv", "text", "jsonl")


@contextmanager
def following(path: Path) -> Iterator[queue.Queue[str | LineTooLong]]:
    """The lines `read_lines` yields from `path` as it grows, from a reader thread stopped (and checked gone) at
    the end of the block."""
    stop = threading.Event()
    seen: queue.Queue[str | LineTooLong] = queue.Queue()
    with path.open(encoding="utf-8") as file:

        def read() -> None:
            for line in read_lines(file, stop, poll_s=0.01):
                seen.put(line)

        reader = threading.Thread(target=read)
        reader.start()
        try:
            yield seen
        finally:
            stop.set()
            reader.join(timeout=WAIT_S)
    assert not reader.is_alive()


def test_read_lines_follows_growth_and_waits_for_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "growing.jsonl"
    path.write_text('{"a": 1}\n{"a"')
    with following(path) as seen:
        assert seen.get(timeout=WAIT_S) == '{"a": 1}\n'
        with path.open("a", encoding="utf-8") as appender:
            appender.write(': 2}\n{"a": 3}\n')
        assert seen.get(timeout=WAIT_S) == '{"a": 2}\n'  # the half-written line, once whole
        assert seen.get(timeout=WAIT_S) == '{"a": 3}\n'


def test_a_followed_file_cut_short_is_read_again_from_its_start(tmp_path: Path) -> None:
    """logrotate's copytruncate empties the file in place: the stream went on waiting past its old end, and never
    answered another record."""
    path = tmp_path / "events.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n')
    with following(path) as seen:
        assert [seen.get(timeout=WAIT_S), seen.get(timeout=WAIT_S)] == ['{"a": 1}\n', '{"a": 2}\n']
        with path.open("r+", encoding="utf-8") as rotating:
            rotating.truncate(0)
        with path.open("a", encoding="utf-8") as appender:
            appender.write('{"a": 3}\n')
        assert seen.get(timeout=WAIT_S) == '{"a": 3}\n'


def test_a_line_over_the_limit_is_read_to_its_end_without_being_kept(tmp_path: Path) -> None:
    text = "ok\n" + "x" * 25 + "\n" + "y" * 10 + "\n" + "z" * 11
    path = tmp_path / "lines.txt"
    path.write_text(text)
    with path.open(encoding="utf-8") as file:
        assert list(read_lines(file, limit=10)) == ["ok\n", LineTooLong(26), "y" * 10 + "\n", LineTooLong(11)]
    stop = threading.Event()  # followed: a long line still being written is skipped once it passes the limit
    path.write_text("x" * 15)
    with path.open(encoding="utf-8") as file:
        lines = read_lines(file, stop, poll_s=0.01, limit=10)
        with path.open("a", encoding="utf-8") as appender:
            appender.write("x" * 15 + "\n" + '{"a": 1}\n')
        assert [next(lines), next(lines)] == [LineTooLong(31), '{"a": 1}\n']
        stop.set()
        assert list(lines) == []


def test_a_line_too_long_gets_an_error_answer_and_the_stream_goes_on(model: Model) -> None:
    answers = Answers()
    run_stream(model, ['{"a": 1}\n', LineTooLong(9 << 20), '{"a": 2}\n'], answers)
    assert answers.lines == [
        {"line": 1, "prediction": {"value": pytest.approx(3.0)}},
        {"line": 2, "error": f"is {9 << 20} characters long, over the {8 << 20} a line may be"},
        {"line": 3, "prediction": {"value": pytest.approx(5.0)}},
    ]


def test_the_reader_stays_a_few_batches_ahead_of_the_answers(model: Model) -> None:
    """A fast producer (cat of a big file) is read only a few batches ahead: the rest waits in the pipe. The reader
    queued the whole input before (memory grew with it, latency measured queueing)."""
    read = 0
    exhausted = threading.Event()

    def lines() -> Iterator[str]:
        nonlocal read
        for a in range(10_000):
            read += 1
            yield orjson.dumps({"a": a}).decode() + "\n"
        exhausted.set()

    ahead: list[int] = []

    def write(line: bytes) -> None:
        if not ahead:  # the first answer: give the reader time to run ahead, as far as it is let
            exhausted.wait(1.0)
            ahead.append(read)

    stats = run_stream(model, lines(), write, max_batch=4)
    assert stats.records == 10_000
    # the first batch (<= 4), the queue (QUEUED_BATCHES batches of 4), and one line waiting to be queued
    assert ahead[0] <= 4 + stream.QUEUED_BATCHES * 4 + 1


def test_latency_is_summarized_over_the_latest_records(model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream that runs for days keeps no latency per record it ever answered."""
    monkeypatch.setattr(stream, "LATENCY_WINDOW", 3)
    stats = run_stream(model, [orjson.dumps({"a": a}).decode() + "\n" for a in range(5)], Answers())
    assert (stats.records, len(stats.latencies_s)) == (5, 3)
    assert "; latency ms (last 3 records) p50" in stats.summary()


def test_stats_summary_before_any_record() -> None:
    assert StreamStats().summary().startswith("0 records (0 errors)")


def test_a_stateful_model_is_sent_to_the_server() -> None:
    folder = default_repository() / "silero_vad"
    if not (folder / "1").is_dir():
        pytest.skip("bundled model silero_vad is not built (make models)")
    stateful = forwardpass.load(folder, warmup=0)
    with pytest.raises(ConfigError, match="keeps state per sequence: serve it"):
        run_stream(stateful, ['{"audio": [0.0]}\n'], lambda line: None)
    stateful.close()
