"""The sweep-efficiency benchmark's bookkeeping: replaying evaluations to a target, random search's expected cost
over orders, the ratios and their medians per TPE start-up setting."""

from types import SimpleNamespace

import pytest

from tests.support.benchmark_module import load


@pytest.fixture(scope="module")
def bench():
    return load("sweep_efficiency")


def trial(tid, points, status="TERMINATED"):
    curve = [{"timestamp": t, "epoch": e, "eval_accuracy": a} for t, e, a in points]
    return SimpleNamespace(trial_id=tid, curve=curve, status=status, metrics=dict(curve[-1]), params={})


def test_replay_counts_every_trials_epochs_until_the_target_is_reached(bench):
    outcome = SimpleNamespace(seconds=30.0, trials=[
        trial("a", [(1.0, 0.5, 0.55), (3.0, 1.0, 0.60)]),
        trial("b", [(2.0, 0.5, 0.58), (4.0, 1.0, 0.70)]),  # hits 0.70 while a has trained 1 epoch
        trial("c", [(5.0, 0.5, 0.52)], status="STOPPED")])
    r = bench.replay(outcome, 0.70, started_at=0.0)
    assert r["to_target"] == {"trial_epochs": 2.0, "wall_s": 4.0}
    assert r["best_final_eval_accuracy"] == 0.70 and r["total_trial_epochs"] == 2.5 and r["stopped_early"] == 1


def test_expected_cost_over_orders(bench):
    # two trials reach 0.7 (at 1 and 2 epochs), two miss it after 2 epochs each: each miss comes first with
    # probability 1/3, the first hit is either one alike
    curves = [[(1.0, 0.7)], [(1.0, 0.6), (2.0, 0.75)], [(2.0, 0.5)], [(2.0, 0.6)]]
    assert bench.expected_random_cost(curves, 0.7) == {"trials_reaching_target": 2,
                                                       "expected_trial_epochs": round(4.0 / 3 + 1.5, 3)}
    assert bench.expected_random_cost(curves, 0.9)["expected_trial_epochs"] is None


def test_ratios_and_medians_per_seed(bench):
    random = {"to_target": {"trial_epochs": 10.0, "wall_s": 100.0}, "any_order": {"expected_trial_epochs": 20.0}}
    fast = bench.ratios({"to_target": {"trial_epochs": 3.0, "wall_s": 50.0}}, random)
    assert fast == {"trial_epochs_ratio": 0.3, "wall_ratio": 0.5, "trial_epochs_ratio_any_order": 0.15}
    never = bench.ratios({"to_target": None}, random)
    assert never == {"trial_epochs_ratio": None, "wall_ratio": None, "trial_epochs_ratio_any_order": None}
    slow = bench.ratios({"to_target": {"trial_epochs": 12.0, "wall_s": 90.0}}, random)
    m = bench.medians([fast, never, slow])  # a seed that never reached the target counts as infinitely slow
    assert m["trial_epochs_ratio_median"] == 1.2 and m["trial_epochs_ratios"] == [0.3, None, 1.2]
    assert bench.medians([never, never, fast])["trial_epochs_ratio_median"] is None


def test_the_stock_baseline_swaps_the_sweeps_trial_function_only_inside_its_block():
    from rayft.sweep import run as sweep_run

    stock = load("stock_trainer")
    lean = sweep_run.rayft_trial
    with stock.stock_sweep():
        assert sweep_run.rayft_trial is stock.stock_trial
    assert sweep_run.rayft_trial is lean
