"""The one Jinja2 environment of both reports, with its number filters.

Autoescape is on for every template: run names, parameters and tags come from users and are text,
never markup. Figures are embedded as base64 PNG, so each page is one file that opens offline.
"""

from __future__ import annotations

import math
from functools import cache

import jinja2


def is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def pct(value, digits: int = 2) -> str:
    """0.9731 -> "97.31%"; "n/a" when missing."""
    return "n/a" if is_missing(value) else f"{100 * value:.{digits}f}%"


def num(value, digits: int = 4) -> str:
    """0.12345 -> "0.1235"; "n/a" when missing."""
    return "n/a" if is_missing(value) else f"{value:.{digits}f}"


@cache
def environment() -> jinja2.Environment:
    """Templates from `analysis/templates/`, autoescaped, with the `pct` and `num` filters."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("analysis", "templates"),
        autoescape=True,  # run names and params come from users: never trust them as markup
    )
    env.filters["pct"] = pct
    env.filters["num"] = num
    return env


def render(template: str, **values) -> str:
    return environment().get_template(template).render(**values)
