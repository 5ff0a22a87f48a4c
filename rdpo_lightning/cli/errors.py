"""One line for every configuration mistake: ``<key>: <what is wrong>``, with "did you mean" for keys, options and
class names, and the available strategies and losses when a class path is wrong.

jsonargparse reports a mistake as a nested text (``Parser key "model.robust": ... Problem with given class_path
'...': Option 'temperature' is not accepted``) under 70 lines of usage. :func:`explain` reads that text back into
the YAML key it is about and what is wrong there; the suggestions come from the parser itself (its option keys, the
parameters of the class a key names, the subclasses its type accepts), so they follow the code.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rdpo_lightning.checks import constructor_parameters
from rdpo_lightning.cli import aliases

#: keys whose classes are listed in full when a class path is wrong (the project's own families)
LISTED_FAMILIES = {"model.robust": "strategies", "model.pair_loss": "pair losses", "data": "DataModules"}
#: lines of a jsonargparse message that say nothing about this mistake
NOISE = re.compile(r"^(Does not validate against any of the Union subtypes|Subtypes: |Errors:|Given value type: )")


def close(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> list[str]:
    """The candidates that look most like ``word`` (case-insensitively): up to three, within 0.05 of the best."""
    lowered = {c.lower(): c for c in sorted(set(candidates))}
    matches = difflib.get_close_matches(word.lower(), list(lowered), n=3, cutoff=cutoff)
    ratio = {m: difflib.SequenceMatcher(None, word.lower(), m).ratio() for m in matches}
    return [lowered[m] for m in matches if ratio[m] >= ratio[matches[0]] - 0.05]


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    matches = close(word, candidates)
    return f"; did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""


# --- what the parsers know --------------------------------------------------------------------------------------
def all_parsers(parser: Any) -> Iterator[Any]:
    """``parser`` and its subcommand parsers."""
    yield parser
    subcommands = getattr(parser, "_subcommands_action", None)
    for child in getattr(subcommands, "_name_parser_map", {}).values():
        yield from all_parsers(child)


def option_keys(parsers: Iterable[Any]) -> set[str]:
    """Every ``--key`` the parsers accept, without the dashes."""
    return {
        option[2:]
        for parser in parsers
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option not in ("--help", "--print_config")
    }


def action_at(parsers: Iterable[Any], key: str) -> Any:
    for parser in parsers:
        for action in parser._actions:
            if action.dest == key:
                return action
    return None


def class_choices(parsers: Iterable[Any], key: str) -> list[str]:
    """Import paths of the classes the argument at ``key`` accepts (subclasses of its type that are imported)."""
    action = action_at(parsers, key)
    typehint = getattr(action, "_typehint", None)
    if typehint is None:
        return []
    from jsonargparse._typehints import get_all_subclass_paths

    try:
        return get_all_subclass_paths(typehint)
    except Exception:  # a type jsonargparse cannot enumerate: no suggestions, the message stays right
        return []


def init_parameters(class_path: str) -> list[str]:
    """The keyword parameters of a class's constructor (through ``**kwargs`` to its bases, as jsonargparse does)."""
    module_name, _, name = class_path.rpartition(".")
    try:
        import importlib

        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return []
    return constructor_parameters(cls)


# --- messages ---------------------------------------------------------------------------------------------------
def short_key(key: str) -> str:
    """``model.robust.init_args.tau`` -> ``model.robust.tau`` (the command line accepts both; errors say the short)."""
    return key.replace(".init_args.", ".").removesuffix(".init_args").removeprefix("init_args.")


def unknown_key(key: str, parsers: list[Any]) -> str:
    """An option no parser has: the closest keys (among those sharing its first part, else all)."""
    keys = option_keys(parsers)
    family = {k for k in keys if k.split(".")[0] == key.split(".")[0]}
    return f"{key}: no such key{did_you_mean(key, family or keys)}"


def unknown_option(key: str, option: str, class_path: str | None) -> str:
    """An init argument the class at ``key`` does not take: the closest parameters, or all of them."""
    where = f"{key}.{option}"
    name = class_path.rsplit(".", 1)[-1] if class_path else "the class"
    parameters = init_parameters(class_path) if class_path else []
    hint = did_you_mean(option, parameters)
    if not hint and parameters:
        hint = f" (it takes: {', '.join(parameters)})"
    return f"{where}: {name} has no option {option!r}{hint}"


def unknown_class(key: str, given: str, parsers: list[Any]) -> str:
    """A class path that does not import: the closest class names, and for the project's families all of them."""
    paths = class_choices(parsers, key)
    names = {path.rsplit(".", 1)[-1]: path for path in paths}
    table = aliases.ALIASES.get(key.rsplit(".", 1)[-1], {})
    candidates = {**names, **dict.fromkeys(table)}
    wanted = given.rsplit(".", 1)[-1]
    matches = close(wanted, candidates)
    if "." in given:  # suggest in the form given
        matches = [names.get(m, m) for m in matches]
    line = f"{key}: no class {given!r}"
    line += f"; did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""
    if key in LISTED_FAMILIES and names:
        line += f" Available {LISTED_FAMILIES[key]}: {', '.join(usable_classes(paths, key))}"
    return line


