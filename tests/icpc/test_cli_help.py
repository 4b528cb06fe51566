"""The help texts tell the truth: every example each subcommand's --help shows parses and, where the subcommand has
--print-config, resolves (so every --set key it shows belongs to that command's config); defaults are stated;
embedded Ray gets an explicit auth mode."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex

import pytest

from icpc import cli_help
from icpc.cli import _default_ray_auth, build_parser, main

CONFIGURED = ("compress", "train", "evaluate", "calibrate", "serve")  # the subcommands with --set and --print-config


def subcommand_help(command: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command].format_help()


def help_examples(text: str) -> list[list[str]]:
    return [shlex.split(line) for line in text.splitlines() if line.startswith("  icpc ")]


@pytest.mark.parametrize("command", sorted(cli_help.EXAMPLES))
def test_every_example_in_a_subcommands_help_runs(command, capsys):
    examples = help_examples(subcommand_help(command))
    assert len(examples) == len(cli_help.EXAMPLES[command]) > 0
    for argv in examples:
        assert argv[:2] == ["icpc", command]
        build_parser().parse_args(argv[1:])  # SystemExit(2) on a flag the command does not have
        if command in CONFIGURED:
            rc = main([*argv[1:], "--print-config"])
            out, err = capsys.readouterr()
            assert rc == 0, f"{' '.join(argv)}: {err}"
            json.loads(out)


@pytest.mark.parametrize("command", CONFIGURED)
def test_the_set_example_of_each_subcommand_is_a_key_of_its_own_config(command, capsys):
    options = subcommand_help(command).split("examples:")[0]  # the examples above run whole, with all their --set
    shown = re.findall(r"--set ([a-z_][\w.]*=[^\s)]+)", " ".join(options.split()))
    assert shown, "no --set example in the help"
    for setting in shown:
        rc = main([command, "--set", setting, "--print-config"])
        assert rc == 0, f"icpc {command} --help shows --set {setting}: {capsys.readouterr().err}"
        capsys.readouterr()


def test_a_compress_key_is_refused_by_train_so_the_check_above_can_fail(capsys):
    assert main(["train", "--set", "image.sides=28,20,12", "--print-config"]) == 2
    assert "unknown section 'image'" in capsys.readouterr().err


def test_compress_prints_its_config_without_an_input_but_does_not_run_without_one(capsys):
    assert main(["compress", "--modality", "audio", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["input"] == "" and cfg["modality"] == "audio" and "audio" in cfg
    assert main(["compress", "--print-config", "--set", "shard_samples=0"]) == 2  # other errors still count
    assert main(["compress"]) == 2
    assert "input: is empty" in capsys.readouterr().err


def test_the_help_states_the_defaults_and_what_compress_writes():
    overview = build_parser().format_help()
    assert "runs/train/last.pt" in overview and "(default runs/train)" in overview
    assert "index.parquet" in overview and "RAY_AUTH_MODE" in overview
    demo = subcommand_help("demo")
    assert "(default runs/demo)" in " ".join(demo.split()) and cli_help.DESCRIPTIONS["demo"][:40] in " ".join(
        demo.split())
    assert "(default runs/train)" in " ".join(subcommand_help("train").split())
    for command in ("evaluate", "calibrate", "serve"):
        assert "default runs/train/last.pt" in " ".join(subcommand_help(command).split())


@pytest.mark.parametrize("argv, preset, expected", [
    (["compress", "--input", "x"], None, "token"),                    # embedded Ray: Ray's default, said explicitly
    (["demo"], None, "token"),
    (["serve"], None, "token"),
    (["train", "--ray-workers", "2"], None, "token"),
    (["train"], None, None),                                          # torchrun: no Ray
    (["compress", "--input", "x", "--address", "ray://head:10001"], None, None),  # a cluster's own setting
    (["compress", "--input", "x"], "disabled", "disabled"),           # the user's choice stands
])
def test_embedded_ray_gets_an_explicit_auth_mode(argv, preset, expected, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if preset is None:
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    else:
        monkeypatch.setenv("RAY_AUTH_MODE", preset)
    _default_ray_auth(build_parser().parse_args(argv))
    assert os.environ.get("RAY_AUTH_MODE") == expected
