"""A folder of plain documents (.txt / .md) turned into continued-pretraining samples in chat form."""

from __future__ import annotations

from pathlib import Path

from hone.data.formats import Example, Problem

DOCUMENT_SUFFIXES = (".txt", ".md")


# A paragraph as its words, each with the 1-based line it is on.
Words = list[tuple[int, str]]


def _paragraphs(text: str) -> list[tuple[str, Words]]:
    """Blank-line separated paragraphs: each as its text (line breaks kept) and its words with line numbers."""
    found, lines, words = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            lines.append(line.rstrip())
            words.extend((number, word) for word in line.split())
        elif lines:
            found.append(("\n".join(lines), words))
            lines, words = [], []
    if lines:
        found.append(("\n".join(lines), words))
    return found


def _windows(words: Words, size: int, overlap: int) -> list[Words]:
    """Windows of `size` words, each starting `size - overlap` words after the previous one."""
    # Stopping before len - overlap means the last window always adds at least one new word.
    return [words[start:start + size] for start in range(0, len(words) - overlap, size - overlap)]


def _joined(group: list[tuple[str, Words]]) -> tuple[int, str]:
    """Whole paragraphs as one passage, with the line its first word is on."""
    return group[0][1][0][0], "\n\n".join(paragraph for paragraph, _ in group)


def text_passages(text: str, words_per_chunk: int, overlap_words: int = 0) -> list[tuple[int, str]]:
    """`text` as passages of at most `words_per_chunk` words, each with the line its first word is on.

    Whole paragraphs are grouped while they fit (joined by a blank line, their line breaks kept); a longer
    paragraph is cut into windows that share `overlap_words` words with the previous one.
    """
    passages, group, size = [], [], 0
    for paragraph, words in _paragraphs(text):
        if group and size + len(words) > words_per_chunk:
            passages.append(_joined(group))
            group, size = [], 0
        if len(words) > words_per_chunk:
            passages += [(window[0][0], " ".join(word for _, word in window))
                         for window in _windows(words, words_per_chunk, overlap_words)]
        else:
            group.append((paragraph, words))
            size += len(words)
    return passages + ([_joined(group)] if group else [])


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
        for line, chunk in text_passages(text, words_per_chunk):
            messages = [{"role": "user", "content": f"Write a passage of the document '{path.stem}'."},
                        {"role": "assistant", "content": chunk}]
            examples.append(Example(messages=messages, source=str(path), line=line, format="document"))
    return examples, problems
