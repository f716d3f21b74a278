"""A folder of plain documents (.txt / .md) turned into continued-pretraining samples in chat form."""

from __future__ import annotations

from pathlib import Path

from hone.data.formats import Example, Problem

DOCUMENT_SUFFIXES = (".txt", ".md")


def _chunks(paragraphs: list[tuple[int, str]], words_per_chunk: int) -> list[tuple[int, str]]:
    """Group paragraphs into chunks of about `words_per_chunk` words; each keeps its first line number."""
    chunks, current, start, size = [], [], 0, 0
    for line, paragraph in paragraphs:
        if current and size + len(paragraph.split()) > words_per_chunk:
            chunks.append((start, "\n\n".join(current)))
            current, size = [], 0
        if not current:
            start = line
        current.append(paragraph)
        size += len(paragraph.split())
    if current:
        chunks.append((start, "\n\n".join(current)))
    return chunks


def _paragraphs(text: str) -> list[tuple[int, str]]:
    """Blank-line separated paragraphs with the (1-based) line each starts on."""
    found, lines, start = [], [], 0
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            if not lines:
                start = number
            lines.append(line.rstrip())
        elif lines:
            found.append((start, "\n".join(lines)))
            lines = []
    if lines:
        found.append((start, "\n".join(lines)))
    return found


def document_files(folder: Path) -> list[Path]:
    """The .txt/.md files under `folder`, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in DOCUMENT_SUFFIXES and p.is_file())


def read_documents(folder: Path, words_per_chunk: int = 300) -> tuple[list[Example], list[Problem]]:
    """Every .txt/.md file under `folder`, split into chunks the model learns to produce as text.

    Each chunk becomes one example: a user turn naming the document, and the chunk as the assistant
    turn, so the chat template applies as for any example and every token of the chunk is trained.
    """
    examples, problems = [], []
    for path in document_files(folder):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            problems.append(Problem(0, str(path), f"{path} is not UTF-8 text ({error}); convert it or remove it"))
            continue
        for line, chunk in _chunks(_paragraphs(text), words_per_chunk):
            messages = [{"role": "user", "content": f"Write a passage of the document '{path.stem}'."},
                        {"role": "assistant", "content": chunk}]
            examples.append(Example(messages=messages, source=str(path), line=line, format="document"))
    return examples, problems
