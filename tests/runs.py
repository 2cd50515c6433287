"""Training runs the tests share."""
import torch

from ssl_rep.train import load_config, train


def straight_and_resumed(config: str, overrides: list[str], tmp_path, stop: int, total: int):
    """Train ``total`` steps in one go (``tmp_path/a``), and ``stop`` steps then ``--resume`` to ``total``
    (``tmp_path/b``). Returns the straight run's result and whether both end with identical encoder weights."""
    straight = train(load_config(config, [*overrides, f"trainer.max_steps={total}", f"out_dir={tmp_path / 'a'}"]),
                     progress=False)
    train(load_config(config, [*overrides, f"trainer.max_steps={stop}", f"out_dir={tmp_path / 'b'}"]), progress=False)
    train(load_config(config, [*overrides, f"trainer.max_steps={total}", f"out_dir={tmp_path / 'b'}"]), resume=True,
          progress=False)
    a = torch.load(tmp_path / "a" / "encoder.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "encoder.pt", weights_only=True)["state_dict"]
    return straight, all(torch.equal(a[k], b[k]) for k in a)
