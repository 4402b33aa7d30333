"""Training stage: DeepSpeed config, the Ray Train worker loop, and the driver."""

from rayft.train.ds_config import deepspeed_config
from rayft.train.run import TrainOutcome, make_trainer, run_training, storage_root

__all__ = ["TrainOutcome", "deepspeed_config", "make_trainer", "run_training", "storage_root"]
