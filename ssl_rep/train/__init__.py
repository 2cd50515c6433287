"""Training engine: configs, the loop, checkpoints, schedules, logs."""
from .checkpoint import CheckpointError, load_checkpoint, safe_load
from .config import Config, ConfigError, config_from_dict, config_to_dict, load_config
from .loop import DeviceMemoryError, NonFiniteLossError, TrainResult, train
from .memory import StepMemoryError
from .metrics import OutputError
from .schedule import lr_at

__all__ = ["CheckpointError", "Config", "ConfigError", "DeviceMemoryError", "NonFiniteLossError", "OutputError",
           "StepMemoryError", "TrainResult", "config_from_dict", "config_to_dict", "load_config", "load_checkpoint",
           "lr_at", "safe_load", "train"]
