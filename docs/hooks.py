"""MkDocs hook (``mkdocs.yml``, ``hooks:``): a page can include a section of ``README.md``.

``<!-- readme-section: Privacy audits -->`` on a page is replaced by the README's section of
that title (from its ``## `` heading to the next), its headings raised one level so that its
``###`` subsections become the page's ``##``. The text then has one source while it is still
edited in the README. Relative links in it (written for the README's folder) become code spans,
so they cannot break the strict build. A title the README does not have stops the build.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.exceptions import PluginError

MARKER = re.compile(r"<!--\s*readme-section:\s*(.+?)\s*-->")
LINK = re.compile(r"(?<!!)\[([^\]]+)\]\((?!https?://|#)([^)\s]+)\)")


def readme_section(readme: str, title: str) -> str:
    """The body of ``## title`` in ``readme`` (code blocks left alone), headings raised."""
    out, inside, found, fence = [], False, False, False
    for line in readme.splitlines():
        if line.startswith("```"):
            fence = not fence
        if not fence and line.startswith("## "):
            if inside:
                break
            inside = found = line[3:].strip() == title
            continue
        if inside:
            if not fence and re.match(r"#{3,6} ", line):
                line = line[1:]
            out.append(LINK.sub(lambda m: f"{m.group(1)} (`{m.group(2)}`)", line)
                       if not fence else line)
    if not found:
        raise PluginError(f"README.md has no section '## {title}'")
    return "\n".join(out).strip() + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "readme-section:" not in markdown:
        return markdown
    readme = (Path(config["config_file_path"]).parent / "README.md").read_text(encoding="utf-8")
    return MARKER.sub(lambda m: readme_section(readme, m.group(1)), markdown)
