from __future__ import annotations

import importlib.util
import re
import typing as t
from pathlib import Path

project = "Flask-ServerSession"
copyright = "2026, Flask-ServerSession contributors"
author = "Flask-ServerSession contributors"

from flask_serversession import __version__ as release  # noqa: E402

version = ".".join(release.split(".")[:2])

# No intersphinx: the docs must build without network access.
extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
exclude_patterns = ["_build"]
default_role = "code"

html_theme = "furo" if importlib.util.find_spec("furo") else "alabaster"
html_title = f"Flask-ServerSession {release}"

_CHANGES = Path(__file__).parent.parent / "CHANGES.md"
_CODE = re.compile(r"(`+)(.+?)\1")
_STRONG = re.compile(r"\*\*(.+?)\*\*")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)]+)\)")
_UNDERLINES = {2: "-", 3: "~", 4: "^"}


def _inline(text: str) -> str:
    """Convert the inline Markdown of CHANGES.md to reStructuredText."""
    parts = []
    for i, piece in enumerate(_CODE.split(text)):
        # split() yields text, fence, code, text, fence, code, ...
        if i % 3 == 1:
            continue
        if i % 3 == 2:
            parts.append(f"``{piece}``")
            continue
        piece = re.sub(r"([\\*_|])", r"\\\1", piece)
        piece = _STRONG.sub(lambda m: f"**{m.group(1)}**", piece.replace("\\*\\*", "**"))
        piece = _LINK.sub(lambda m: f"`{m.group(1)} <{m.group(2)}>`__", piece)
        parts.append(piece)
    return "".join(parts)


def markdown_to_rst(text: str) -> str:
    """Convert CHANGES.md (headings, paragraphs, bullet lists) to reStructuredText.

    The first-level heading is dropped: ``changes.rst`` gives the page title.
    """
    out = []
    for line in text.splitlines():
        heading = re.match(r"(#{1,4})\s+(.*)", line)
        if heading:
            level = len(heading.group(1))
            if level > 1:
                title = _inline(heading.group(2).strip())
                out += [title, _UNDERLINES[level] * len(title), ""]
            continue
        out.append(_inline(line))
    return "\n".join(out) + "\n"


def _include_changes(app: t.Any, docname: str, source: list[str]) -> None:
    if docname == "changes":
        app.env.note_dependency(str(_CHANGES))
        changes = markdown_to_rst(_CHANGES.read_text(encoding="utf-8"))
        source[0] = source[0].replace(".. include-changes-md::", changes)


def setup(app: t.Any) -> None:
    app.connect("source-read", _include_changes)
