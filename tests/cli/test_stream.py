"""`forwardpass stream` as a user runs it: the real command in a subprocess, fed through a real pipe or a growing
file. The first answer must come out while the input is still open; answers keep input order; a malformed line
gets an error line and the stream goes on; rate and latency go to stderr at the end."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

import forwardpass
from forwardpass.repository import default_repository

FORWARDPASS = str(Path(sys.executable).parent / "forwardpass")
WAIT_S = 60


class Streaming:
    """`forwardpass stream ...` running, its stdout read line by line in a thread so a test can wait for each."""

    def __init__(self, repository: Path, *args: str | Path, cwd: Path | None = None) -> None:
        env = {**os.environ, "FORWARDPASS_REPOSITORY": str(repository), "NO_COLOR": "1"}
        self.process = subprocess.Popen(
            [FORWARDPASS, "stream", *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._pump_thread = threading.Thread(target=self._pump, args=(self.process.stdout,), daemon=True)
        self._pump_thread.start()

    def _pump(self, stdout: IO[str] | None) -> None:
        assert stdout is not None
        for line in stdout:
            self.lines.put(line)

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def answer(self) -> dict[str, Any]:
        try:
            return orjson.loads(self.lines.get(timeout=WAIT_S))
        except queue.Empty:
            self.process.kill()
            pytest.fail(f"no answer within {WAIT_S} s; stderr: {self.process.communicate()[1]}")

    def finish(self) -> tuple[int, str]:
        """Close stdin (if still open) and wait for the end: (exit code, stderr); `rest()` then has every line."""
        assert self.process.stdin is not None and self.process.stderr is not None
        if not self.process.stdin.closed:
            self.process.stdin.close()
        stderr = self.process.stderr.read()
        code = self.process.wait(timeout=WAIT_S)
        self._pump_thread.join(timeout=WAIT_S)
        return code, stderr

    def close(self) -> None:
        """Its pipes closed, once the process has ended and the pump has read its output to the end."""
        self._pump_thread.join(timeout=WAIT_S)
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()

    def rest(self) -> list[dict[str, Any]]:
        answers = []
        while not self.lines.empty():
            answers.append(orjson.loads(self.lines.get_nowait()))
        return answers


@pytest.fixture
def run(repository: Path, input_dir: Path) -> Iterator[Any]:
    started: list[Streaming] = []

    def start(*args: str | Path) -> Streaming:
        started.append(Streaming(repository, *args, cwd=input_dir))
        return started[-1]

    yield start
    for streaming in started:
        if streaming.process.poll() is None:
            streaming.process.kill()
        streaming.process.wait(timeout=WAIT_S)
        streaming.close()


def expected_value(repository: Path, record: dict[str, float | None]) -> float:
    model = forwardpass.load("tab_reg", repository=repository)
    try:
        return float(model.predict(record)["value"])
    finally:
        model.close()


def test_answers_come_out_while_the_pipe_is_still_open_in_order_with_errors_alone(run: Any, repository: Path) -> None:
    streaming = run("tab_reg")
    records: list[dict[str, float | None]] = [{"x1": 1.0, "x2": 2.0}, {"x1": -3.5, "x2": None}, {"x1": 0.25, "x2": 8.0}]
    streaming.send(orjson.dumps(records[0]).decode())
    first = streaming.answer()  # stdin is still open: the answer did not wait for the input to end
    assert first == {"line": 1, "prediction": {"value": pytest.approx(expected_value(repository, records[0]))}}
    streaming.send("{this is not json")
    streaming.send(orjson.dumps(records[1]).decode())
    streaming.send(orjson.dumps(records[2]).decode())
    rest = [streaming.answer() for _ in range(3)]
    code, stderr = streaming.finish()
    assert [answer["line"] for answer in rest] == [2, 3, 4]
    assert "is not valid JSON" in rest[0]["error"]
    for answer, record in zip(rest[1:], records[1:], strict=True):
        assert answer["prediction"]["value"] == pytest.approx(expected_value(repository, record))
    assert code == 0
    assert "forwardpass stream: 4 records (1 errors)" in stderr and "records/s" in stderr and "latency" in stderr


def test_a_csv_file_in_one_go(run: Any, repository: Path, tmp_path: Path) -> None:
    (tmp_path / "records.csv").write_text("x2,x1\n2,1\n,3\n")
    streaming = run("tab_reg", tmp_path / "records.csv")
    code, _ = streaming.finish()
    assert code == 0
    answers = streaming.rest()
    assert [answer["line"] for answer in answers] == [2, 3]
    assert answers[0]["prediction"]["value"] == pytest.approx(expected_value(repository, {"x1": 1, "x2": 2}))
    imputed = expected_value(repository, {"x1": 3, "x2": None})  # the empty x2 cell takes the impute value
    assert answers[1]["prediction"]["value"] == pytest.approx(imputed)


def test_follow_reads_a_growing_file_until_interrupted(run: Any, repository: Path, tmp_path: Path) -> None:
    growing = tmp_path / "incoming.jsonl"
    growing.write_text('{"x1": 1, "x2": 2}\n')
    streaming = run("tab_reg", growing, "--follow")
    assert streaming.answer()["line"] == 1
    with growing.open("a") as appender:
        appender.write('{"x1": 4, ')  # half a line: nothing to answer yet
        appender.flush()
        appender.write('"x2": 1}\n')
    assert streaming.answer() == {
        "line": 2,
        "prediction": {"value": pytest.approx(expected_value(repository, {"x1": 4, "x2": 1}))},
    }
    streaming.process.send_signal(signal.SIGINT)
    code, stderr = streaming.finish()
    assert code == 0
    assert "forwardpass stream: 2 records (0 errors)" in stderr


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_a_line_that_is_not_utf8_gets_an_error_line_and_the_stream_goes_on(
    repository: Path, tmp_path: Path, source: str
) -> None:
    """From a FILE, one Latin-1 byte killed the reader thread (a UnicodeDecodeError traceback): no record answered,
    not even the line before it, and exit 0; from stdin in a UTF-8 locale the same, and a text model's stream with
    such a line (stdin in the C locale) ended in a TypeError traceback, exit 1."""
    lines = b"hello world\ncaf\xe9 cats\ndogs\n"
    (tmp_path / "texts.txt").write_bytes(lines)
    env = {**os.environ, "FORWARDPASS_REPOSITORY": str(repository), "LC_ALL": "C.UTF-8"}
    command = [FORWARDPASS, "stream", "text_emb", "--format", "text"]
    if source == "file":
        done = subprocess.run([*command, tmp_path / "texts.txt"], capture_output=True, env=env, timeout=WAIT_S)
    else:
        done = subprocess.run(command, input=lines, capture_output=True, env=env, timeout=WAIT_S)
    assert done.returncode == 0, done.stderr.decode()
    answers = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert [answer["line"] for answer in answers] == [1, 2, 3]
    assert answers[1] == {"line": 2, "error": "is not UTF-8 text"}
    assert "embedding" in answers[0]["prediction"] and "embedding" in answers[2]["prediction"]


def test_usage_errors_are_one_line(run: Any) -> None:
    for args, message in (
        (("tab_reg", "--follow"), "--follow needs a file"),
        (("tab_reg", "--format", "xml"), "--format 'xml' is not a record format"),
        (("tab_reg", "missing.jsonl"), "no such file"),
        (  # the bundled OCR pipeline: it said to call forwardpass.load_pipeline, an API a shell user cannot
            ("ocr", "--repository", str(default_repository())),
            "'ocr' is a pipeline of models and this command takes one model; forwardpass predict ocr and",
        ),
    ):
        code, stderr = run(*args).finish()
        assert code == 2, stderr
        assert message in stderr and "Traceback" not in stderr
