"""Reward functions for the RL tests (named ``tests.support.rewards:<name>`` in configs), TRL's signature."""

from __future__ import annotations

TARGET = "paris"


def target_word(prompts, completions, **columns):
    """The share of a completion's words that are the target word: rises as the policy learns to say it."""
    return [sum(w == TARGET for w in c.split()) / max(len(c.split()), 1) for c in completions]


def says_answer(prompts, completions, answer, **columns):
    """1 when the completion contains the row's ``answer`` column (a reward that reads another column)."""
    return [float(str(a) in c) for c, a in zip(completions, answer)]


def raises(prompts, completions, **columns):
    raise RuntimeError("this reward is broken")


def wrong_shape(prompts, completions, **columns):
    return [0.0] * (len(completions) + 1)


def not_numbers(prompts, completions, **columns):
    return ["good"] * len(completions)


def text_length(prompts, completions, **columns):
    """Characters per completion, scaled: differs between samples of any model, so every group has an advantage."""
    return [len(c) / 100 for c in completions]
