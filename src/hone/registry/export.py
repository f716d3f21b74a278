"""Export a fine-tuned run as a standalone model: the adapter merged into the base, saved as a Hugging Face
folder (safetensors, config and generation config with the right EOS, tokenizer with its chat template, model
card README.md), and optionally as a GGUF file for llama.cpp-based runtimes.

The merge is done in float32 whatever the saved dtype, so rounding happens once, after the merge.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

import hone
from hone.errors import HoneError
from hone.models import fingerprint, load_model, load_tokenizer, local_model_dir
from hone.models.finetuned import adapter_fingerprint, attach_adapter, read_run_dir
from hone.models.generation import stop_token_ids
from hone.models.loading import peft_quietly
from hone.registry.card import version_from_run_dir, write_model_card

EXPORT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# In its own subfolder: transformers, given gguf_file=, would otherwise mix in the folder's tokenizer_config.json.
GGUF_FILE = "gguf/model.gguf"
MANIFEST_FILE = "hone_export.json"


def export_merged(run_dir: Path, out: Path, *, gguf: bool = False, dtype: str = "auto", force: bool = False) -> dict:
    """Merge the run's adapter into its base and write a standalone model folder to `out`.

    `dtype` is the saved precision: fp32, bf16, fp16, or auto (the base model's own). With `gguf`, the folder
    also holds `gguf/model.gguf` in that precision. A non-empty `out` is replaced only with `force`, and only once
    the new folder is complete. Returns what was written: paths, sizes, dtype and fingerprints.
    """
    started = time.perf_counter()
    run = read_run_dir(run_dir)
    out = Path(out).expanduser().resolve()
    _check_out(out, run.run_dir, force)
    save_dtype = _export_dtype(dtype, run.base)
    if gguf:
        _require_gguf_support(run.base)
    model, tokenizer = _merged_model(run, save_dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a model folder is meant to be read by servers
    try:
        _save_hf_folder(model, tokenizer, run.base, staging)
        if gguf:
            write_gguf(model, tokenizer, staging, staging / GGUF_FILE, name=out.name,
                       base_folder=local_model_dir(run.base))
        manifest = _manifest(run, save_dtype, gguf)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        write_model_card(version_from_run_dir(run.run_dir), staging, merged=True)
        _move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**manifest, "out": str(out), "size_bytes": _folder_size(out),
            "gguf_bytes": (out / GGUF_FILE).stat().st_size if gguf else None,
            "seconds": round(time.perf_counter() - started, 2)}


def _check_out(out: Path, run_dir: Path, force: bool) -> None:
    """Refuse an --out that is a file, holds the run itself, or is a non-empty folder without --force."""
    if out.exists() and not out.is_dir():
        raise HoneError(f"--out {out} is a file, not a folder", hint="pass a folder path for the exported model")
    if out == run_dir or out in run_dir.parents:
        raise HoneError(f"--out {out} contains the run directory {run_dir}; exporting there would destroy the run",
                        hint="export to a folder outside the run directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise HoneError(f"--out {out} is not empty", hint="choose an empty or new folder, or pass --force to "
                        "replace its contents")


def _export_dtype(dtype: str, base: str) -> torch.dtype:
    """The saved dtype: named, or for 'auto' the one the base model's config.json records (else fp32)."""
    if dtype != "auto":
        if dtype not in EXPORT_DTYPES:
            raise HoneError(f"--dtype {dtype!r} is not one of auto, {', '.join(EXPORT_DTYPES)}",
                            hint="auto keeps the base model's own precision")
        return EXPORT_DTYPES[dtype]
    config = json.loads((local_model_dir(base) / "config.json").read_text())
    recorded = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return getattr(torch, recorded) if recorded in ("float32", "bfloat16", "float16") else torch.float32


def _merged_model(run, save_dtype: torch.dtype):
    """The base in float32 with the adapter merged in, cast to `save_dtype`, and the base's tokenizer."""
    model = attach_adapter(load_model(run.base, dtype=torch.float32), run.adapter_dir, run.base)
    with peft_quietly():
        model = model.merge_and_unload()
    return model.to(save_dtype).eval(), load_tokenizer(run.base)


def _save_hf_folder(model, tokenizer, base: str, folder: Path) -> None:
    """Weights, config and generation config that stop at the chat template's end-of-turn token, and tokenizer."""
    from transformers import GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(local_model_dir(base))
    except OSError:
        generation = GenerationConfig.from_model_config(model.config)
    stop_ids = list(stop_token_ids(tokenizer, generation))
    special = {"eos_token_id": stop_ids[0] if len(stop_ids) == 1 else stop_ids or None,
               "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id}
    config = model.config
    config.architectures = [type(model).__name__]
    config.dtype = model.dtype
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # merged weights are plain tensors
    for key, value in special.items():
        setattr(config, key, value)
    generation.update(**special)
    model.generation_config = generation
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _manifest(run, save_dtype: torch.dtype, gguf: bool) -> dict:
    return {"format": "hone-export", "hone_version": hone.__version__, "run_dir": str(run.run_dir),
            "base_model": run.base, "base_fingerprint": fingerprint(run.base),
            "adapter_sha256": adapter_fingerprint(run.adapter_dir), "dtype": _dtype_name(save_dtype),
            "gguf": GGUF_FILE if gguf else None, "created_at": datetime.now(UTC).isoformat()}


def _dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, value in EXPORT_DTYPES.items() if value == dtype)


def _move_into_place(staging: Path, out: Path) -> None:
    """Put the finished folder at `out`; an earlier folder there is removed only after the swap."""
    if not out.exists():
        os.replace(staging, out)
        return
    previous = out.with_name(f".{out.name}.previous-{os.getpid()}")
    os.replace(out, previous)
    os.replace(staging, out)
    shutil.rmtree(previous, ignore_errors=True)


def _folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


# GGUF ------------------------------------------------------------------------------------------------------------

GGUF_TYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def _require_gguf_support(base: str) -> None:
    """GGUF export covers the llama architecture with a byte-level BPE tokenizer (SmolLM2, Llama 3 and kin)."""
    folder = local_model_dir(base)
    config = json.loads((folder / "config.json").read_text())
    reasons = []
    if config.get("model_type") != "llama":
        reasons.append(f"its architecture is '{config.get('model_type')}', and hone writes GGUF for 'llama' only")
    if config.get("attention_bias") or config.get("mlp_bias"):
        reasons.append("it has attention or MLP biases")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        reasons.append(f"it uses '{rope['rope_type']}' RoPE scaling")
    tokenizer_file = folder / "tokenizer.json"
    tokenizer = json.loads(tokenizer_file.read_text()) if tokenizer_file.is_file() else {}
    if tokenizer.get("model", {}).get("type") != "BPE" or (tokenizer.get("decoder") or {}).get("type") != "ByteLevel":
        reasons.append("its tokenizer is not a byte-level BPE tokenizer.json")
    if reasons:
        raise HoneError(f"cannot write GGUF for base model '{base}': {'; '.join(reasons)}",
                        hint="export without --gguf and convert the Hugging Face folder with llama.cpp's "
                        "convert_hf_to_gguf.py")


def write_gguf(model, tokenizer, hf_folder: Path, path: Path, *, name: str,
               base_folder: Path | None = None) -> None:
    """Write `model` (a LlamaForCausalLM) and the tokenizer saved in `hf_folder` as one GGUF file at `path`,
    tensors in the model's dtype (F32, F16 or BF16) and norms in F32, the way llama.cpp's converter does.

    `name` is the model name runtimes show; `base_folder` is the base model's folder, whose original GGUF (if
    any) names the pre-tokenizer.
    """
    import gguf as gguf_lib

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf_lib.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    _add_model_metadata(writer, model.config, GGUF_TYPES[model.dtype])
    _add_tokenizer(writer, tokenizer, hf_folder, model.config.vocab_size, base_folder or hf_folder)
    for name, data, raw_dtype in _gguf_tensors(model):
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_model_metadata(writer, config, gguf_type: str) -> None:
    import gguf as gguf_lib

    file_types = {"F32": gguf_lib.LlamaFileType.ALL_F32, "F16": gguf_lib.LlamaFileType.MOSTLY_F16,
                  "BF16": gguf_lib.LlamaFileType.MOSTLY_BF16}
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope_theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta") or config.rope_theta
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(file_types[gguf_type])


def _add_tokenizer(writer, tokenizer, hf_folder: Path, vocab_size: int, base_folder: Path) -> None:
    """Tokens in id order with their types, merges, special ids and chat template (llama.cpp's 'gpt2' model)."""
    import gguf as gguf_lib

    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:  # the embedding matrix is larger than the vocabulary
            tokens.append(f"[PAD{index}]")
            types.append(gguf_lib.TokenType.UNUSED)
        elif index in added:
            tokens.append(by_id[index])
            types.append(gguf_lib.TokenType.CONTROL if added[index].special else gguf_lib.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf_lib.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(base_folder))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf_lib.SpecialVocab(hf_folder, load_merges=True, n_vocab=vocab_size)
    special.add_to_gguf(writer, quiet=True)
    if tokenizer.pad_token_id is not None and "pad" not in special.special_token_ids:
        writer.add_pad_token_id(tokenizer.pad_token_id)


def _pre_tokenizer_name(model_folder: Path) -> str:
    """llama.cpp's name for how text is split before BPE: the base GGUF's own name when hone converted the base
    from one, else the name transformers' GGUF reader knows for this split pattern, else GPT-2's."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    from transformers.integrations.gguf.reader import read_gguf_metadata

    source = _base_gguf_source(model_folder)
    if source is not None:
        metadata, _ = read_gguf_metadata(str(source), ())  # reads no arrays in full: gguf's reader takes seconds
        if metadata.get("tokenizer.ggml.pre"):
            return str(metadata["tokenizer.ggml.pre"])
    pre = json.loads((model_folder / "tokenizer.json").read_text()).get("pre_tokenizer") or {}
    patterns = [step.get("pattern", {}).get("Regex") for step in pre.get("pretokenizers", [pre])]
    return next((name for name, split in GGUF_PRE_TOKENIZER_SPLITS.items() if split in patterns), "gpt-2")


def _base_gguf_source(model_folder: Path) -> Path | None:
    """The GGUF file the base was de-quantized from, which hone records in the cached folder's hone.json."""
    record = model_folder / "hone.json"
    if not record.is_file():
        return None
    source = Path(json.loads(record.read_text()).get("source", ""))
    return source if source.suffix == ".gguf" and source.is_file() else None


def _permute_for_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's layout for the q/k projections (rotary halves interleaved); transformers undoes it on load."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def _gguf_tensors(model):
    """(GGUF name, data, raw dtype) for every weight; the tied lm_head is left out, as llama.cpp expects."""
    import gguf as gguf_lib

    config = model.config
    names = gguf_lib.get_tensor_name_map(gguf_lib.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    quant = getattr(gguf_lib.GGMLQuantizationType, GGUF_TYPES[model.dtype])
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        stem, _, suffix = hf_name.rpartition(".")
        name = names.get_name(stem)
        if name is None:
            raise HoneError(f"cannot place tensor {hf_name} in a llama GGUF file",
                            hint="export without --gguf; this model has weights llama.cpp's layout lacks")
        data = tensor.detach().float().cpu().numpy()
        if name.endswith("attn_q"):
            data = _permute_for_rope(data, config.num_attention_heads)
        elif name.endswith("attn_k"):
            data = _permute_for_rope(data, config.num_key_value_heads)
        if data.ndim == 1 or quant == gguf_lib.GGMLQuantizationType.F32:
            yield f"{name}.{suffix}", data, gguf_lib.GGMLQuantizationType.F32
        else:
            yield f"{name}.{suffix}", gguf_lib.quants.quantize(data, quant), quant
