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


def _typed(x: float, style: str) -> str:
    """``x`` written as a person might: 3e-4, 1E-05, .5, 5., 1_000.25."""
    if style == "e":
        mantissa, exponent = f"{x:.6e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"   # no dot when it can go: 3e-4
    if style == "E":
        return f"{x:.4E}"
    if style == "lead-dot" and x < 1:
        return repr(x)[1:] if repr(x).startswith("0.") else repr(x)
    if style == "trail-dot" and x.is_integer() and x < 1e15:
        return f"{int(x)}."
    if style == "underscore" and 1000 <= x < 1e15:
        whole, _, frac = f"{x:.3f}".partition(".")
        return f"{int(whole):_}.{frac}"
    return repr(x)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e-300, max_value=1e300, allow_nan=False, allow_infinity=False),
       st.sampled_from(["e", "E", "lead-dot", "trail-dot", "underscore", "repr"]))
def test_floats_typed_any_way_round_trip_in_overrides_and_files(tmp_path_factory, x, style):
    text = _typed(x, style)
    expected = float(text.replace("_", ""))
    assert load_config("simclr_digits", [f"optim.lr={text}"]).optim.lr == expected
    assert load_config("simclr_digits", [f"method.temperature={text}"]).method.options["temperature"] == expected
    recipe = tmp_path_factory.mktemp("recipe") / "r.yaml"
    recipe.write_text(f"optim:\n  lr: {text}\n  betas: [{text}, 0.999]\n")
    cfg = load_config(str(recipe))
    assert cfg.optim.lr == expected and cfg.optim.betas == (expected, 0.999)


def test_the_floats_people_type():
    for text, value in [("3e-4", 3e-4), ("1e-12", 1e-12), ("1E-5", 1e-5), (".5", 0.5), ("5.", 5.0), ("1_000", 1000.0)]:
        assert load_config("simclr_digits", [f"optim.lr={text}"]).optim.lr == value
    assert load_config("simclr_digits", ["trainer.max_steps=1e3"]).trainer.max_steps == 1000
    for bad in ("optim.lr=.inf", "optim.lr=nan", "optim.lr=1e", "trainer.max_steps=1.5e0"):
        try:
            load_config("simclr_digits", [bad])
        except ConfigError as exc:
            assert bad.split("=")[0] in str(exc)
        else:
            raise AssertionError(f"{bad} was accepted")
