"""The repository's documentation stands alone: every relative link in its Markdown resolves to a
file or folder of the repository, and no tracked file points at a path outside it."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def tracked(*patterns):
    out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / p for p in out.stdout.split()]


MARKDOWN = tracked("*.md")


def test_there_is_markdown_to_check():
    names = {p.relative_to(ROOT).as_posix() for p in MARKDOWN}
    assert {"README.md", "docs/semantics.md", "docs/benchmark.md", "docs/design.md"} <= names


@pytest.mark.parametrize("doc", MARKDOWN, ids=[p.relative_to(ROOT).as_posix() for p in MARKDOWN])
def test_relative_links_resolve(doc):
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+://|mailto:|#", target):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        if not path.exists() or ROOT not in (path, *path.parents):
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)}: links that do not resolve inside the repository: {broken}"


def test_no_path_outside_the_repository():
    # A machine's paths (/work/..., /home/...) or the sibling folder the project was planned in.
    outside = re.compile(r"/work/|/home/|\.\./shared\b|shared/DESIGN|BENCH\.md|DESIGN\.md")
    hits = []
    for path in tracked():
        if path.suffix in {".safetensors", ".png", ".json"} or not path.is_file():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if outside.search(line) and path.name != "test_docs.py":
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)
