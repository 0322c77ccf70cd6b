"""The method is documented inside the repository: citations point into docs/, and every one resolves.

Two checks over every text file of the repository (tracked or untracked, not git-ignored; without git, a walk
that skips .git, .venv, logs and build outputs):

- nothing cites the method specification that lived outside the repository (its section marks or its path);
- every section citation ``docs/<page>.md §<id>`` (also chained: ``§2.2-§2.5``, ``§3, §4``) names a page that
  exists and a heading of that page that starts with ``<id>``; inside docs/ a bare ``§<id>`` refers to the page
  itself and ``<page>.md §<id>`` to another page. Outside docs/ every ``§`` must belong to such a citation.

The public test vectors (``tests/data/*.json``) are kept byte for byte as published; their descriptive strings name
sections of the document they were published with, so they are not scanned.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# Written in pieces so that this file does not match its own patterns.
_OLD_MARK = re.compile(r"\bspec" + r"\s*§", re.IGNORECASE)
_OLD_PATHS = ("shared/" + "spec/", "rosa_" + "method.md")

_SKIP_DIRS = {".git", ".venv", "logs", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis", "outputs",
              "multirun", "wandb", "lightning_logs"}
_SKIP_SUFFIXES = {".so", ".pyd", ".c", ".cpp", ".html", ".png", ".jpg", ".pdf", ".safetensors", ".ckpt", ".pt",
                  ".bin", ".zip", ".gz", ".whl", ".pyc"}
_VERBATIM_DATA = ("tests/data/",)

_SECTION_ID = r"[A-Z]?\d+(?:\.\d+)*"
_SECTION = re.compile(r"§(" + _SECTION_ID + r")")
_CHAIN_GAP = re.compile(r"\s*(?:,|-|–|and|to|/)\s*")
_FILE_BEFORE = re.compile(r"(docs/)?([\w-]+\.md)(?:\]\([^)\s]*\))?`?\s*$")
_DOCS_FILE = re.compile(r"docs/([\w-]+\.md)")
_HEADING = re.compile(r"^#{1,6}\s+(" + _SECTION_ID + r")[.\s]", re.MULTILINE)


def _repository_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True, timeout=60).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.SubprocessError):
        names = []
        for dirpath, dirnames, filenames in os.walk(ROOT):
            dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
            names += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in filenames]
    return sorted(n.replace(os.sep, "/") for n in names
                  if not n.startswith(_VERBATIM_DATA) and Path(n).suffix not in _SKIP_SUFFIXES)


def _text_files() -> dict[str, str]:
    texts = {}
    for name in _repository_files():
        path = ROOT / name
        if not path.is_file():  # listed by git but deleted in the working tree
            continue
        try:
            texts[name] = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
    return texts


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _headings(page: str) -> set[str]:
    return set(_HEADING.findall((DOCS / page).read_text(encoding="utf-8")))


def _citations(name: str, text: str) -> tuple[list[tuple[int, str, str]], list[str]]:
    """([(line, page, section id)], [problems]) for every § mark of one file."""
    in_docs = name.startswith("docs/")
    own_page = Path(name).name if in_docs else None
    found, problems = [], []
    prev_end, prev_page = None, None
    for m in _SECTION.finditer(text):
        page = None
        if prev_end is not None and prev_page is not None and _CHAIN_GAP.fullmatch(text[prev_end:m.start()]):
            page = prev_page  # "§2.2-§2.5", "§3, §4": the page of the chain's first citation
        else:
            before = _FILE_BEFORE.search(text[max(0, m.start() - 200):m.start()])
            if before is not None:
                if not in_docs and before.group(1) is None:
                    problems.append(f"{name}:{_line(text, m.start())}: cite a page as docs/{before.group(2)} "
                                    f"§{m.group(1)}")
                page = before.group(2)
            elif in_docs:
                page = own_page
            else:
                problems.append(f"{name}:{_line(text, m.start())}: §{m.group(1)} does not name a page of docs/")
        if page is not None:
            found.append((_line(text, m.start()), page, m.group(1)))
        prev_end, prev_page = m.end(), page
    return found, problems


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    return _text_files()


def test_docs_exist():
    for page in ("README.md", "method.md", "retrieval.md", "gradients.md", "pipeline.md", "generation.md",
                 "evaluation.md", "architecture.md"):
        assert (DOCS / page).is_file(), page


def test_no_reference_to_the_external_spec(texts):
    assert texts, "no files found"
    bad = []
    for name, text in texts.items():
        if name == "tests/test_docs_references.py":
            continue
        for m in _OLD_MARK.finditer(text):
            bad.append(f"{name}:{_line(text, m.start())}: {text[m.start():m.end() + 8]!r}")
        for path in _OLD_PATHS:
            for m in re.finditer(re.escape(path), text):
                bad.append(f"{name}:{_line(text, m.start())}: {path}")
    assert not bad, "references to the external method specification:\n" + "\n".join(bad)


def test_every_docs_citation_resolves(texts):
    pages = {p.name: _headings(p.name) for p in DOCS.glob("*.md")}
    problems, count = [], 0
    for name, text in texts.items():
        if name == "tests/test_docs_references.py":
            continue
        for m in _DOCS_FILE.finditer(text):
            if m.group(1) not in pages:
                problems.append(f"{name}:{_line(text, m.start())}: docs/{m.group(1)} does not exist")
        found, bad = _citations(name, text)
        problems += bad
        for line, page, section in found:
            count += 1
            if page not in pages:
                problems.append(f"{name}:{line}: docs/{page} does not exist")
            elif section not in pages[page]:
                problems.append(f"{name}:{line}: docs/{page} has no section {section} "
                                f"(its sections: {', '.join(sorted(pages[page]))})")
    assert count > 0, "no docs citations found at all"
    assert not problems, "\n".join(problems)


def test_citation_parser():
    found, bad = _citations("rosa_lightning/x.py", "see docs/method.md §2.2-§2.5 and docs/retrieval.md §R4, §3")
    assert [(p, s) for _, p, s in found] == [("method.md", "2.2"), ("method.md", "2.5"), ("retrieval.md", "R4"),
                                            ("retrieval.md", "3")]
    assert not bad
    _, bad = _citations("rosa_lightning/x.py", "the readout (§2.5)")
    assert bad
    found, bad = _citations("docs/gradients.md", "as §A1 says; [method.md](method.md) §2.5")
    assert [(p, s) for _, p, s in found] == [("gradients.md", "A1"), ("method.md", "2.5")] and not bad
