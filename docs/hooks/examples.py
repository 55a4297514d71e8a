"""MkDocs hook: the Examples page, made at build time from the scripts in examples/.

Each script's docstring says what it shows and how to run it; the page gives that and the
script's code, so the site shows exactly what tests/test_examples.py runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

PAGE = "examples.md"
ORDER = ["local_inference", "register_and_infer", "jobs", "streaming_chat", "canary"]
"""The scripts from the simplest workflow on; any other script comes after them."""
INTRO = """\
# Examples

The repository's `examples/` folder has one script per workflow. Each is self-contained, takes
the server's URL from `--url` (or `MODELMORA_URL`, default `http://127.0.0.1:8000`) and its API
key from `--key` (or `MODELMORA_API_KEY`), and is run by the test suite against a real
`modelmora serve` of tiny models (`tests/test_examples.py`), so none of them rots. This page is
made from the scripts themselves when the site is built.
"""


def render_examples(folder: Path) -> str:
    """The page: per script, its docstring as prose, then its code."""
    sections = [INTRO]
    for script in sorted(folder.glob("*.py"), key=_rank):
        source = script.read_text(encoding="utf-8")
        docstring = ast.get_docstring(ast.parse(source)) or ""
        title, _, rest = docstring.partition("\n")
        sections += [
            f"## `{script.name}`",
            f"**{title.strip()}**",
            rest.strip(),
            f'??? example "examples/{script.name}"\n\n    ```python\n'
            + "".join(f"    {line}" if line.strip() else line for line in _lines(source))
            + "    ```",
        ]
    return "\n\n".join(sections) + "\n"


def _rank(script: Path) -> tuple[int, str]:
    return (ORDER.index(script.stem) if script.stem in ORDER else len(ORDER), script.stem)


def _lines(source: str) -> list[str]:
    return [line if line.endswith("\n") else line + "\n" for line in source.splitlines()]


def on_files(files: Files, config: MkDocsConfig) -> Files:
    folder = Path(config.config_file_path).parent / "examples"
    files.append(File.generated(config, PAGE, content=render_examples(folder)))
    return files
