"""Property-based: any override string gives a valid config or one clear ConfigError, never a traceback."""
from hypothesis import given, settings
from hypothesis import strategies as st

from ssl_rep.train import ConfigError, load_config
from ssl_rep.train.config import valid_keys

KEYS = st.sampled_from(valid_keys() + ["method.temperature", "encoder.shortcut", "optim.lrr", "a.b.c", ""])
VALUES = st.one_of(st.text(max_size=20), st.integers().map(str), st.floats(allow_nan=True).map(str),
                   st.sampled_from(["true", "off", "null", "[1, 2]", "{a: 1}", "- x", "'", "!!python/object:os.system"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=30), st.builds(lambda k, v: f"{k}={v}", KEYS, VALUES)), max_size=4))
def test_any_override_gives_a_config_or_a_config_error(overrides):
    try:
        cfg = load_config("simclr_digits", overrides)
    except ConfigError as exc:
        assert str(exc)
    else:
        assert cfg.data.batch_size > 0 and cfg.optim.lr > 0
