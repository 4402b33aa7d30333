"""Online reinforcement learning on causal LMs: reward functions, rollouts on the decode engine, GRPO's loss.

The tasks that train with them (``grpo``) live in :mod:`rayft.tasks`; this package holds what they share.
"""
