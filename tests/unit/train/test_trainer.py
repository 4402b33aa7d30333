"""The trainer a run hands Ray: the lean path beside Ray's stock one, the workers' loop config as Ray records it,
and one count of steps per epoch for the sweep and the workers."""

from __future__ import annotations

import pytest

from rayft.config import build_config
from tests.support import cls_config


def test_lean_trainer_leaves_out_ray_data_and_on_request_the_cleaner(tiny_bert, sentiment_csv, tmp_path):
    from ray.train.torch import TorchTrainer
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from rayft.ray_internals import DatasetsCallback, PlacementGroupCleanerCallback, lean_trainer_class
    from rayft.train.backend import WorkerTorchConfig
    from rayft.train.quiet import QuietRun
    from rayft.train.run import make_trainer
    from tests.support.benchmark_module import load

    cfg = build_config(cls_config(tiny_bert, sentiment_csv, tmp_path))

    def kinds(trainer):
        return [type(cb) for cb in trainer._create_default_callbacks()]

    lean = make_trainer(cfg, None, run_name="t", storage_path=str(tmp_path / "runs"))
    plain = load("stock_trainer").stock_trainer(lean)  # Ray's stock path, the benchmarks' baseline
    assert isinstance(lean, DataParallelTrainer) and DatasetsCallback not in kinds(lean)
    assert lean.backend_config == WorkerTorchConfig(backend="gloo")
    assert isinstance(plain, TorchTrainer) and DatasetsCallback in kinds(plain)
    assert plain.train_loop_config == lean.train_loop_config and plain.scaling_config == lean.scaling_config
    assert any(isinstance(cb, QuietRun) for cb in lean.run_config.callbacks) and not plain.run_config.callbacks
    # A run on a Ray of its own leaves out the placement-group cleaner too, and so do sweep trials (their hub
    # frees the placement group); `rayft train` on a cluster keeps it.
    private = make_trainer(cfg, None, run_name="t", storage_path=str(tmp_path / "runs"),
                           clean_up_placement_groups=False)
    assert PlacementGroupCleanerCallback in kinds(lean) and PlacementGroupCleanerCallback not in kinds(private)
    with_data = lean_trainer_class(TorchTrainer)(lambda: None, datasets={"train": [1]})
    assert DatasetsCallback in kinds(with_data)  # real Ray Datasets keep Ray Train's shard callback


@pytest.mark.parametrize("rows,world,batch,accum", [(1, 1, 8, 1), (160, 2, 8, 1), (161, 3, 7, 2), (50, 2, 64, 4)])
def test_one_count_of_steps_per_epoch_matches_the_workers_loaders(rows, world, batch, accum):
    """The sweep sizes ASHA's rungs from the rows alone; the workers count their loaders' batches: both agree."""
    from types import SimpleNamespace

    from torch.utils.data import DataLoader, DistributedSampler

    from rayft.train.steps import batches_per_epoch, steps_per_epoch, total_steps

    cfg = SimpleNamespace(scaling=SimpleNamespace(num_workers=world),
                          train=SimpleNamespace(batch_size=batch, grad_accum=accum, epochs=1.5, max_steps=0))
    loaders = [DataLoader(range(rows), batch_size=batch, sampler=DistributedSampler(range(rows), world, rank))
               for rank in range(world)]
    assert {len(loader) for loader in loaders} == {batches_per_epoch(cfg, rows)}
    per_epoch = steps_per_epoch(cfg, batches_per_epoch(cfg, rows))
    assert per_epoch == max(1, -(-batches_per_epoch(cfg, rows) // accum))
    assert total_steps(cfg, batches_per_epoch(cfg, rows)) == max(1, -(-3 * per_epoch // 2))  # 1.5 epochs
    cfg.train.max_steps = 7
    assert total_steps(cfg, batches_per_epoch(cfg, rows)) == 7


def test_the_workers_loop_config_reaches_ray_as_a_dict_of_its_fields(tiny_bert, sentiment_csv, tmp_path):
    from rayft.config import dump_config
    from rayft.train.handoff import LoopConfig
    from rayft.train.run import make_trainer

    cfg = build_config(cls_config(tiny_bert, sentiment_csv, tmp_path))
    trainer = make_trainer(cfg, "data-ref", run_name="t", storage_path=str(tmp_path / "runs"), label="trial_1",
                           trial_started_at=12.5, start_checkpoint="donor")
    assert isinstance(trainer.train_loop_config, dict)  # Ray records it as one
    loop = LoopConfig.parse(trainer.train_loop_config)
    assert loop == LoopConfig(dump_config(cfg), "data-ref", verbose=False, label="trial_1", trial_started_at=12.5,
                              start_checkpoint="donor")
    assert loop.method == cfg.method.name and LoopConfig.parse(loop) is loop
    with pytest.raises(TypeError):
        LoopConfig.parse({**loop.to_ray(), "unknown": 1})  # a driver and workers of different versions
