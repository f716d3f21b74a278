"""Mixed-adapter batches: every row gets exactly the logits PEFT gives that row's adapter on its own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hone.errors import HoneError
from hone.models import load_model
from hone.serve import adapters as adapters_module
from hone.serve.adapters import AdapterSource, LoadedAdapters

ROWS = [None, "wide", "narrow", "wide", "rslora", None]


def save_adapter(folder: Path, base: Path, seed: int, **lora) -> AdapterSource:
    """A PEFT adapter on the tiny model with random non-zero B (so it changes every output)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(load_model(str(base)), LoraConfig(**lora))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.3)
    model.save_pretrained(folder)
    return AdapterSource(name=folder.name, adapter_dir=folder, run_dir=None, trained_on=None)


@pytest.fixture(scope="module")
def sources(tiny_model_dir, tmp_path_factory) -> dict[str, AdapterSource]:
    root = tmp_path_factory.mktemp("row-adapters")
    specs = {
        "wide": {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"},
        "narrow": {"r": 2, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "rslora": {"r": 4, "lora_alpha": 4, "target_modules": ["o_proj", "down_proj"], "use_rslora": True},
        "dora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "up_proj"], "use_dora": True},
    }
    return {name: save_adapter(root / name, tiny_model_dir, seed, **spec)
            for seed, (name, spec) in enumerate(specs.items(), start=1)}


def batch(rows: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts of different lengths, with their own position ids."""
    torch.manual_seed(0)
    lengths = [5 + 2 * (row % 3) for row in range(rows)]
    width = max(lengths)
    ids = torch.randint(5, 300, (rows, width))
    mask = torch.zeros((rows, width), dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, width - length:] = 1
    return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}


def reference_logits(base: Path, sources: dict[str, AdapterSource], rows: list[str | None], inputs) -> torch.Tensor:
    """Each row alone, through a fresh model with only that row's adapter (or none) loaded by PEFT."""
    from peft import PeftModel

    logits = []
    for row, name in enumerate(rows):
        model = load_model(str(base)).eval()
        if name is not None:
            model = PeftModel.from_pretrained(model, str(sources[name].adapter_dir)).eval()
        one = {key: value[row:row + 1] for key, value in inputs.items()}
        with torch.inference_mode():
            logits.append(model(**one).logits)
    return torch.cat(logits)


def served_logits(loaded: LoadedAdapters, rows: list[str | None], inputs) -> torch.Tensor:
    with torch.inference_mode():
        loaded.route(rows)
        return loaded.model(**inputs).logits


def test_every_row_gets_its_own_adapter_whatever_the_mix(tiny_model_dir, sources):
    loaded = LoadedAdapters(load_model(str(tiny_model_dir)).eval(), str(tiny_model_dir), capacity=4)
    with torch.inference_mode():
        for name in ["wide", "narrow", "rslora", "dora"]:
            loaded.ensure(sources[name], set())
    inputs = batch(len(ROWS))
    for rows in [ROWS, ["narrow"] * len(ROWS), ["dora"] * len(ROWS), [None] * len(ROWS),
                 ["dora", None, "wide", "dora", "narrow", "rslora"]]:
        torch.testing.assert_close(served_logits(loaded, rows, inputs),
                                   reference_logits(tiny_model_dir, sources, rows, inputs), rtol=1e-5, atol=1e-5)

    with torch.inference_mode():
        loaded.unload("dora")
        loaded.unload("wide")
    assert sorted(loaded.names) == ["narrow", "rslora"]
    rest = [None, "narrow", "rslora", "rslora", None, "narrow"]
    torch.testing.assert_close(served_logits(loaded, rest, inputs),
                               reference_logits(tiny_model_dir, sources, rest, inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec, named", [
    ({"lora_bias": True}, "lora_bias"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"target_modules": ["embed_tokens"]}, "Embedding layer"),
])
def test_an_adapter_that_cannot_be_batched_is_refused_and_leaves_the_others(tiny_model_dir, sources, tmp_path,
                                                                             spec, named):
    odd = save_adapter(tmp_path / "odd", tiny_model_dir, seed=9, **{"r": 2, "target_modules": ["q_proj"], **spec})
    loaded = LoadedAdapters(load_model(str(tiny_model_dir)).eval(), str(tiny_model_dir), capacity=4)
    inputs = batch(2)
    with torch.inference_mode():
        loaded.ensure(sources["narrow"], set())
        with pytest.raises(HoneError, match=named) as refused:
            loaded.ensure(odd, set())
    assert "hone export" in refused.value.hint and loaded.names == ["narrow"]
    torch.testing.assert_close(served_logits(loaded, ["narrow", None], inputs),
                               reference_logits(tiny_model_dir, sources, ["narrow", None], inputs),
                               rtol=1e-5, atol=1e-5)


def settle(loaded: LoadedAdapters, rows: list[str | None], inputs) -> torch.Tensor:
    """The logits of `rows` after they have run together for long enough to merge a lone adapter."""
    for _ in range(adapters_module.MERGE_AFTER_STEPS - 1):
        served_logits(loaded, rows, inputs)
    return served_logits(loaded, rows, inputs)


def test_a_lone_adapter_is_merged_and_gives_the_same_logits(tiny_model_dir, sources):
    loaded = LoadedAdapters(load_model(str(tiny_model_dir)).eval(), str(tiny_model_dir), capacity=4)
    with torch.inference_mode():
        for name in ["wide", "narrow", "dora"]:
            loaded.ensure(sources[name], set())
    inputs = batch(3)
    for name in ["dora", "wide"]:
        rows = [name] * 3
        torch.testing.assert_close(settle(loaded, rows, inputs),
                                   reference_logits(tiny_model_dir, sources, rows, inputs), rtol=1e-5, atol=1e-5)
        assert loaded.merged == name  # the next lone adapter replaces the one merged before
    mixed = ["wide", None, "narrow"]
    torch.testing.assert_close(settle(loaded, mixed, inputs),
                               reference_logits(tiny_model_dir, sources, mixed, inputs), rtol=1e-5, atol=1e-5)
    assert loaded.merged == "wide"  # a mixed batch leaves the merged copy for the adapter's next lone stretch
    with torch.inference_mode():
        loaded.unload("wide")
    assert loaded.merged is None
    assert all(layer.merged is None for layer in loaded._layers.values())
    torch.testing.assert_close(served_logits(loaded, ["narrow"] * 3, inputs),
                               reference_logits(tiny_model_dir, sources, ["narrow"] * 3, inputs),
                               rtol=1e-5, atol=1e-5)


def test_no_merge_when_switched_off_or_short_of_memory(tiny_model_dir, sources, monkeypatch, caplog):
    inputs = batch(2)
    switched_off = LoadedAdapters(load_model(str(tiny_model_dir)).eval(), str(tiny_model_dir), capacity=2,
                                  merge_single_adapter=False)
    with torch.inference_mode():
        switched_off.ensure(sources["wide"], set())
    settle(switched_off, ["wide"] * 2, inputs)
    assert switched_off.merged is None

    loaded = LoadedAdapters(load_model(str(tiny_model_dir)).eval(), str(tiny_model_dir), capacity=2)
    with torch.inference_mode():
        loaded.ensure(sources["wide"], set())
    monkeypatch.setattr(adapters_module, "available_memory", lambda device: 1024)
    with caplog.at_level("INFO", logger="hone.serve"):
        logits = settle(loaded, ["wide"] * 2, inputs)
    assert loaded.merged is None and "stays unmerged" in caplog.text
    torch.testing.assert_close(logits, reference_logits(tiny_model_dir, sources, ["wide"] * 2, inputs),
                               rtol=1e-5, atol=1e-5)


def test_a_bf16_base_batches_adapters_in_bf16_within_rounding_of_peft(tiny_model_dir, sources):
    from peft import PeftModel

    loaded = LoadedAdapters(load_model(str(tiny_model_dir), dtype=torch.bfloat16).eval(), str(tiny_model_dir),
                            capacity=4)
    with torch.inference_mode():
        for name in ["wide", "narrow", "dora"]:
            loaded.ensure(sources[name], set())
    layer = next(iter(loaded._layers.values()))
    assert layer.a.dtype == layer.b.dtype == torch.bfloat16  # mixed batches read half the bytes, cast nothing
    rows = ["wide", None, "narrow", "dora"]
    inputs = batch(len(rows))
    served = served_logits(loaded, rows, inputs).float()
    for row, name in enumerate(rows):
        model = load_model(str(tiny_model_dir), dtype=torch.bfloat16).eval()
        if name is not None:
            model = PeftModel.from_pretrained(model, str(sources[name].adapter_dir)).eval()
        with torch.inference_mode():
            alone = model(**{key: value[row:row + 1] for key, value in inputs.items()}).logits[0].float()
        scale = alone.abs().max()
        assert (served[row] - alone).abs().max() <= 0.05 * scale, name  # adapters move these logits 1-2.5x scale
