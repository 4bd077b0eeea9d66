"""Plain sentences for YAML syntax errors, placed on the line where the mistake likely is.

PyYAML reports where it *noticed* a problem, in parser terms ("expected <block end>,
but found '?'"), often lines below the mistake: an unclosed quote swallows everything
up to the next quote character, and a key without ``:`` runs into the next line. The
common mistakes of people editing policies (unclosed quote, missing ``- `` before a
list item, missing ``:`` after a key, a tab) are recognised here from the error and
the text, and reported at the line to fix; anything else keeps PyYAML's own words.
"""

from __future__ import annotations

import yaml
from yaml.tokens import ScalarToken

__all__ = ["SyntaxHint", "explain_syntax_error"]

#: (0-based line, 0-based column, sentence).
SyntaxHint = tuple[int, int, str]

_FIXED = {
    "found character '\\t' that cannot start any token": (
        "a tab character is used for indentation; YAML needs spaces"
    ),
    "expected a single document in the stream": (
        "the file holds more than one YAML document (a second '---'); a policy is one document"
    ),
}
_STRAY_COLON = (
    "a ':' is in an unexpected place; put quotes around text that contains ': '"
    " or check the indentation"
)


def _mark(mark: yaml.Mark | None) -> tuple[int, int]:
    return (mark.line, mark.column) if mark is not None else (0, 0)


def _unclosed_quote(text: str, problem: yaml.Mark | None) -> SyntaxHint | None:
    """A quoted text that runs over several lines and ends where the parser failed.

    An unclosed quote swallows the following lines until the next quote character,
    and the parser fails right after it: that is the signature looked for here.
    """
    if problem is None:
        return None
    last: ScalarToken | None = None
    try:
        for token in yaml.scan(text, Loader=yaml.BaseLoader):
            if token.start_mark.index >= problem.index:
                break
            if isinstance(token, ScalarToken):
                last = token
    except yaml.YAMLError:
        pass
    if last is None or last.style not in ('"', "'"):
        return None
    start, end = last.start_mark, last.end_mark
    if start.line == end.line or end.line != problem.line:
        return None
    return (start.line, start.column, _quote_sentence(last.style, end.line))


def _quote_sentence(quote: str, noticed_line: int) -> str:
    return (
        f"the quoted text that starts here is never closed: add the closing {quote} "
        f"(it runs on to line {noticed_line + 1}, where YAML noticed)"
    )


def _previous_content_line(lines: list[str], line: int) -> int | None:
    for index in range(min(line, len(lines)) - 1, -1, -1):
        stripped = lines[index].strip()
        if stripped and not stripped.startswith("#"):
            return index
    return None


def _missing_colon_above(lines: list[str], line: int) -> SyntaxHint | None:
    """'mapping values are not allowed here' after a line that has no ':' at all."""
    above = _previous_content_line(lines, line)
    if above is None:
        return None
    content = lines[above].split(" #", 1)[0].strip()
    if ":" in content or content.startswith(("-", "[", "{", '"', "'")):
        return None
    column = len(lines[above]) - len(lines[above].lstrip())
    return (above, column, _colon_sentence(content))


def _colon_sentence(content: str) -> str:
    word = content.split()[0] if content.split() else content
    return f"'{word}' has no ':' after it; write it as `{word}: value`"


def _missing_dash(lines: list[str], context: yaml.Mark, problem: yaml.Mark) -> SyntaxHint | None:
    """A line at the indentation of a list's ``- `` items that does not start with ``- ``."""
    if context.line >= len(lines) or problem.line >= len(lines):
        return None
    if not lines[context.line][context.column :].startswith("-"):
        return None
    line = lines[problem.line]
    if problem.column != context.column or line[problem.column :].startswith("-"):
        return None
    return (
        problem.line,
        problem.column,
        "this line is at the indentation of the list items above but does not start "
        "with '- ': add '- ' to start a new item, or indent it to belong to the item above",
    )


def explain_syntax_error(text: str, error: yaml.MarkedYAMLError) -> SyntaxHint:
    """Where the mistake behind ``error`` most likely is, and a plain sentence about it."""
    problem = str(error.problem or "")
    context = str(error.context or "")
    pm, cm = error.problem_mark, error.context_mark
    lines = text.splitlines()
    if context == "while scanning a quoted scalar" and cm is not None:
        quote = text[cm.index] if cm.index < len(text) and text[cm.index] in "\"'" else '"'
        return (*_mark(cm), _quote_sentence(quote, pm.line if pm is not None else cm.line))
    hint = _unclosed_quote(text, pm)
    if hint is not None:
        return hint
    if problem == "could not find expected ':'" and cm is not None:
        content = lines[cm.line][cm.column :].split(" #", 1)[0].strip() if lines else ""
        return (*_mark(cm), _colon_sentence(content))
    if problem == "mapping values are not allowed here" and pm is not None:
        return _missing_colon_above(lines, pm.line) or (*_mark(pm), _STRAY_COLON)
    if problem.startswith("expected <block end>") and cm is not None and pm is not None:
        dash = _missing_dash(lines, cm, pm)
        if dash is not None:
            return dash
    if context.startswith("while parsing a flow") and cm is not None and pm is not None:
        close = "}" if context.endswith("mapping") else "]"
        return (
            *_mark(cm),
            f"the '{'{' if close == '}' else '['}' that opens here is not closed before line "
            f"{pm.line + 1}: add the closing '{close}' (or a ',' between items)",
        )
    fixed = _FIXED.get(problem) or _FIXED.get(context)
    if fixed is None:
        fixed = f"{context}, {problem}" if context and problem else (problem or context)
    return (*_mark(pm or cm), fixed)
