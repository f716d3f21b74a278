"""Sample packing: packed rows must give exactly what each example gives alone, forward and backward."""

from __future__ import annotations

import random

import pytest
import torch

from hone.data.render import RenderedExample
from hone.models.scoring import collate, target_token_nll
from hone.train.packing import (
    collate_packed,
    pack_examples,
    packed_hidden_states,
    packed_target_token_nll,
    packing_efficiency,
)

LENGTHS = [37, 12, 25, 50, 8]  # packed into 2 rows of at most 70 tokens
MAX_LENGTH = 70


def load_model(folder, attention: str = "sdpa"):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=attention)
    return model.eval()


def random_examples(lengths: list[int], vocab_size: int, seed: int = 0) -> list[RenderedExample]:
    """Examples with random tokens: a prompt (not trained) then a trained reply; every other one is all reply."""
    rng = random.Random(seed)
    examples = []
    for number, n in enumerate(lengths):
        prompt = rng.randint(1, n - 2) if number % 2 else 0
        ids = [rng.randrange(3, vocab_size) for _ in range(n)]
        examples.append(RenderedExample(input_ids=ids, trained=[i >= prompt for i in range(n)], text=""))
    return examples


def packed_rows(examples: list[RenderedExample]) -> tuple[list[int], list[list[RenderedExample]]]:
    """The examples in packed order (the batch's example_index order) and the rows themselves."""
    rows = pack_examples([len(e) for e in examples], MAX_LENGTH)
    assert len(rows) == 2
    return [i for row in rows for i in row], [[examples[i] for i in row] for row in rows]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_logits_equal_unpacked_for_every_token(tiny_model_dir, attention):
    model = load_model(tiny_model_dir, attention)  # whatever it was loaded with, packing switches it
    examples = random_examples(LENGTHS, model.config.vocab_size)
    order, rows = packed_rows(examples)
    batch = collate_packed(rows)
    head = model.get_output_embeddings()
    with torch.no_grad():
        packed = head(packed_hidden_states(model, batch))
        for number, index in enumerate(order):
            alone = model(input_ids=torch.tensor([examples[index].input_ids])).logits[0]
            torch.testing.assert_close(packed[batch.example_index == number], alone, atol=1e-5, rtol=0)


def test_packed_nll_per_example_equals_unpacked(tiny_model_dir):
    model = load_model(tiny_model_dir)
    examples = random_examples(LENGTHS, model.config.vocab_size)
    order, rows = packed_rows(examples)
    batch = collate_packed(rows)
    with torch.no_grad():
        nll, counts = packed_target_token_nll(model, batch, chunk_size=16)
        alone = [target_token_nll(model, collate([examples[i]], pad_id=0)) for i in order]
    torch.testing.assert_close(nll, torch.cat([total for total, _ in alone]), atol=1e-4, rtol=1e-6)
    assert counts.tolist() == [int(count) for _, count in alone]
    assert batch.num_trained == sum(e.num_trained - e.trained[0] for e in examples) == int(counts.sum())
    assert batch.num_tokens == sum(LENGTHS)


def test_a_packed_sequence_is_processed_per_example_not_at_its_whole_length(tiny_model_dir):
    from torch.profiler import profile

    model = load_model(tiny_model_dir)
    examples = random_examples(LENGTHS, model.config.vocab_size)
    _, rows = packed_rows(examples)
    with torch.no_grad(), profile(record_shapes=True) as trace:
        packed_target_token_nll(model, collate_packed(rows))
    attended = {shape[0][2] for event in trace.key_averages(group_by_input_shape=True)
                if "scaled_dot_product" in event.key and event.input_shapes and len(shape := event.input_shapes) > 2
                and len(shape[0]) == 4}
    assert attended == set(LENGTHS)  # no query ever spans two examples or the whole sequence


def test_packed_gradients_equal_sum_of_separate_examples(tiny_model_dir):
    model = load_model(tiny_model_dir)
    examples = random_examples(LENGTHS, model.config.vocab_size, seed=1)
    _, rows = packed_rows(examples)
    packed_target_token_nll(model, collate_packed(rows))[0].sum().backward()
    packed = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    for example in examples:
        target_token_nll(model, collate([example], pad_id=0))[0].sum().backward()
    for name, p in model.named_parameters():
        assert (packed[name] - p.grad).norm() <= 1e-5 * p.grad.norm(), name


def test_boundary_tokens_are_never_targets():
    examples = [RenderedExample(input_ids=[5] * n, trained=[True] * n, text="") for n in (4, 3, 5)]
    batch = collate_packed([examples[:2], examples[2:]])
    assert batch.trained.tolist() == [[False, True, True, True, False, True, True, False, True, True, True, True]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4]]
    assert batch.example_index.tolist() == [[0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2]]
    assert batch.cu_seq_lens.tolist() == [0, 4, 7, 12]
    assert batch.num_trained == 3 + 2 + 4 and batch.num_tokens == 12  # no padding


def test_pack_examples_places_every_index_once_within_max_length():
    rng = random.Random(7)
    lengths = [rng.randint(20, 200) for _ in range(200)]
    rows = pack_examples(lengths, 512)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 512 for row in rows)
    assert rows == pack_examples(list(lengths), 512)
    assert packing_efficiency(lengths, rows, 512) > 0.9


def test_pack_examples_keeps_oversized_examples_in_rows_of_their_own():
    rows = pack_examples([600, 100, 700, 400], 512)
    assert sorted(map(sorted, rows)) == [[0], [1, 3], [2]]
    assert packing_efficiency([600, 100, 700, 400], rows, 512) == pytest.approx(1800 / (600 + 700 + 512))
