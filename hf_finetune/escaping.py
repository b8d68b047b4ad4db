"""Text that came from a user (label names, file and folder names, recipe values) made safe for each kind
of file hf_finetune writes it into.

* CSV read by a spreadsheet (:func:`csv_cell`): a cell starting with ``=``, ``+``, ``-`` or ``@`` (or a
  tab or carriage return, which some tools strip first) is a formula to Excel, LibreOffice and Google
  Sheets: ``=HYPERLINK("http://x", "click")`` becomes a live link, others can run commands. Such a cell
  gets a leading single quote, as OWASP's "CSV Injection" page advises; the spreadsheet shows the text
  and the quote marks it as text. Cells that are numbers we wrote ourselves are left alone.
* Markdown (:func:`markdown_text`): the characters that end a table cell (``|``, a line break), start a
  link or an image (``[``, ``]``), emphasis or code (``*``, ``_``, ``~``, a backtick) or HTML (``<``,
  ``>``, ``&``) are escaped, so a label is shown as written and never becomes markup, a link or a
  ``<script>``. ``<``, ``>`` and ``&`` become HTML entities (which also makes the text safe where
  markdown passes HTML through); the rest get a backslash.
* Markdown code (:func:`markdown_code`, :func:`code_fence`): a code span or fenced block whose backtick
  run is longer than any run in the text, so the text cannot close it early.
* A terminal (:func:`terminal_text`): control characters (the ESC that starts an ANSI sequence, a
  carriage return or backspace that overwrites what was printed, C1 controls) and the Unicode bidirectional
  overrides are shown as ``\\x1b``-style escapes, so a label cannot recolour, hide or reorder the output;
  so are lone surrogates (the bytes of a non-UTF-8 file name), which would fail to print. The CLI's log
  lines go through :class:`TerminalFormatter`, its one-line errors through :func:`terminal_text`.
* Plots (:data:`PLAIN_TEXT`): matplotlib keyword arguments that draw a string as plain text: no
  math-text parsing of ``$...$`` (``$\\foo{$`` would raise) and no LaTeX.

Every writer of hf_finetune uses these functions; there are no private copies.
"""

from __future__ import annotations

import html
import logging
import re
from typing import Any

__all__ = [
    "FORMULA_PREFIXES",
    "PLAIN_TEXT",
    "csv_cell",
    "markdown_text",
    "markdown_code",
    "code_fence",
    "terminal_text",
    "TerminalFormatter",
]

#: First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection"), and the
#: full-width forms of the four that some spreadsheets also accept.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")

#: Keyword arguments for matplotlib text (``ax.set_title``, ``ax.text``, tick labels) holding user text.
PLAIN_TEXT: dict[str, Any] = {"parse_math": False, "usetex": False}

_MARKDOWN_BACKSLASHED = re.compile(r"([\\`*_\[\]|~])")
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x0b\x0c\x85]+")
_BACKTICK_RUNS = re.compile(r"`+")
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def csv_cell(value: Any) -> str:
    """``value`` as text for a CSV cell a spreadsheet may open: prefixed with ``'`` when it starts with one
    of :data:`FORMULA_PREFIXES` (``=HYPERLINK(...)`` -> ``'=HYPERLINK(...)``), else unchanged. Quoting
    of commas and double quotes is left to the ``csv`` module."""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def markdown_text(value: Any) -> str:
    """``value`` as literal text inside markdown (a paragraph or a table cell): one line, no markup, no
    HTML, no link. ``a|b`` -> ``a\\|b``; ``<script>`` -> ``&lt;script&gt;``; ``[x](y)`` -> ``\\[x\\](y)``."""
    text = html.escape(str(value), quote=False)  # & < > first, so the entities' own & are not escaped twice
    text = _MARKDOWN_BACKSLASHED.sub(r"\\\1", text)
    return _LINE_BREAKS.sub(" ", text)


def markdown_code(value: Any, in_table: bool = False) -> str:
    """``value`` as an inline code span that shows it verbatim (markup and HTML are not interpreted in
    code): fenced by more backticks than its longest run, padded with spaces when it starts or ends with
    a backtick; line breaks become spaces. ``in_table``: ``|`` is escaped too (GFM splits a table row into
    cells before it reads code spans, and drops the backslash of ``\\|`` inside them)."""
    text = _LINE_BREAKS.sub(" ", str(value))
    fence = "`" * (max((len(run) for run in _BACKTICK_RUNS.findall(text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    span = f"{fence}{pad}{text}{pad}{fence}"
    return span.replace("|", "\\|") if in_table else span


def code_fence(text: str, minimum: int = 3) -> str:
    """The backtick fence for a fenced code block holding ``text``: longer than any backtick run in it,
    so no line of ``text`` can close the block."""
    longest = max((len(run) for run in _BACKTICK_RUNS.findall(str(text))), default=0)
    return "`" * max(minimum, longest + 1)


def terminal_text(value: Any, keep_newlines: bool = False) -> str:
    """``value`` safe to print on a terminal: every control character but tab (and line feed, with
    ``keep_newlines``) and every bidirectional override is written as its Python escape (``\\x1b``,
    ``\\r``, ``\\u202e``); other text, non-ASCII letters included, is unchanged."""
    text = str(value)
    if keep_newlines:
        return "\n".join(terminal_text(line) for line in text.split("\n"))
    return _CONTROLS.sub(lambda m: repr(m.group())[1:-1], text.replace("\n", "\\n"))


class TerminalFormatter(logging.Formatter):
    """A logging formatter whose output is :func:`terminal_text` (line breaks kept): a label or file name in
    a log line is shown, never run as a terminal control sequence."""

    def format(self, record: logging.LogRecord) -> str:
        return terminal_text(super().format(record), keep_newlines=True)
