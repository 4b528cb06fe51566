"""The console script's argument handling: values the user gives are kept, errors reported with exit 2."""

from __future__ import annotations

import json

from icpc.cli import main


def test_zero_is_a_value_not_a_missing_flag(capsys):
    # 0 == False in Python: a flag given as 0 must still reach the config (and here fail validation)
    assert main(["train", "--epochs", "0", "--print-config"]) == 2
    assert "epochs=0" in capsys.readouterr().err


def test_given_flags_reach_the_resolved_config(capsys):
    assert main(["train", "--epochs", "3", "--lr", "0.01", "--baseline", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["epochs"] == 3 and cfg["lr"] == 0.01 and cfg["baseline"] is True


def test_all_config_errors_are_reported_together(capsys):
    assert main(["compress", "--set", "image.patch=5", "--set", "nope=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'nope'" in err and "image.patch=5" in err and "input: is empty" in err
