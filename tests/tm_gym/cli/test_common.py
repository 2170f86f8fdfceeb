"""The shared CLI runner: one red line and an exit code per error, 130 on Ctrl-C, --debug raises."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from tm_gym.cli._common import (
    EXIT_DNF,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CLIError,
    parse_args,
    positive_float,
    positive_int,
    run_cli,
)
from tm_gym.error import TelemetryError, TrackMasterError


def _raising(exc: BaseException) -> Any:
    def handler(args: argparse.Namespace, out: Any, err: Any) -> int:
        raise exc

    return handler


def test_the_handler_code_comes_back() -> None:
    assert run_cli(lambda args, out, err: 7, argparse.Namespace(), prog="x") == 7


@pytest.mark.parametrize(
    "exc",
    [
        CLIError("no such thing 'q'"),
        TelemetryError("no such thing 'q'"),
        TrackMasterError("no such thing 'q'"),
    ],
)
def test_trackmaster_errors_are_one_red_line(
    exc: Exception, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(_raising(exc), argparse.Namespace(), prog="tm-x") == EXIT_ERROR
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == "tm-x: error: no such thing 'q'"


def test_error_exit_and_exit_codes_choose_the_code() -> None:
    ns = argparse.Namespace()
    assert run_cli(_raising(CLIError("x")), ns, prog="p", error_exit=3) == 3
    codes = {ConnectionError: EXIT_DNF, OSError: EXIT_ERROR}
    assert run_cli(_raising(ConnectionResetError("x")), ns, prog="p", exit_codes=codes) == EXIT_DNF
    assert run_cli(_raising(FileNotFoundError("x")), ns, prog="p", exit_codes=codes) == EXIT_ERROR
    own = {TelemetryError: EXIT_DNF}
    assert run_cli(_raising(TelemetryError("x")), ns, prog="p", exit_codes=own) == EXIT_DNF


def test_other_errors_are_bugs_and_keep_their_traceback() -> None:
    with pytest.raises(ZeroDivisionError):
        run_cli(_raising(ZeroDivisionError()), argparse.Namespace(), prog="p")


def test_ctrl_c_is_130(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run_cli(_raising(KeyboardInterrupt()), argparse.Namespace(), prog="p") == EXIT_INTERRUPTED
    )
    assert "interrupted" in capsys.readouterr().err


@pytest.mark.parametrize("exc", [CLIError("x"), KeyboardInterrupt()])
def test_debug_raises(exc: BaseException) -> None:
    with pytest.raises(type(exc)):
        run_cli(_raising(exc), argparse.Namespace(), prog="p", debug=True)


def test_parse_args_turns_exits_into_codes(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="p")
    parser.add_argument("--n", type=positive_int)
    assert parse_args(parser, ["--help"]) == EXIT_OK
    assert parse_args(parser, ["--n", "0"]) == EXIT_ERROR
    assert "expected a whole number >= 1, got '0'" in capsys.readouterr().err
    parsed = parse_args(parser, ["--n", "3"])
    assert isinstance(parsed, argparse.Namespace) and parsed.n == 3


@pytest.mark.parametrize("text", ["0", "-1", "inf", "nan", "x"])
def test_positive_float_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
        positive_float(text)
