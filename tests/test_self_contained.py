"""The repository cites only itself: no pointer to a document a clone does not contain, and every
`docs/reference.md §N` names a section that exists (so code can cite the reference by section)."""

from __future__ import annotations

import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(ROOT, 'docs', 'reference.md')

# Documents that live outside the repository (team notes), built up so this file does not cite
# them itself.
OUTSIDE_NAMES = ('REFERENCE' + '.md', 'ENVIRONMENT' + '.md', 'ANCHORS' + '.md', 'shared' + '/docs')
OUTSIDE = re.compile('|'.join(re.escape(name) for name in OUTSIDE_NAMES))
SECTION = r'§\d+(?:\.\d+)*(?:[–-]\d+(?:\.\d+)*)?'
# 'docs/reference.md §2.5, §3.2 and §3.3', possibly across a line break.
CITATION = re.compile(rf'reference\.md((?:[\s,]*(?:and\s+)?{SECTION})+)')
HEADING = re.compile(r'^#{2,3} (\d+(?:\.\d+)*)\.? ', re.MULTILINE)
# Directories of things that are never committed (see .gitignore).
UNTRACKED = {'.git', '.venv', 'runs', '__pycache__', '.pytest_cache', '.hypothesis'}


def _repository_files() -> list[str]:
    """Tracked and not-ignored files (new ones count before their first commit); a walk of the
    tree minus generated folders where git is unavailable (e.g. an unpacked archive)."""
    try:
        listed = subprocess.run(
            ['git', 'ls-files', '--cached', '--others', '--exclude-standard', '-z'],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode('utf-8').split('\0')
        return [path for path in listed if path and os.path.isfile(os.path.join(ROOT, path))]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for folder, dirs, names in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in UNTRACKED and not d.endswith('.egg-info')]
            files += [os.path.relpath(os.path.join(folder, name), ROOT) for name in names]
        return files


def _texts() -> dict[str, str]:
    texts = {}
    for path in _repository_files():
        with open(os.path.join(ROOT, path), 'rb') as f:
            data = f.read()
        try:
            texts[path] = data.decode('utf-8')
        except UnicodeDecodeError:  # images and other binaries cite nothing
            continue
    return texts


def _line(text: str, offset: int) -> int:
    return text.count('\n', 0, offset) + 1


def _sections(number: str) -> list[str]:
    """'§2.5' -> ['2.5']; a range '§8–9' -> ['8', '9'] (both ends must exist)."""
    return re.split('[–-]', number.lstrip('§'))


def _reference_sections() -> set[str]:
    with open(REFERENCE, encoding='utf-8') as f:
        return set(HEADING.findall(f.read()))


def test_nothing_cites_a_document_outside_the_repository():
    found = [
        f'{path}:{_line(text, match.start())}: {match.group(0)}'
        for path, text in _texts().items()
        for match in OUTSIDE.finditer(text)
    ]
    assert not found, (
        'these cite documents a clone of the repository does not contain; cite docs/reference.md '
        '§N or another file in the repository instead:\n' + '\n'.join(found)
    )


def test_every_reference_section_cited_exists():
    sections = _reference_sections()
    assert {'1', '2', '2.5', '3.4', '8'} <= sections  # the headings parse at all
    texts = _texts()
    bad = []
    for path, text in texts.items():
        for match in CITATION.finditer(text):
            for number in re.findall(SECTION, match.group(1)):
                if any(part not in sections for part in _sections(number)):
                    bad.append(f'{path}:{_line(text, match.start())}: {number}')
    # Inside the reference itself a bare '§N' refers to its own sections.
    for match in re.finditer(SECTION, texts.get('docs/reference.md', '')):
        if any(part not in sections for part in _sections(match.group(0))):
            line = _line(texts['docs/reference.md'], match.start())
            bad.append(f'docs/reference.md:{line}: {match.group(0)}')
    assert not bad, (
        f'docs/reference.md has no such section (it has {sorted(sections)}):\n' + '\n'.join(bad)
    )


def test_every_reference_section_has_its_link_anchor():
    with open(REFERENCE, encoding='utf-8') as f:
        text = f.read()
    for number in HEADING.findall(text):
        anchor = f'<a id="s{number.replace(".", "-")}"></a>'
        assert re.search(re.escape(anchor) + r'\n#{2,3} ' + re.escape(number), text), (
            f'section {number} of docs/reference.md lacks the anchor {anchor} on the line above'
        )


def test_documents_cited_by_path_exist():
    missing = sorted(
        {
            f'{path}: {match.group(0)}'
            for path, text in _texts().items()
            for match in re.finditer(r'(?<![\w/])docs/[\w./-]+?\.md\b', text)
            if not os.path.isfile(os.path.join(ROOT, match.group(0)))
        }
    )
    assert not missing, 'these cite documents that do not exist:\n' + '\n'.join(missing)
