"""``difflab serve``'s bad input: one sentence on stderr and exit status 2, before serving."""

from __future__ import annotations

import socket

import pytest

from difflab.cli import main


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--model", "no_such_model"], "does not exist and is not a shipped checkpoint"),
        (["--model", "mnist_ddim", "--port", "70000"], "--port must lie in 0..65535"),
        (["--model", "mnist_ddim", "--queue", "-1"], "queue size must be at least 0"),
        (["--model", "mnist_ddim", "--model", "mnist_ddim"], "two models are named 'mnist_ddim'"),
    ],
)
def test_bad_arguments_are_one_sentence(argv, words, capsys):
    """Fails if a bad flag starts a server or ends in a traceback."""
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and err.count("\n") == 1, err


def test_a_port_in_use_is_one_sentence(capsys):
    """Fails if the port check is dropped (uvicorn would log and exit 1 after loading)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", "mnist_ddim", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and err.count("\n") == 1, err
