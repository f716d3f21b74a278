"""A reply's text decoded token by token: the same text as decoding the whole reply, multi-byte characters sent
only once complete, and stop strings cut out, also when they span tokens, without ever streaming part of one."""

from __future__ import annotations

import os
from pathlib import Path

import openai
import pytest
import torch
from conftest import serve_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hone.api.app import create_app
from hone.models import load_tokenizer
from hone.serve.config import ServeConfig
from hone.serve.detokenize import IncrementalDecoder, ReplyText

# accented letters, CJK and emoji (one with a skin-tone modifier): 2-, 3- and 4-byte UTF-8, split across tokens
MULTI_BYTE = ["naïve café déjà vu", "日本語のテキスト", "中文 标点，。", "🙂 🎉 👍🏽 emoji", "Ünïcödé ß ø"]
ALPHABET = "ab xyz.,\n" + "".join(sorted(set("".join(MULTI_BYTE))))
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """The bundled model's tokenizer, from the shared real-model cache (converted once for all tests)."""
    home = os.environ.get("HONE_E2E_HOME", str(Path.home() / ".cache" / "hone"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HONE_HOME", home)
        return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(params=["tiny", pytest.param("smollm2", marks=pytest.mark.real_model)])
def tokenizer(request):
    return request.getfixturevalue(f"{request.param}_tokenizer")


def sent_texts(tokenizer, ids: list[int], incremental: bool = True) -> list[str]:
    """What the decoder sends after each token, then what it flushes at the end."""
    decoder = IncrementalDecoder(tokenizer, incremental)
    return [decoder.add(token) for token in ids] + [decoder.flush()]


def token_ids(tokenizer, draw_pieces: list[int | str]) -> list[int]:
    """Token ids from a mix of raw ids and pieces of text (encoded without special tokens)."""
    ids = []
    for piece in draw_pieces:
        ids += [piece % len(tokenizer)] if isinstance(piece, int) else tokenizer.encode(piece, add_special_tokens=False)
    return ids


@SETTINGS
@given(pieces=st.lists(st.one_of(st.integers(0, 1 << 20), st.sampled_from(MULTI_BYTE), st.text(ALPHABET)),
                       max_size=12),
       incremental=st.booleans())
def test_sent_text_adds_up_to_the_whole_decode(tokenizer, pieces, incremental):
    ids = token_ids(tokenizer, pieces)
    assert "".join(sent_texts(tokenizer, ids, incremental)) == tokenizer.decode(ids, skip_special_tokens=True)


@SETTINGS
@given(text=st.text(ALPHABET, max_size=40) | st.sampled_from(MULTI_BYTE))
def test_a_character_split_across_tokens_is_sent_once_complete(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    sent = sent_texts(tokenizer, ids)
    assert "".join(sent) == tokenizer.decode(ids, skip_special_tokens=True)
    assert not any("\ufffd" in part for part in sent), "half a character was sent as U+FFFD"


def test_emoji_bytes_wait_for_the_last_byte(tiny_tokenizer):
    ids = tiny_tokenizer.encode("🙂", add_special_tokens=False)
    assert len(ids) > 1  # the tiny vocabulary has no emoji: one token per byte
    assert sent_texts(tiny_tokenizer, ids) == [""] * (len(ids) - 1) + ["🙂", ""]


def stream(tokenizer, ids: list[int], stops: tuple[str, ...]) -> tuple[list[str], bool, int]:
    """The texts a reply sends for `ids` under `stops`: per token until it stops, then at the end; whether a stop
    string was reached, and how many tokens were read."""
    reply = ReplyText(tokenizer, stops)
    sent = []
    for read, token in enumerate(ids, start=1):
        sent.append(reply.add(token))
        if reply.stopped:
            return sent, True, read
    sent.append(reply.finish())
    return sent, reply.stopped, len(ids)


@SETTINGS
@given(data=st.data(), text=st.text(ALPHABET, min_size=1, max_size=40))
def test_stop_strings_across_tokens_are_cut_and_never_sent(tokenizer, data, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    start = data.draw(st.integers(0, len(text) - 1))
    stops = (text[start:start + data.draw(st.integers(1, 4))], data.draw(st.text(ALPHABET, min_size=1, max_size=3)))
    sent, stopped, read = stream(tokenizer, ids, stops)
    whole = "".join(sent)
    full = tokenizer.decode(ids, skip_special_tokens=True)
    assert not any(stop in whole for stop in stops) and full.startswith(whole)
    if stopped:  # at the first token that completes a stop string, cut where the earliest one found begins
        before, seen = (tokenizer.decode(ids[:n], skip_special_tokens=True) for n in (read - 1, read))
        assert not any(stop in before for stop in stops)
        assert whole == seen[:min(seen.find(stop) for stop in stops if stop in seen)]
    else:
        assert whole == full


def test_text_that_may_begin_a_stop_string_waits_until_it_cannot(tiny_tokenizer):
    reply = ReplyText(tiny_tokenizer, ("END",))

    def send(text: str) -> str:
        return "".join(reply.add(token) for token in tiny_tokenizer.encode(text, add_special_tokens=False))

    assert send("the fox E") == "the fox "
    assert send("N") == ""
    assert send("Dx") == "" and reply.stopped  # "END" arrived: what it held back is never sent
    reply = ReplyText(tiny_tokenizer, ("END",))
    assert send("the E") == "the " and send("x") == "Ex"  # not a stop string after all: sent in full
    assert reply.finish() == ""


def test_the_end_of_a_reply_sends_what_was_held_back(tiny_tokenizer):
    reply = ReplyText(tiny_tokenizer, ("END",))
    sent = [reply.add(token) for token in tiny_tokenizer.encode("dog EN", add_special_tokens=False)]
    assert "".join(sent) == "dog " and reply.finish() == "EN" and not reply.stopped


# ---- over a real socket: streamed and whole replies of the server ----

@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    """The tiny model served on one thread, and every sequence its engine was handed."""
    threads = torch.get_num_threads()
    app = create_app(ServeConfig(base=str(tiny_model_dir), base_id="tiny", dtype="fp32", threads=1,
                                 database=f"sqlite:///{tmp_path_factory.mktemp('db') / 'hone.db'}"))
    engine = app.state.server.engine
    sequences = []
    submit = engine.submit
    engine.submit = lambda sequence: (sequences.append(sequence), submit(sequence))
    with serve_app(app) as url:
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0), sequences
    torch.set_num_threads(threads)


QUESTION = [{"role": "user", "content": "the quick brown fox 🙂 日本"}]


def streamed(sdk: openai.OpenAI, **request) -> tuple[list[str], str]:
    chunks = sdk.chat.completions.create(model="tiny", messages=QUESTION, temperature=0, stream=True,
                                         extra_body={"ignore_eos": True}, **request)
    deltas, finish = [], None
    for chunk in chunks:
        if chunk.choices:
            deltas.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    return deltas, finish


def test_streamed_and_whole_replies_are_the_decoded_tokens(served, tiny_tokenizer):
    sdk, sequences = served
    whole = sdk.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=48, temperature=0,
                                       extra_body={"ignore_eos": True})
    generated = sequences[-1].generated
    assert len(generated) == 48
    assert whole.choices[0].message.content == tiny_tokenizer.decode(generated, skip_special_tokens=True)
    deltas, finish = streamed(sdk, max_tokens=48)
    assert "".join(deltas) == whole.choices[0].message.content and finish == "length"


def test_a_stop_string_across_a_token_boundary_is_never_streamed(served, tiny_tokenizer):
    sdk, sequences = served
    sdk.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=24, temperature=0,
                                extra_body={"ignore_eos": True})
    ids = sequences[-1].generated
    full = tiny_tokenizer.decode(ids, skip_special_tokens=True)
    # a stop string of the last 2 characters of one token's text and the first 2 of the next one's
    ends = [len(tiny_tokenizer.decode(ids[:k], skip_special_tokens=True)) for k in range(1, len(ids))]
    boundary = next(end for end in ends if 2 <= end <= len(full) - 2 and "\ufffd" not in full[end - 2:end + 2])
    stop = full[boundary - 2:boundary + 2]
    expected = full[:full.find(stop)]

    deltas, finish = streamed(sdk, max_tokens=24, stop=[stop])
    assert finish == "stop" and "".join(deltas) == expected  # no delta held any part of the stop string
    whole = sdk.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=24, temperature=0, stop=[stop],
                                       extra_body={"ignore_eos": True})
    assert whole.choices[0].message.content == expected and whole.choices[0].finish_reason == "stop"
