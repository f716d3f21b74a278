"""Load base models and tokenizers from local sources, caching de-quantized GGUF weights as safetensors."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch

from hone.errors import HoneError
from hone.home import models_dir
from hone.models.catalog import ModelSource, resolve

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _quiet_transformers() -> None:
    """Keep library progress bars and advice out of hone's own output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@contextmanager
def peft_quietly():
    """PEFT reads a transformers property deprecated in v5; the user can do nothing about the warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _cache_folder(source: ModelSource) -> Path:
    if source.kind == "catalog":
        return models_dir() / source.name
    stat = source.path.stat()
    key = hashlib.sha256(f"{source.path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return models_dir() / f"{source.path.stem}-{key}"


def _convert_gguf(source: ModelSource, target: Path) -> None:
    """De-quantize a GGUF file once with transformers and store it as a safetensors model folder."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    folder, filename = str(source.path.parent), source.path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config = model.config
    config.architectures = [type(model).__name__]
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the cached copy holds plain de-quantized weights
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        config.save_pretrained(staging)
        model.generation_config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        save_model(model, str(staging / "model.safetensors"))  # handles the tied embedding / lm_head
        (staging / "hone.json").write_text(
            json.dumps({"source": str(source.path), "source_sha256": sha256_file(source.path)}, indent=2)
        )
        staging.rename(target)  # atomic: an interrupted conversion never leaves a half-written cache
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def local_model_dir(name: str) -> Path:
    """A Hugging Face model folder for `name`, converting and caching GGUF sources on first use."""
    source = resolve(name)
    if source.kind == "hf_dir":
        return source.path
    target = _cache_folder(source)
    if not (target / "model.safetensors").is_file():
        _convert_gguf(source, target)
    return target


def is_cached(name: str) -> bool:
    """True when loading `name` needs no conversion."""
    source = resolve(name)
    return source.kind == "hf_dir" or (_cache_folder(source) / "model.safetensors").is_file()


def weight_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not files:
        raise HoneError(f"no weight files (*.safetensors or *.bin) in {folder}")
    return files


def fingerprint(name: str) -> str:
    """sha256 over the model's weight files, cached next to them by size and modification time."""
    folder = local_model_dir(name)
    files = weight_files(folder)
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    cache = models_dir() / "fingerprints.json"
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    entry = known.get(str(folder))
    if entry and entry["stamp"] == stamp:
        return entry["sha256"]
    digest = hashlib.sha256()
    for path in files:
        digest.update(sha256_file(path).encode())
    value = digest.hexdigest()
    known[str(folder)] = {"stamp": stamp, "sha256": value}
    cache.write_text(json.dumps(known, indent=2))
    return value


@lru_cache(maxsize=4)
def bf16_is_fast(device: str = "cpu") -> bool:
    """Whether bf16 matmuls run natively (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def frozen_dtype(device: str = "cpu", prefer: str = "auto") -> torch.dtype:
    """dtype for frozen base weights: bf16 where the hardware runs it fast; on a GPU without bf16, fp16 (training
    then scales the loss); else float32."""
    if prefer == "auto":
        if bf16_is_fast(device):
            return torch.bfloat16
        return torch.float16 if device.startswith("cuda") and torch.cuda.is_available() else torch.float32
    return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32,
            "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16}[prefer]


def resolve_device(setting: str, name: str, local_rank: int = 0) -> str:
    """The device a `setting` ("auto", "cpu", "cuda" or "cuda:N") names, checked: CUDA asked for where there is
    none, or a GPU index past the last, is an error naming the setting `name`. "auto" and "cuda" take this
    process's GPU (`local_rank`) when CUDA is present."""
    if setting == "cpu":
        return "cpu"
    cuda = torch.cuda.is_available()
    if setting == "auto":
        return f"cuda:{local_rank}" if cuda else "cpu"
    if setting != "cuda" and not (setting.startswith("cuda:") and setting[5:].isdigit()):
        raise HoneError(f"{name} is {setting!r}: expected auto, cpu, cuda or cuda:N")
    if not cuda:
        raise HoneError(f"{name} is {setting!r} but this machine has no CUDA GPU that PyTorch can use "
                        f"(torch {torch.__version__}, built {'with' if torch.version.cuda else 'without'} CUDA)",
                        hint=f"set {name} to auto or cpu, or install a CUDA build of torch on a GPU machine")
    index = local_rank if setting == "cuda" else int(setting[5:])
    if index >= torch.cuda.device_count():
        raise HoneError(f"{name} is {setting!r} but this machine has {torch.cuda.device_count()} GPU(s) "
                        f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})", hint=f"set {name} to one of them")
    return f"cuda:{index}"


def available_memory(device: str = "cpu") -> int:
    """Bytes free on `device` for new work: free memory of that GPU on CUDA (what this process can still take),
    else the system's available memory."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.mem_get_info(torch.device(device))[0]
    import psutil

    return psutil.virtual_memory().available


def check_precision(device: str, precision: str, name: str = "training.precision") -> None:
    """Refuse a precision the device cannot run: bf16 on a GPU without it (e.g. a T4 or V100)."""
    if precision in ("bf16", "bfloat16") and device.startswith("cuda") and not bf16_is_fast(device):
        raise HoneError(f"{name} is bf16 but {torch.cuda.get_device_name(device)} does not support bf16",
                        hint=f"set {name} to auto (fp16 with loss scaling on this GPU) or fp16")


def load_tokenizer(name: str):
    """The model's tokenizer, with a pad token set (EOS when the model has none)."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(str(local_model_dir(name)))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise HoneError(
            f"model '{name}' has no chat template in its tokenizer files",
            hint="use an instruct/chat model, or add a chat_template to tokenizer_config.json",
        )
    return tokenizer


def load_model(name: str, dtype: torch.dtype | None = None, device: str = "cpu", quantization=None):
    """The causal language model for `name`, in `dtype` (default: float32), on `device`; `quantization` is a
    transformers quantization config (e.g. BitsAndBytesConfig) applied while loading."""
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    # a 4-bit model cannot be moved after loading: bitsandbytes quantizes it on the GPU it is loaded onto
    placed = quantization is not None and device.startswith("cuda")
    model = AutoModelForCausalLM.from_pretrained(
        str(local_model_dir(name)), dtype=dtype or torch.float32, attn_implementation="sdpa",
        quantization_config=quantization, **({"device_map": {"": device}} if placed else {}),
    )
    model.get_output_embeddings().register_forward_pre_hook(_contiguous_input)
    return model if placed else model.to(device)


def _contiguous_input(_module, args):
    # generate's `logits_to_keep=1` hands the lm_head a strided slice of the last positions; with frozen
    # weights PyTorch then multiplies by a per-row copy of the whole vocabulary matrix (1 s per batch of 16).
    # `contiguous()` is not enough: a batch of one counts as contiguous and keeps its strides.
    hidden = args[0]
    if hidden.dim() == 3 and hidden.stride(0) != hidden.shape[1] * hidden.stride(1):
        hidden = hidden.clone(memory_format=torch.contiguous_format)
    return (hidden, *args[1:])
