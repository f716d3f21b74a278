from hone.data.render import render_chat, render_prompt
from hone.models import load_tokenizer


def test_only_assistant_tokens_are_trained(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "world"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "fox", "weight": 0},
        {"role": "user", "content": "last"},
        {"role": "assistant", "content": "dog"},
    ]
    rendered = render_chat(tokenizer, messages)
    trained_text = tokenizer.decode([t for t, m in zip(rendered.input_ids, rendered.trained, strict=True) if m])
    assert trained_text == "world<|im_end|>\ndog<|im_end|>\n"
    assert len(rendered.input_ids) == len(rendered.trained)


def test_prompt_ends_with_assistant_header(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    ids = render_prompt(tokenizer, [{"role": "user", "content": "hello"}])
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
