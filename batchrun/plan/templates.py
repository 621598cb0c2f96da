"""Jinja templates over a row's columns, rendered to native JSON values.

A string that is exactly one ``{{ expression }}`` evaluates to the value itself, so
``seed = "{{ seed }}"`` stays an int and a prompt ``"42"`` stays a string. (Jinja's own
``NativeEnvironment`` would ``literal_eval`` rendered text and turn the prompt "42" into 42.)
Any other string with template syntax renders as text; strings without it are constants.
Jinja itself is imported only for a template that is more than a ``{{ column }}``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import TemplateError

if TYPE_CHECKING:
    import jinja2

_SINGLE_EXPR = re.compile(r"^\{\{(?P<expr>(?:(?!\}\}|\{\{|\{%|\{#).)*)\}\}$", re.DOTALL)

_NAME = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*$")
_JINJA_WORDS = frozenset({"true", "false", "none", "True", "False", "None", "loop", "range", "namespace"})

Renderer = Callable[[Mapping[str, Any]], Any]


@functools.cache
def _env() -> jinja2.Environment:
    import jinja2  # ~30 ms at start, for templates that are not a plain {{ column }}

    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True, finalize=_blank_if_null
    )
    env.filters["default"] = env.filters["d"] = _default
    return env


def _blank_if_null(value: Any) -> Any:
    """A null cell is a missing value: it renders as no text, not as the word ``None``."""
    return "" if value is None else value


def _default(value: Any, default_value: Any = "", boolean: bool = False) -> Any:
    """Jinja's ``default``, which also takes a null cell as missing: ``{{ context | default("none") }}``
    over a null ``context`` gives ``none`` (Jinja's own gives the null itself, rendered ``None``)."""
    import jinja2

    if value is None or isinstance(value, jinja2.Undefined) or (boolean and not value):
        return default_value
    return value


def _column(src: str) -> str | None:
    """The column name of a template that is exactly ``{{ column }}``."""
    match = _SINGLE_EXPR.match(src)
    name = _NAME.match(match["expr"]) if match else None
    return name[1] if name and name[1] not in _JINJA_WORDS else None


def _lookup(name: str, where: str) -> Renderer:
    if name in _JINJA_WORDS:  # literals and globals mean what Jinja says they mean
        expr = _env().compile_expression(name, undefined_to_none=False)
        return lambda row: expr(**row)

    def render(row: Mapping[str, Any]) -> Any:
        try:
            return row[name]
        except KeyError:
            raise TemplateError(f"template {where}: {name!r} is undefined") from None

    return render


def _constant(value: Any) -> Renderer:
    return lambda row: value


def compile_template(value: Any, where: str) -> Renderer:
    """Compile a template structure (str, list, dict, scalar) into a function of a row."""
    if not has_template(value):
        return _constant(value)
    if isinstance(value, str):
        return _compile_str(value, where)
    if isinstance(value, list):
        parts = [compile_template(v, f"{where}.{i}") for i, v in enumerate(value)]
        return lambda row: [p(row) for p in parts]
    if isinstance(value, dict):
        items = [(k, compile_template(v, f"{where}.{k}")) for k, v in value.items()]
        return lambda row: {k: r(row) for k, r in items}
    return _constant(value)


def has_template(value: Any) -> bool:
    """Whether any string inside ``value`` holds template syntax."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value or "{#" in value
    if isinstance(value, list):
        return any(has_template(v) for v in value)
    if isinstance(value, dict):
        return any(has_template(v) for v in value.values())
    return False


def _compile_str(src: str, where: str) -> Renderer:
    match = _SINGLE_EXPR.match(src.strip()) if src.strip() == src else None
    if match and (name := _NAME.match(match["expr"])):
        return _lookup(name[1], where)  # the common "{{ column }}": a dict lookup, not a Jinja call
    import jinja2

    try:
        if match:
            expr = _env().compile_expression(match["expr"], undefined_to_none=False)
            return _guard(lambda row: expr(**row), where)
        template = _env().from_string(src)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template {where}: syntax error: {exc.message} (line {exc.lineno})") from None
    return _guard(_renderer(template), where)


def _renderer(template: jinja2.Template) -> Callable[[Mapping[str, Any]], str]:
    """``template.render``, less its cost per call: it merges the template's globals, a ``ChainMap``
    iterated twice a call, into every new context (22 against 4 µs a row for a short ``{% if %}``
    template). The globals are merged once here; the row's columns still win over them, as in
    ``render``. Errors are those ``render`` raises, without its traceback rewriting."""
    from jinja2.runtime import new_context

    env, name, blocks, root = template.environment, template.name, template.blocks, template.root_render_func
    names = dict(template.globals)
    concat = env.concat

    def render(row: Mapping[str, Any]) -> str:
        return concat(root(new_context(env, name, blocks, {**names, **row}, True, names)))

    return render


def _guard(fn: Callable[..., Any], where: str) -> Renderer:
    import jinja2  # already imported: a Jinja template is being compiled

    def render(row: Mapping[str, Any]) -> Any:
        try:
            value = fn(row)
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"template {where}: {exc.message}") from None
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template {where}: {exc}") from None
        except Exception as exc:  # a template that divides by zero, calls a missing method...
            raise TemplateError(f"template {where}: {type(exc).__name__}: {exc}") from None
        if isinstance(value, jinja2.Undefined):
            name = getattr(value, "_undefined_name", None)
            raise TemplateError(f"template {where}: {name or 'a value'!r} is undefined")
        return value

    return render


def referenced_names(value: Any, where: str = "request") -> dict[str, set[str]]:
    """The row columns each template uses, by template location, checked before any row is read."""
    found: dict[str, set[str]] = {}
    if isinstance(value, str):
        if (column := _column(value)) is not None:
            found[where] = {column}
        elif "{{" in value or "{%" in value:
            import jinja2
            import jinja2.meta

            try:
                names = jinja2.meta.find_undeclared_variables(_env().parse(value))
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(f"template {where}: syntax error: {exc.message} (line {exc.lineno})") from None
            if names:
                found[where] = set(names)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found.update(referenced_names(v, f"{where}.{i}"))
    elif isinstance(value, dict):
        for k, v in value.items():
            found.update(referenced_names(v, f"{where}.{k}"))
    return found
