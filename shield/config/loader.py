"""Load a config file into a ``ShieldConfig``, reporting every problem as FILE:LINE:COL.

The YAML is composed into a node tree first, because nodes keep their marks. The tree is then
turned into plain Python values and validated; each validation error's location (a tuple of keys
and indexes) is walked back down the node tree to the nearest node, whose mark gives the line
and column.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from shield.config.lint import Finding, duplicate_names, lint, place
from shield.config.model import ShieldConfig
from shield.errors import ConfigError, ConfigIssue

Location = tuple[int | str, ...]

_SCALARS = yaml.constructor.SafeConstructor()


def load_config(path: str | Path, warnings: list[ConfigIssue] | None = None) -> ShieldConfig:
    """Read and validate the file at ``path``; raise ``ConfigError`` listing every issue.

    Problems that do not stop the file from working (a rule that can never match) are appended
    to ``warnings`` when a list is given.
    """
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(name, 1, 1, f"cannot read config: {exc}")]) from exc
    return parse_config(text, name, warnings)


def parse_config(
    text: str, name: str = "<config>", warnings: list[ConfigIssue] | None = None
) -> ShieldConfig:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError([ConfigIssue(name, line, column, f"invalid YAML: {problem}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(name, 1, 1, f"invalid YAML: {exc}")]) from exc
    if root is None:
        raise ConfigError([ConfigIssue(name, 1, 1, "the config file is empty")])

    issues: list[ConfigIssue] = []
    data = _to_python(root, name, issues)
    if not isinstance(data, dict):
        issues.append(_issue_at(root, name, "the config file must be a mapping of sections"))
        raise ConfigError(issues)
    issues += [_finding_issue(root, name, finding) for finding in duplicate_names(data)]
    try:
        config = ShieldConfig.model_validate(data)
    except ValidationError as exc:
        issues += _issues_from(exc, root, name, data)
        raise ConfigError(_sorted(issues)) from exc
    issues += [_finding_issue(root, name, finding) for finding in lint(config)]
    if any(issue.severity == "error" for issue in issues):
        raise ConfigError(_sorted(issues))
    if warnings is not None:
        warnings.extend(issues)
    return config


def _sorted(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    return sorted(issues, key=lambda issue: (issue.line, issue.column))


def _finding_issue(root: yaml.Node, name: str, finding: Finding) -> ConfigIssue:
    node, _ = _locate(root, finding.loc, at_key=False)
    line, column = node.start_mark.line + 1, node.start_mark.column + 1
    return ConfigIssue(name, line, column, finding.message, finding.severity)


def _issue_at(node: yaml.Node, name: str, message: str) -> ConfigIssue:
    return ConfigIssue(name, node.start_mark.line + 1, node.start_mark.column + 1, message)


def _to_python(node: yaml.Node, name: str, issues: list[ConfigIssue]) -> Any:
    """Plain values from a node tree, refusing duplicate keys (PyYAML keeps the last silently)."""
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _to_python(key_node, name, issues)
            if not isinstance(key, str | int):
                issues.append(_issue_at(key_node, name, "keys must be plain strings"))
                continue
            if key in result:
                issues.append(_issue_at(key_node, name, f"duplicate key {key!r}"))
            result[key] = _to_python(value_node, name, issues)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, name, issues) for item in node.value]
    return _SCALARS.construct_object(node)


def _child(node: yaml.Node, step: int | str) -> tuple[yaml.Node, yaml.Node | None] | None:
    """The (key node, value node) for one step of an error location, if the tree has it."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == step or str(key_node.value) == str(step):
                return key_node, value_node
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value):
        return node.value[step], node.value[step]
    return None


def _locate(root: yaml.Node, loc: Location, *, at_key: bool) -> tuple[yaml.Node, Location]:
    """The deepest node along ``loc`` and the part of ``loc`` that was found."""
    node: yaml.Node = root
    found: Location = ()
    for index, step in enumerate(loc):
        pair = _child(node, step)
        if pair is None:
            break
        key_node, value_node = pair
        last = index == len(loc) - 1
        node = key_node if (last and at_key) or value_node is None else value_node
        found = (*found, step)
    return node, found


def _model_at(loc: Location) -> type[BaseModel] | None:
    """The model class that owns the mapping at ``loc`` (for did-you-mean suggestions)."""
    model: Any = ShieldConfig
    for step in loc:
        if isinstance(step, int):
            continue
        field = next((f for n, f in model.model_fields.items() if n == step or f.alias == step), None)
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _field_names(loc: Location) -> list[str] | None:
    model = _model_at(loc[:-1])
    if model is None or not loc or not isinstance(loc[-1], str):
        return None
    return [f.alias or n for n, f in model.model_fields.items()]


def _suggested_name(loc: Location) -> str | None:
    names = _field_names(loc)
    if names is None:
        return None
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    return close[0] if close else None


def _suggestion(loc: Location) -> str:
    names = _field_names(loc)
    if names is None:
        return ""
    suggested = _suggested_name(loc)
    return f" (did you mean {suggested!r}?)" if suggested else f" (expected one of: {', '.join(names)})"


def _not_one_of(value: str, expected: str) -> str:
    """``action: blok`` as an operator wants to hear it: the choices, and the likely one."""
    choices = re.findall(r"'([^']*)'", expected)
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{value!r} is not one of {', '.join(choices)}{hint}"


def _clean_loc(loc: Location) -> Location:
    """Drop pydantic's union-branch and validator tags, which are not keys of the file."""
    return tuple(
        step for step in loc if not (isinstance(step, str) and (step.startswith("function-") or "[" in step))
    )


def _issues_from(exc: ValidationError, root: yaml.Node, name: str, data: object) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    seen: set[tuple[int, int, str]] = set()
    errors = exc.errors(include_url=False)
    # A misspelt key ('acton') already says "did you mean 'action'?": no separate "missing".
    misspelt = {
        (*_clean_loc(tuple(e["loc"]))[:-1], suggested)
        for e in errors
        if e["type"] == "extra_forbidden"
        for suggested in [_suggested_name(_clean_loc(tuple(e["loc"])))]
        if suggested is not None
    }
    for error in errors:
        loc = _clean_loc(tuple(error["loc"]))
        kind = error["type"]
        if kind == "missing" and loc in misspelt:
            continue
        dotted = place(loc, data)
        if kind == "extra_forbidden":
            message = f"{dotted}: unknown key{_suggestion(loc)}"
        elif kind == "missing":
            message = f"{dotted}: required key is missing"
        elif kind in ("literal_error", "enum") and isinstance(error.get("input"), str):
            message = (
                f"{dotted}: {_not_one_of(error['input'], str(error.get('ctx', {}).get('expected', '')))}"
            )
        else:
            text = str(error["msg"])
            message = f"{dotted}: {text.removeprefix('Value error, ')}"
        node, _ = _locate(root, loc, at_key=kind == "extra_forbidden")
        issue = _issue_at(node, name, message)
        key = (issue.line, issue.column, issue.message)
        if key not in seen:
            seen.add(key)
            issues.append(issue)
    return sorted(issues, key=lambda issue: (issue.line, issue.column))
