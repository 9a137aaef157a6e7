"""The command line's help: every subcommand (train included) explains every option, once, with no doubled or
empty defaults; ``likelihood`` prints a line for people beside its JSON; sampler aliases work from the CLI."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from scoresolve.cli import build_parser, main

COMMANDS = ("solvers", "sample", "likelihood", "bench", "train")


def _parser(cmd: str) -> argparse.ArgumentParser:
    if cmd == "train":
        from scoresolve.train.__main__ import build_parser as train_parser

        return train_parser("scoresolve train")
    return build_parser()._subparsers._group_actions[0].choices[cmd]  # type: ignore[union-attr]


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in COMMANDS:
        assert re.search(rf"^\s+{cmd}\s", out, flags=re.M), cmd


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_without_doubled_defaults(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: scoresolve {cmd}")
    parser = _parser(cmd)
    fmt = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{cmd} {action.option_strings} has no help text"
        text = fmt._expand_help(action)
        assert text.count("(default") <= 1, f"{cmd} {action.option_strings}: {text!r}"
        assert "(default: None)" not in text and "(default: False)" not in text, text
        assert action.option_strings[-1] in out
    flat = " ".join(out.split())
    assert "(default: None)" not in flat and not re.search(r"\(default[^)]*\)\s*\(default", flat)


def test_likelihood_prints_a_readable_line(capsys):
    pytest.importorskip("scoresolve.likelihood")
    assert main(["likelihood", "--model", "analytic:grid2d", "--n", "8", "--trace", "exact", "--rtol", "1e-3",
                 "--atol", "1e-3"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)  # stdout stays pure JSON
    line = captured.err.strip().splitlines()[-1]
    assert line.startswith("mean negative log-likelihood") and "nats per sample over 8 samples" in line
    assert f"{out['nll_mean']:.4g}" in line and "exact" in line


def test_sample_accepts_a_familiar_name(tmp_path, capsys):
    npz = tmp_path / "x.npz"
    assert main(["sample", "--model", "analytic:grid2d", "--solver", "DPM++ 2M Karras", "--nfe", "8", "--n", "4",
                 "--npz", str(npz), "--quiet"]) == 0
    assert npz.is_file()


def test_solvers_lists_the_aliases(capsys):
    assert main(["solvers", "--aliases"]) == 0
    out = capsys.readouterr().out
    assert "DPM++ 2M Karras" in out and "alias of dpmpp_2m" in out and "euler_a" in out
