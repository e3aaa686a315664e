"""``ambient completion bash|zsh``: a shell completion script, derived from the argparse parsers.

As ``kubectl completion`` and ``istioctl completion`` do, the command prints a script to source
(``source <(ambient completion bash)``, or saved under the shell's completion directory). Nothing of
the script is written by hand per command: ``command_tree`` walks the full parser ``ambient.cli``
builds (every package's commands) and records, for each command path, its subcommands (aliases
included, mapped to the same path), its options, the options that take a value, and the values of
those with ``choices``. ``bash_script`` turns the tree into ``case`` tables and one completion
function, which walks the words typed so far down the tree (skipping options and their values,
stopping at ``--``), then offers the subcommands or positional choices there, its options for a word
starting with ``-``, an option's choices after it, and file names otherwise. The zsh script is the
same function under zsh's ``bashcompinit``, so the two shells complete alike; only plain POSIX
``case`` and ``compgen`` are used, which both understand.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field

PROG = "ambient"
# A word the script may hold unquoted inside double quotes: what argparse names and choices here are.
_SAFE_WORD = re.compile(r"[A-Za-z0-9_.:/@%+=,-]+")


@dataclass
class Node:
    """One command path: what may follow it."""

    words: list[str] = field(default_factory=list)  # subcommands (and aliases), positional choices
    children: dict[str, str] = field(default_factory=dict)  # a subcommand or alias -> its path
    options: list[str] = field(default_factory=list)
    valued: list[str] = field(default_factory=list)  # options that take a value
    choices: dict[str, list[str]] = field(default_factory=dict)  # option -> its values


def command_tree(parser: argparse.ArgumentParser, path: str = PROG) -> dict[str, Node]:
    """Every command path of ``parser`` (``"ambient lab logs"``) and what may follow it."""
    tree: dict[str, Node] = {}
    node = tree[path] = Node()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            canonical: dict[int, str] = {}
            for name, child in action.choices.items():  # a parser's own name comes before its aliases
                first = id(child) not in canonical
                canonical.setdefault(id(child), f"{path} {name}")
                node.words.append(name)
                node.children[name] = canonical[id(child)]
                if first:
                    tree.update(command_tree(child, canonical[id(child)]))
            continue
        if action.help == argparse.SUPPRESS:
            continue
        safe_choices = [str(c) for c in action.choices or () if _SAFE_WORD.fullmatch(str(c))]
        if not action.option_strings:
            node.words.extend(safe_choices)
            continue
        node.options.extend(action.option_strings)
        if action.nargs != 0:
            node.valued.extend(action.option_strings)
            if safe_choices:
                node.choices.update((option, safe_choices) for option in action.option_strings)
    return tree


def _case(entries: list[tuple[str, str]]) -> str:
    """The body of a POSIX ``case`` on its function's key: one ``"key") echo "value";;`` per entry."""
    return "\n".join(f'        "{key}") echo "{value}";;' for key, value in entries if value)


def _function(name: str, key: str, entries: list[tuple[str, str]]) -> str:
    return f'{name}() {{\n    case "{key}" in\n{_case(entries)}\n    esac\n}}\n'


_BASH_MAIN = r"""
_ambient() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="" path="ambient" next w i skip=0
    (( COMP_CWORD > 0 )) && prev="${COMP_WORDS[COMP_CWORD-1]}"
    COMPREPLY=()
    for (( i = 1; i < COMP_CWORD; i++ )); do
        w="${COMP_WORDS[i]}"
        if (( skip )); then skip=0; continue; fi
        case "$w" in
            --) COMPREPLY=( $(compgen -f -- "$cur") ); return 0;;  # a command of the user's follows
            -*=*) continue;;
            -*) case " $(__ambient_valued "$path") " in *" $w "*) skip=1;; esac; continue;;
        esac
        next="$(__ambient_child "$path" "$w")"
        [[ -n "$next" ]] && path="$next"
    done
    case "$prev" in
        -*) case " $(__ambient_valued "$path") " in
                *" $prev "*)
                    local choices
                    choices="$(__ambient_choices "$path" "$prev")"
                    if [[ -n "$choices" ]]; then
                        COMPREPLY=( $(compgen -W "$choices" -- "$cur") )
                    else
                        COMPREPLY=( $(compgen -f -- "$cur") )
                    fi
                    return 0;;
            esac;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=( $(compgen -W "$(__ambient_options "$path")" -- "$cur") )
    else
        COMPREPLY=( $(compgen -W "$(__ambient_words "$path")" -- "$cur") )
        (( ${#COMPREPLY[@]} )) || COMPREPLY=( $(compgen -f -- "$cur") )
    fi
    return 0
}

complete -o filenames -F _ambient ambient
"""


def bash_script(tree: dict[str, Node]) -> str:
    header = "# bash completion for ambient: source <(ambient completion bash)\n# Generated from ambient's parsers.\n\n"
    children = [(f"{path}|{name}", child) for path, node in tree.items() for name, child in node.children.items()]
    choices = [(f"{path}|{option}", " ".join(values)) for path, node in tree.items()
               for option, values in node.choices.items()]
    return header + "\n".join([
        _function("__ambient_words", "$1", [(path, " ".join(node.words)) for path, node in tree.items()]),
        _function("__ambient_options", "$1", [(path, " ".join(node.options)) for path, node in tree.items()]),
        _function("__ambient_valued", "$1", [(path, " ".join(node.valued)) for path, node in tree.items()]),
        _function("__ambient_child", "$1|$2", children),
        _function("__ambient_choices", "$1|$2", choices),
    ]) + _BASH_MAIN


def zsh_script(tree: dict[str, Node]) -> str:
    """bash's script under zsh's bashcompinit (zsh's own emulation of ``complete`` and ``compgen``)."""
    return ("#compdef ambient\n# zsh completion for ambient: source <(ambient completion zsh)\n\n"
            "autoload -U +X compinit && { (( $+functions[compdef] )) || compinit; }\n"
            "autoload -U +X bashcompinit && bashcompinit\n\n") + bash_script(tree)


SCRIPTS = {"bash": bash_script, "zsh": zsh_script}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("completion", help="print a shell completion script (bash or zsh)")
    parser.add_argument("shell", choices=sorted(SCRIPTS))
    parser.set_defaults(func=cmd_completion)


def cmd_completion(args: argparse.Namespace) -> int:
    from ambient.cli import build_parser

    tree = command_tree(build_parser([]))  # no command named: every package's commands
    print(SCRIPTS[args.shell](tree), end="")
    return 0
