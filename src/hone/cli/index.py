"""`hone index build|search`: RAG indexes of a documents folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hone.cli.output import console, emit_json
from hone.cli.output import errors as stderr

app = typer.Typer(help="Retrieval indexes that `hone serve` injects into prompts (fine-tune for style, RAG for "
                  "facts).", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


@app.command("build")
def build(
    docs_dir: Annotated[Path, typer.Argument(help="Folder of .txt / .md documents (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", help="Index file to write (SQLite).")],
    words_per_chunk: Annotated[int, typer.Option(min=1, help="Longest passage, in words.")] = 120,
    overlap: Annotated[int, typer.Option(min=0, help="Words a cut paragraph's windows share.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """Chunk the documents, embed each passage with all-MiniLM-L6-v2 and store them in one file."""
    from hone.retrieval.store import build_index  # imported on use: it loads heavy models' code
    stats = build_index(docs_dir, out, words_per_chunk=words_per_chunk, overlap_words=overlap,
                        show_progress=not as_json and stderr.is_terminal)
    if as_json:
        emit_json(stats)
        return
    console.print(f"indexed {stats['passages']} passages from {stats['files']} files in {stats['seconds']} s "
                  f"({stats['embedder']}) -> {stats['index']}")


@app.command("search")
def search(
    index: Annotated[Path, typer.Argument(help="Index file written by `hone index build`.")],
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", min=1, help="How many passages to return.")] = 5,
    as_json: JsonOption = False,
) -> None:
    """Show the passages most similar to the query, best first."""
    from hone.retrieval.store import open_index  # imported on use: it loads heavy models' code
    hits = open_index(index).search(query, k)
    if as_json:
        emit_json({"index": str(index), "query": query, "hits": hits})
        return
    table = Table("score", "source", "passage")
    for hit in hits:
        table.add_row(f"{hit['score']:.3f}", f"{hit['source']}:{hit['line']}", hit["text"])
    console.print(table)
