"""The package's stated habits, checked: every lazy import says why (pyproject.toml's lint comment)."""
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "scratchvit"


def test_every_lazy_import_carries_its_reason():
    bare = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if "noqa: PLC0415" in line and not re.search(r"noqa: PLC0415\s+\(.+\)", line):
                bare.append(f"{name}:{i}: {line.strip()}")
    assert not bare, "lazy imports without a reason in their noqa comment:\n" + "\n".join(bare)
