"""The derivation pages (docs/*.md) cannot rot: every ```python block of a page runs, in order, in one
fresh namespace per page (each op page ends with a finite-difference check: asserts), and every
`file: function` reference names a file that exists and a function defined in it. Also: the docs index
and the README link every page, and bench/RESULTS.md cites every raw file of bench/results/ by name."""
import ast
import re
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
OP_PAGES = [p for p in PAGES if p.name != "README.md"]
PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
# `scratchvit/ops/x.py: function` or `scratchvit/model.py: ViT.backward`, or a bare `scratchvit/x.py`
REFERENCE = re.compile(r"`((?:scratchvit|bench|tests)/[\w/]+\.py)(?::\s*([\w.]+))?`")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the block's first code line, code) of every ```python fenced block."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in PYTHON_BLOCK.finditer(text)]


def defined_names(path: Path) -> set[str]:
    """Top-level functions, classes and assigned names of a Python file, and ``Class.method`` for methods."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names |= {f"{node.name}.{n.name}" for n in node.body
                          if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        names.add(n.id)
    return names


def test_there_are_pages():
    assert {"README.md", "layer_norm.md", "attention.md", "model_backward.md"} <= {p.name for p in PAGES}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_code_runs(page):
    """Every ```python block of the page, in order, in one namespace (later blocks see earlier names)."""
    blocks = python_blocks(page.read_text())
    namespace = {"__name__": f"docs_{page.stem}"}
    for i, (line, code) in enumerate(blocks, 1):
        try:
            exec(compile(code, f"docs/{page.name}, python block {i} (line {line})", "exec"), namespace)
        except Exception as e:  # noqa: BLE001  (any failure is reported with the page and the block)
            pytest.fail(f"docs/{page.name}: python block {i} of {len(blocks)} (line {line}) failed: "
                        f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}")


@pytest.mark.parametrize("page", OP_PAGES, ids=lambda p: p.name)
def test_page_ends_with_a_numerical_check(page):
    """A derivation page checks itself: its last python block asserts, and its code takes a finite difference."""
    blocks = python_blocks(page.read_text())
    assert blocks, f"docs/{page.name} has no ```python block"
    code = "\n".join(c for _, c in blocks).lower()
    assert "assert" in blocks[-1][1] and ("finite" in code or "numerical" in code), \
        f"docs/{page.name}: the last python block should check the derivation against a finite difference"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_references_exist(page):
    """Every `path.py` reference names an existing file, every `path.py: name` a name defined in it."""
    text = page.read_text()
    bad = []
    for m in REFERENCE.finditer(text):
        path, name = ROOT / m.group(1), m.group(2)
        if not path.is_file():
            bad.append(f"{m.group(0)}: no file {m.group(1)}")
        elif name and name not in defined_names(path):
            bad.append(f"{m.group(0)}: {m.group(1)} defines no {name}")
    assert not bad, f"docs/{page.name}: references that do not hold:\n" + "\n".join(bad)


def markdown_links(text: str) -> set[str]:
    return set(re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text))


def test_index_and_readme_link_every_page():
    index = markdown_links((DOCS / "README.md").read_text())
    missing = [p.name for p in OP_PAGES if p.name not in index]
    assert not missing, f"docs/README.md does not link {missing}"
    for link in index:
        if not link.startswith("http"):
            assert (DOCS / link).exists(), f"docs/README.md links {link}, which does not exist"
    readme = (ROOT / "README.md").read_text()
    assert "## Read the code in this order" in readme
    section = readme.split("## Read the code in this order", 1)[1].split("\n## ", 1)[0]
    links = markdown_links(section)
    assert "docs/README.md" in links and not [p.name for p in OP_PAGES if f"docs/{p.name}" not in links]
    for link in links:
        assert (ROOT / link).exists(), f"README.md links {link}, which does not exist"


def test_results_cites_every_raw_file():
    """bench/RESULTS.md names every file in bench/results/ (its name, or its path under results/)."""
    results = ROOT / "bench" / "results"
    text = (ROOT / "bench" / "RESULTS.md").read_text()
    files = [p.relative_to(results).as_posix() for p in sorted(results.rglob("*")) if p.is_file()]
    assert files
    uncited = [f for f in files if f not in text and Path(f).name not in text]
    assert not uncited, f"bench/RESULTS.md does not cite {uncited}"