def usable_classes(paths: list[str], key: str) -> list[str]:
    """Short names (with their aliases) of the classes among ``paths`` that no other class of the package derives
    from: the package's bases (``RobustLoss``, ``GlobalReweighting``) are for writing a new class, not for choosing
    one, while a shipped class stays listed when a user's class derives from it. The package's come first."""
    import importlib

    classes = {}
    for path in paths:
        module, _, name = path.rpartition(".")
        try:
            classes[path] = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    ours = {path: cls for path, cls in classes.items() if cls.__module__.startswith("rdpo_lightning.")}
    bases = {base for cls in ours.values() for base in cls.__mro__[1:]}
    listed = []
    for path, cls in sorted(classes.items(), key=lambda item: item[0] not in ours):
        if cls not in bases:
            names = aliases.names_of(path, key)
            listed.append(f"{cls.__name__} ({', '.join(names)})" if names else cls.__name__)
    return listed


def expected_type(key: str, lines: list[str]) -> str:
    """A value of the wrong type: what was expected (every accepted type of a union) and what was given."""
    types = [t for t in re.findall(r"Expected an? <class '([\w.]+)'>", "\n".join(lines)) if t != "NoneType"]
    given = next((m.group(1) for m in map(re.compile(r"Got value: (.*)$").search, lines) if m), None)
    if given is None:
        given = next((line.split(": ", 1)[1] for line in lines if line.startswith("Given value: ")), None)
    nullable = any("NoneType" in line for line in lines)
    wanted = " or ".join(dict.fromkeys(types)) + (" (or null)" if nullable and types else "")
    return f"{key}: expected {wanted or 'another value'}, got {given!r}" if given is not None else f"{key}: {lines[0]}"


def explain(message: str, parser: Any) -> str:
    """``<key>: <what is wrong>`` for a jsonargparse error message raised by ``parser`` (or one of its
    subcommand parsers); an unrecognised message shape is kept, on one line."""
    parsers = list(all_parsers(parser))
    text = message.strip()
    if match := re.match(r"unrecognized arguments: (\S+)", text):
        argument = match.group(1)
        if not argument.startswith("-"):
            return f"{argument}: unexpected argument (options are given as --key=value)"
        return unknown_key(argument.lstrip("-").split("=", 1)[0], parsers)
    if match := re.match(r"Subcommand '\w+' does not accept option '([^']+)'|Option '([^']+)' is not accepted", text):
        return unknown_key(short_key(match.group(1) or match.group(2)), parsers)
    if match := re.match(r"Group '([^']+)' does not accept option '([^']+)'", text):
        return unknown_key(short_key(f"{match.group(1)}.{match.group(2)}"), parsers)
    if match := re.match(r"expected \"(\w+)\" to be one of \{([^}]*)\}, but it was not provided", text):
        return f"give a command: {match.group(2).replace(',', ', ')} (rdpo --help)"
    if match := re.match(r"invalid choice: '([^']*)' \(choose from (.*)\)", text):
        choices = [c.strip(" '") for c in match.group(2).split(",")]
        return f"{match.group(1)}: no such command{did_you_mean(match.group(1), choices)} (rdpo --help)"
    if match := re.match(r"Problems parsing config[^:]*: ", text):
        return " ".join(text[match.end() :].split())  # cli_yaml.load wrote it, naming file and line
    if match := re.match(r"Parser key \"config\": (File does not exist|Path is not a file): '([^']+)'", text):
        return missing_config(match.group(2), match.group(1))
    if match := re.match(r"Parser key \"([^\"]+)\":\s*", text):
        return explain_key(short_key(match.group(1)), text[match.end() :], parsers)
    return " ".join(text.split())


def missing_config(path: str, problem: str) -> str:
    found = Path(path)
    siblings = [p.name for p in found.parent.glob("*.y*ml")] if found.parent.is_dir() else []
    what = "no such file" if problem == "File does not exist" else "not a file"
    return f"-c {path}: {what}{did_you_mean(found.name, siblings)}"


def explain_key(key: str, body: str, parsers: list[Any]) -> str:
    """The mistake under ``Parser key "<key>"``: an unknown class, an unknown init option, a nested key's value."""
    indented = [(len(raw) - len(raw.lstrip()), raw.strip().removeprefix("- ").strip()) for raw in body.splitlines()]
    indented = [(indent, line) for indent, line in indented if line and not NOISE.match(line)]
    lines = [line for _, line in indented]  # keeps "Expected a <class ...>" and "Given value: ..." lines
    class_path = next((m.group(1) for m in map(re.compile(r"class_path[ =]'([\w.]+)'").search, lines) if m), None)
    for i, (indent, line) in enumerate(indented):
        if match := re.search(r"Option '([^']+)' is not accepted", line):
            return unknown_option(key, match.group(1), class_path)
        if match := re.match(r"Parser key \"([^\"]+)\":\s*(.*)", line):
            nested = f"{key}.{short_key(match.group(1))}"
            inner = [text for depth, text in indented[i + 1 :] if depth > indent]  # not the outer union's lines
            rest = [match.group(2), *inner] if match.group(2) else inner
            return expected_type(nested, rest) if any("Expected" in r for r in rest) else f"{nested}: {rest[0]}"
        if match := re.search(r"has no attribute '([^']+)'|No module named '([^']+)'", line):
            return unknown_class(key, class_path or match.group(1) or match.group(2), parsers)
        if match := re.match(r"Expected a dot import path string: (\S+)|Expected a path but (\S+) either", line):
            return unknown_class(key, match.group(1) or match.group(2), parsers)
        if match := re.search(r"Import path ([\w.]+) does not correspond", line):
            return unknown_class(key, match.group(1), parsers)
    if any("Expected" in line for line in lines):
        return expected_type(key, lines)
    return f"{key}: {lines[0] if lines else body.strip()}"
