"""Ray Train's fixed-size scaling without the autoscaling coordinator, for a Ray that rayft started itself.

Ray Train's fixed policy registers every run's resources with an ``AutoscalingCoordinator``: one more actor
process per Ray instance, which forwards the request to the cluster autoscaler. A local Ray that rayft starts for
a run or a sweep has no autoscaler, so the actor only costs its idle wake-ups (a Ray actor's task loop checks
for signals 100 times a second): about 0.3 % of a 2-core machine that training would otherwise have.
This module stays small: the Train controller unpickles the policy and imports it.
"""

from __future__ import annotations

from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy


class LocalScalingPolicy(FixedScalingPolicy):
    """:class:`FixedScalingPolicy` that never asks the autoscaling coordinator (so never starts it)."""

    def after_controller_start(self, train_run_context) -> None:
        self._requester_id = f"train-{train_run_context.run_id}"  # no client: cancelling is then a no-op

    def _maybe_send_resource_request(self) -> None:
        return None

    def _send_resource_request(self) -> None:
        return None
