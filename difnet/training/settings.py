"""One declaration per recipe setting: `setting(...)` gives a dataclass field its description, option
group and roles, and its type annotation gives the value type. From that single declaration the
command line (`add_options`, its help text from the description by `option_help`) and the
recipe-file reader (`check_file_value`) are derived, so the dataclass, the options and the files
cannot drift apart."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Setting:
    """How one field of a config dataclass reaches the command line and recipe files.

    `description`: what the field means, as its value reads (a bool: what it turns on when true),
    the field's documentation and the source of its option's help (`option_help`). `resumable`: may change when a run is resumed (how long, where and how it goes on, never what
    it computes). `run_only`: where and how a run goes (output folder, device, logging), taken
    from the command line only, never from a recipe file. `choices`, `metavar` and `nargs` pass
    to argparse (`nargs` overrides the count the type gives)."""

    description: str
    group: str
    choices: Sequence[Any] | None = None
    metavar: str | tuple[str, ...] | None = None
    nargs: int | str | None = None
    resumable: bool = False
    run_only: bool = False


def setting(
    default: Any = dataclasses.MISSING,
    description: str = "",
    group: str = "",
    *,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    **options: Any,
) -> Any:
    """A dataclass field declared with its `Setting` (see there for `options`)."""
    metadata = {"setting": Setting(description, group, **options)}
    return field(default=default, default_factory=default_factory, metadata=metadata)


@dataclass(frozen=True)
class Declared:
    """One declared field: its name, its resolved type annotation and its `Setting`."""

    name: str
    annotation: Any
    setting: Setting

    @property
    def option(self) -> str:
        """The field's command-line spelling, e.g. `--crop-size`."""
        return "--" + self.name.replace("_", "-")


def declared(cls: type) -> list[Declared]:
    """The fields of dataclass `cls` that carry a `Setting`, in declaration order."""
    hints = typing.get_type_hints(cls)
    return [
        Declared(f.name, hints[f.name], f.metadata["setting"])
        for f in dataclasses.fields(cls)
        if "setting" in f.metadata
    ]


@dataclass(frozen=True)
class Default:
    """A default in a parsed namespace, so a value the user typed (even an equal one) is told
    apart from one they left out; prints as the value in `--help`."""

    value: Any

    def __str__(self) -> str:
        return str(self.value)


def add_options(
    parser: argparse.ArgumentParser, cls: type, groups: Sequence[str]
) -> dict[str, argparse._ArgumentGroup]:
    """One option per declared field of `cls`, in argument groups titled `groups` (returned by
    title); a bool defaulting to True becomes `--no-<name>`. Every default is a `Default`."""
    by_title = {title: parser.add_argument_group(title) for title in groups}
    defaults = cls()
    for item in declared(cls):
        value = getattr(defaults, item.name)
        help_text = option_help(item, value)
        if _base(item.annotation) is bool:
            flag = "--no-" + item.option[2:] if value else item.option
            action = "store_false" if value else "store_true"
            by_title[item.setting.group].add_argument(flag, dest=item.name, action=action, help=help_text)
            continue
        by_title[item.setting.group].add_argument(
            item.option, help=help_text, choices=item.setting.choices, metavar=item.setting.metavar,
            **_value_arguments(item),
        )  # fmt: skip
    parser.set_defaults(**{item.name: Default(getattr(defaults, item.name)) for item in declared(cls)})
    return by_title


def option_help(item: Declared, default: Any) -> str:
    """The command-line help of `item` (whose default is `default`), from its description: a bool
    on by default becomes `--no-<name>`, whose help reads "turn off: <description>"."""
    turned_off = _base(item.annotation) is bool and default is True
    text = f"turn off: {item.setting.description}" if turned_off else item.setting.description
    return text + (" [may change on --resume]" if item.setting.resumable else "")


def given_options(args: argparse.Namespace, cls: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(defaults, given)`: the declared fields' values in `args` that the user left out, and
    those they typed."""
    defaults, given = {}, {}
    for item in declared(cls):
        if hasattr(args, item.name):
            value = getattr(args, item.name)
            if isinstance(value, Default):
                defaults[item.name] = value.value
            else:
                given[item.name] = value
    return defaults, given


def check_file_value(item: Declared, value: Any, source: str) -> Any:
    """`value` read from a recipe file for `item`, if its type fits the declaration (an int for a
    float becomes a float, a list a tuple); else a `TypeError` naming the file, key and value."""
    base, optional = _base(item.annotation), _is_optional(item.annotation)
    if value is None and optional:
        return None
    if typing.get_origin(base) is tuple:
        element = typing.get_args(base)[0]
        size = None if typing.get_args(base)[-1] is Ellipsis else len(typing.get_args(base))
        if isinstance(value, list | tuple) and (size is None or len(value) == size):
            if all(_fits(element, v) for v in value):
                return tuple(_convert(element, v) for v in value)
        count = "one or more" if size is None else f"a list of {size}"
        raise TypeError(f"{source}: {item.name} must be {count} {element.__name__} values (got {value!r})")
    if _fits(base, value):
        return _convert(base, value)
    nothing = " or null" if optional else ""
    raise TypeError(f"{source}: {item.name} must be a {base.__name__}{nothing} (got {value!r})")


def _value_arguments(item: Declared) -> dict[str, Any]:
    """argparse's `type` and `nargs` for a non-bool field, from its annotation."""
    base = _base(item.annotation)
    if typing.get_origin(base) is tuple:
        arguments = typing.get_args(base)
        nargs = "+" if arguments[-1] is Ellipsis else len(arguments)
        return {"type": arguments[0], "nargs": item.setting.nargs or nargs}
    return {"type": base, **({"nargs": item.setting.nargs} if item.setting.nargs else {})}


def _base(annotation: Any) -> Any:
    """`annotation` without its `| None`."""
    if isinstance(annotation, types.UnionType):
        others = [a for a in typing.get_args(annotation) if a is not type(None)]
        return others[0]
    return annotation


def _is_optional(annotation: Any) -> bool:
    return isinstance(annotation, types.UnionType) and type(None) in typing.get_args(annotation)


def _fits(kind: type, value: Any) -> bool:
    """Whether a file value is of `kind` (bool is not an int; an int is a float)."""
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    return isinstance(value, int | float) if kind is float else isinstance(value, kind)


def _convert(kind: type, value: Any) -> Any:
    return float(value) if kind is float else value
