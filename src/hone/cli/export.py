"""`hone export RUN_DIR --merge --out DIR [--gguf]`: a fine-tuned run as a standalone model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hone.cli.output import console, emit_json
from hone.cli.output import errors as stderr
from hone.errors import HoneError


def export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `hone train` (holds adapter/).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the merged model to.")],
    merge: Annotated[bool, typer.Option("--merge", help="Merge the adapter into the base weights (required: "
                                        "the adapter alone is already in RUN_DIR/adapter).")] = False,
    gguf: Annotated[bool, typer.Option("--gguf", help="Also write gguf/model.gguf for llama.cpp, Ollama and "
                                       "LM Studio.")] = False,
    dtype: Annotated[str, typer.Option(help="Saved precision: auto (the base model's), fp32, bf16 or fp16.")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Replace the contents of a non-empty --out.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Write a standalone Hugging Face model (merged weights, tokenizer, chat template, EOS) that transformers,
    vLLM and TGI load without hone or PEFT."""
    if not merge:
        raise HoneError("hone export needs --merge: it writes the base with the adapter merged into its weights",
                        hint=f"run `hone export {run_dir} --merge --out DIR`; to serve the adapter unmerged (e.g. "
                        f"with vLLM's LoRA support), use {run_dir}/adapter as it is")
    with stderr.status("merging the adapter and writing the model", spinner="dots"):
        from hone.registry.export import export_merged  # imported on use: it loads heavy models' code
        result = export_merged(run_dir, out, gguf=gguf, dtype=dtype, force=force)
    if as_json:
        emit_json(result)
        return
    size_mb = result["size_bytes"] / 1e6
    console.print(f"exported {result['run_dir']} ({result['base_model']} + adapter, {result['dtype']}) to "
                  f"{result['out']}: {size_mb:.1f} MB in {result['seconds']} s")
    if result["gguf"]:
        console.print(f"GGUF: {Path(result['out']) / result['gguf']} ({result['gguf_bytes'] / 1e6:.1f} MB)")
    console.print(f"load it with AutoModelForCausalLM.from_pretrained({str(result['out'])!r})")
