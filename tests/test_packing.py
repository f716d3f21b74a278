"""Sample packing: packed rows must give exactly what each example gives alone, forward and backward."""

from __future__ import annotations

import random

import pytest
import torch

from hone.data.render import RenderedExample
from hone.models.scoring import collate, target_token_nll
from hone.train.packing import (
    MATMUL_ATTENTION_MAX_LENGTH,
    attention_groups,
    collate_packed,
    matmul_attention,
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


def test_attention_groups_batch_examples_of_similar_length_and_give_every_token_back():
    same = attention_groups([122, 121, 118, 118])
    assert same.shapes == [(4, 122)]  # a few tokens of padding: one call
    mixed = attention_groups([30, 200, 28, 190, 5])
    assert mixed.shapes == [(2, 200), (2, 30), (1, 5)]  # the 5-token example would pay 36x its attention
    for layout, lengths in ((same, [122, 121, 118, 118]), (mixed, [30, 200, 28, 190, 5])):
        total = sum(lengths)
        assert layout.gather[layout.scatter].tolist() == list(range(total))  # every token's own output comes back
        assert len(layout.gather) == sum(n * length for n, length in layout.shapes)
        example_of = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
        slots = example_of[layout.gather].split([n * length for n, length in layout.shapes])
        for (n, length), group in zip(layout.shapes, slots, strict=True):
            assert (group.view(n, length) == group.view(n, length)[:, :1]).all()  # a padded row stays in its example


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_attention_equals_sdpa_forward_and_backward(dtype):
    import torch.nn.functional as F

    torch.manual_seed(0)
    # 6 query heads sharing 2 key/value heads, as grouped-query models have them
    q, k, v = (torch.randn(3, heads, 40, 16, dtype=dtype, requires_grad=True) for heads in (6, 2, 2))
    grad = torch.randn(3, 40, 6, 16, dtype=dtype)
    ours = matmul_attention(q, k, v, 0.25)
    ours_grads = torch.autograd.grad(ours, (q, k, v), grad)
    with torch.autocast("cpu", enabled=False):
        wide = (q.float(), k.float().repeat_interleave(3, 1), v.float().repeat_interleave(3, 1))
        reference = F.scaled_dot_product_attention(*wide, is_causal=True, scale=0.25).transpose(1, 2)
    reference_grads = torch.autograd.grad(reference, (q, k, v), grad.float())
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.03, "rtol": 0.02}
    torch.testing.assert_close(ours.float(), reference, **tolerance)
    for mine, theirs in zip(ours_grads, reference_grads, strict=True):
        torch.testing.assert_close(mine.float(), theirs.float(), **tolerance)


def test_examples_longer_than_the_matmul_limit_attend_through_sdpa_and_still_match(tiny_model_dir):
    model = load_model(tiny_model_dir)
    lengths = [MATMUL_ATTENTION_MAX_LENGTH + 8, 20, 24]
    examples = random_examples(lengths, model.config.vocab_size, seed=3)
    batch = collate_packed([examples])
    assert batch.attention.shapes == [(1, lengths[0]), (2, 24)]
    head = model.get_output_embeddings()
    with torch.no_grad():
        packed = head(packed_hidden_states(model, batch))
        for number, example in enumerate(examples):
            alone = model(input_ids=torch.tensor([example.input_ids])).logits[0]
            torch.testing.assert_close(packed[batch.example_index == number], alone, atol=1e-5, rtol=0)


def test_the_matmul_attention_switch_picks_the_kernel_and_not_the_result(tiny_model_dir):
    from torch.profiler import profile

    model = load_model(tiny_model_dir)
    examples = random_examples(LENGTHS, model.config.vocab_size, seed=2)
    _, rows = packed_rows(examples)
    batch = collate_packed(rows)
    results, sdpa_calls = [], []
    for matmul in (True, False):
        with torch.no_grad(), profile() as trace:
            results.append(packed_hidden_states(model, batch, matmul_attention=matmul))
        sdpa_calls.append(sum("scaled_dot_product" in event.key for event in trace.events()))
    assert sdpa_calls[0] == 0 and sdpa_calls[1] > 0
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=0)


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
