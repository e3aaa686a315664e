"""``ambient completion bash|zsh``: the script parses, lists every command, and completes as typed.

The bash cases source the printed script in a bash process and call its function as bash's
programmable completion would (COMP_WORDS, COMP_CWORD), reading COMPREPLY back.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ambient.cli import COMMAND_ALIASES, COMMAND_MODULES, build_parser
from ambient.completion import command_tree
from tests.ambient.test_cli_habits import TIMEOUT, ambient

BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(BASH is None, reason="bash is not installed")


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory):
    done = ambient("completion", "bash")
    assert (done.returncode, done.stderr) == (0, "")
    path = tmp_path_factory.mktemp("completion") / "ambient.bash"
    path.write_text(done.stdout)
    return path


@needs_bash
def test_bash_parses_the_script(bash_script):
    done = subprocess.run([BASH, "-n", str(bash_script)], capture_output=True, text=True, timeout=TIMEOUT)
    assert (done.returncode, done.stderr) == (0, "")


def complete(script, *words: str) -> list[str]:
    """What the script offers for the last of ``words`` (the one being typed)."""
    program = 'source "$0"; COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); _ambient; ' \
              'printf "%s\\n" "${COMPREPLY[@]}"'
    done = subprocess.run([BASH, "-c", program, str(script), "ambient", *words], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd="/")
    assert (done.returncode, done.stderr) == (0, "")
    return [line for line in done.stdout.splitlines() if line]


@needs_bash
def test_the_top_level_lists_every_command_and_alias(bash_script):
    assert set(complete(bash_script, "")) == set(COMMAND_MODULES) | set(COMMAND_ALIASES)
    assert complete(bash_script, "la") == ["lab"]


@needs_bash
@pytest.mark.parametrize(("words", "expected"), [
    (["lab", ""], ["up", "status", "logs", "down"]),
    (["lab", "logs", "--t"], ["--tail"]),
    (["lab", "status", "-o", ""], ["table", "wide", "json", "yaml"]),
    (["--log-level", "d"], ["debug"]),
    (["--log-level", "debug", "lab", "st"], ["status"]),  # a global option's value is skipped
    (["lab", "logs", "--name", "lab", "--f"], ["--follow"]),  # so is a command's ("lab" is its value)
    (["zc", "cert"], ["certificates", "certificate", "certs"]),  # an alias walks its command's path
    (["zc", "all", "--dir"], ["--direction"]),
    (["zc", "workloads", "-o", "j"], ["json"]),
    (["analyze", "-o", ""], ["text", "json"]),
    (["completion", ""], ["bash", "zsh"]),
    (["waypoint", "apply", "--for", ""], []),  # a free value: file names, none under / named so
])
def test_completion_follows_the_parsers(bash_script, words, expected):
    offered = complete(bash_script, *words)
    assert offered == expected or (not expected and all(not w.startswith("-") for w in offered))


def test_the_tree_has_every_subcommand_path_once():
    tree = command_tree(build_parser([]))
    assert "ambient zc" not in tree and "ambient analyze" not in tree  # an alias is no path of its own
    assert tree["ambient"].children["zc"] == "ambient ztunnel-config"
    assert tree["ambient"].children["analyze"] == "ambient validate"
    assert {"-f", "--follow", "--tail", "--since"} <= set(tree["ambient lab logs"].options)
    assert "--follow" not in tree["ambient lab logs"].valued and "--tail" in tree["ambient lab logs"].valued
    assert "--progress-fd" not in tree["ambient lab up"].options  # suppressed from help: not offered


def test_zsh_s_script_is_bash_s_under_bashcompinit():
    bash, zsh = ambient("completion", "bash").stdout, ambient("completion", "zsh").stdout
    assert zsh.startswith("#compdef ambient\n") and "bashcompinit" in zsh and zsh.endswith(bash)
    zsh_path = shutil.which("zsh")
    if zsh_path is not None:
        done = subprocess.run([zsh_path, "-n", "-c", zsh], capture_output=True, text=True, timeout=TIMEOUT)
        assert (done.returncode, done.stderr) == (0, "")


def test_an_unknown_shell_is_a_usage_error():
    done = ambient("completion", "fish")
    assert done.returncode == 2
    # How argparse quotes the choices after this varies with Python's version.
    assert done.stderr.splitlines()[-1].startswith("ambient completion: error: argument shell: invalid choice: 'fish'")
