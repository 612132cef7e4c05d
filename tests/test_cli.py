"""The command line: every command exists, has --help with an example, and info reports what it found."""
from __future__ import annotations

import json

import pytest

from harness.cli import COMMAND_MODULES, build_parser, main

COMMANDS = [module.rsplit(".", 1)[1] for module in COMMAND_MODULES]


def test_every_command_is_registered():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "example" in capsys.readouterr().out


def test_info_reports_versions_and_missing_weights_with_where_it_looked(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["packages"]["torch"]
    assert "torch_threads" in info["device"]
    inception = next(w for w in info["weights"] if w["kind"] == "inception")
    assert not inception["found"] and "weights-inception-2015-12-05-6726825d.pth" in inception["detail"]
    assert any(w["kind"] == "embedded" and w["found"] for w in info["weights"])


def test_bad_input_exits_with_one_line_naming_the_value(capsys):
    assert main(["sample", "--model", "DiT-XXL/2", "--seeds", "0-1", "--out", "x.npz"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'DiT-XXL/2'" in err and "dit-xl/2" in err
