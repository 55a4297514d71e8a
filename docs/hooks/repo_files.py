"""MkDocs hook: links from docs/ to files of the repository (`../modelmora.toml.example`).

On GitHub those links work as they are; on the site the file would be missing. So each repository
file that a page links to as `](../PATH)` is copied into the site at `PATH`, and the link is
rewritten to match. A link to a file that does not exist stays as it is, and the strict build
fails on it.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

_LINK = re.compile(r"\]\(\.\./([^)#\s]+)\)")


def repository_links(markdown: str, root: Path) -> list[str]:
    """The repository files (not folders) that `](../PATH)` links in `markdown` name."""
    return [path for path in _LINK.findall(markdown) if (root / path).is_file()]


def on_files(files: Files, config: MkDocsConfig) -> Files:
    docs, root = Path(config.docs_dir), Path(config.config_file_path).parent
    linked = {
        path
        for page in docs.glob("*.md")
        for path in repository_links(page.read_text(encoding="utf-8"), root)
    }
    for path in sorted(linked):
        if files.get_file_from_path(path) is None:
            files.append(File(path, str(root), config.site_dir, config.use_directory_urls))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    if "/" in page.file.src_uri:  # only top-level pages link to the repository this way
        return markdown
    root = Path(config.config_file_path).parent
    linked = set(repository_links(markdown, root))
    return _LINK.sub(lambda m: f"]({m[1]})" if m[1] in linked else m[0], markdown)
