"""Sampling parameters, their checks (each error names its field), token choice and stop-string streaming."""

from __future__ import annotations

import math

import pytest
import torch

from rayft.errors import RayftError
from rayft.generate import EngineConfig, RequestError, SamplingParams, check_request
from rayft.generate.sampling import TextStream, make_generator, next_token


@pytest.mark.parametrize("field, value, expected", [
    ("max_tokens", 0, ">= 1"), ("max_tokens", -3, ">= 1"), ("max_tokens", True, ">= 1"), ("max_tokens", 2.5, ">= 1"),
    ("temperature", -0.1, ">= 0"), ("temperature", math.nan, ">= 0"), ("temperature", "hot", ">= 0"),
    ("top_p", 0.0, "(0, 1]"), ("top_p", 1.5, "(0, 1]"), ("top_p", -1, "(0, 1]"),
    ("top_k", -1, ">= 0"), ("n", 0, ">= 1"), ("seed", "7", "integer or None"),
    ("stop", ("",), "non-empty"), ("stop", tuple("abcdefghi"), "at most 8"),
])
def test_each_bad_field_is_named_with_its_value_and_what_was_expected(field, value, expected):
    with pytest.raises(RequestError) as info:
        SamplingParams(**{field: value})
    error = info.value
    assert isinstance(error, RayftError)
    assert (error.field, error.code) == (field, "invalid_value")
    assert str(error).startswith(f"{field}: ") and expected in str(error) and repr(value)[:10] in str(error)


def test_defaults_and_a_single_stop_string():
    params = SamplingParams(stop="###", temperature=0)
    assert params.stop == ("###",) and params.greedy and params.n == 1
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    with pytest.raises(AttributeError):
        params.n = 2  # frozen: it crosses threads and processes as is


def test_checks_against_the_model_context_and_the_engine_limit():
    check_request(SamplingParams(max_tokens=100), prompt_tokens=200, context=256, max_n=4)  # clipped, not refused
    with pytest.raises(RequestError, match=r"prompt: .*context of 256.*got '300 tokens'") as long:
        check_request(SamplingParams(), prompt_tokens=300, context=256, max_n=4)
    assert long.value.code == "context_length_exceeded"
    with pytest.raises(RequestError, match="prompt: .*got '256 tokens'"):
        check_request(SamplingParams(), prompt_tokens=256, context=256, max_n=4)
    with pytest.raises(RequestError, match=r"max_tokens: at most the model's context of 256 tokens \(got 257\)"):
        check_request(SamplingParams(max_tokens=257), prompt_tokens=3, context=256, max_n=4)
    with pytest.raises(RequestError, match=r"n: at most 2 .*\(got 3\)"):
        check_request(SamplingParams(n=3), prompt_tokens=3, context=256, max_n=2)
    with pytest.raises(RequestError, match="prompt: at least one token"):
        check_request(SamplingParams(), prompt_tokens=0, context=256, max_n=2)


@pytest.mark.parametrize("kwargs, field", [
    ({"max_running": 0}, "max_running"), ({"step_tokens": 16, "max_running": 16}, "step_tokens"),
    ({"max_n": 8, "max_running": 4}, "max_n"), ({"max_queued": 0}, "max_queued"),
])
def test_engine_limits_are_checked(kwargs, field):
    with pytest.raises(RequestError) as info:
        EngineConfig(**kwargs)
    assert info.value.field == field


def test_greedy_topk_and_topp_choices():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert next_token(logits, SamplingParams(temperature=0), None) == 1
    for params in (SamplingParams(top_k=1, seed=0), SamplingParams(top_p=0.01, seed=0)):
        gen = make_generator(params, 0)
        assert {next_token(logits, params, gen) for _ in range(20)} == {1}
    top2 = SamplingParams(top_k=2, temperature=2.0, seed=0)
    gen = make_generator(top2, 0)
    assert {next_token(logits, top2, gen) for _ in range(200)} == {1, 2}
    nucleus = SamplingParams(top_p=0.6, seed=0)  # token 1 alone holds ~0.5: the head needs token 2 as well
    gen = make_generator(nucleus, 0)
    assert {next_token(logits, nucleus, gen) for _ in range(200)} == {1, 2}


def test_seeded_choices_repeat_and_differ_from_each_other():
    params = SamplingParams(seed=11, temperature=1.0)
    logits = torch.zeros(50)

    def draw(index: int) -> list[int]:
        gen = make_generator(params, index)
        return [next_token(logits, params, gen) for _ in range(10)]

    assert draw(0) == draw(0) and draw(0) != draw(1)
    assert make_generator(SamplingParams(temperature=0), 0) is None


class Chars:
    """A tokenizer whose tokens are strings (ids index into ``pieces``)."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.pieces[i] for i in ids)


def test_a_stop_string_across_tokens_is_never_released():
    tok = Chars(["Hel", "lo ", "wor", "ld", "EN", "D!", " more"])
    stream = TextStream(tok, ("END",))
    released = [stream.push(i) for i in range(5)]  # ... "ld" "EN": "END" may be starting, hold "EN" back
    assert "".join(released) == "Hello world" and not stream.stopped
    assert stream.push(5) == "" and stream.stopped  # "D!" completes the stop: none of it comes out
    assert stream.text == "Hello world" and stream.flush() == ""


def test_held_back_text_is_flushed_when_the_choice_ends_otherwise():
    stream = TextStream(Chars(["ab", "c", "\ufffd"]), ("xyz",))
    assert stream.push(0) == "" and stream.push(1) == "a"  # two characters held for a possible "xyz"
    assert stream.push(2) == ""  # half a character: wait
    assert stream.flush() == "bc\ufffd"
    plain = TextStream(Chars(["ab", "c"]), ())
    assert plain.push(0) + plain.push(1) == "abc"
