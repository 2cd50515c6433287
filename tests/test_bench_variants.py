"""eval/bench_cpu_precision.py's variant names: what each runs and which RESULTS.md section it lands in."""
import pytest

from eval import bench_cpu_precision as bench


def test_variant_suffixes_add_their_override_and_unknown_names_are_refused():
    assert bench.variant_overrides("fp32 + channels_last, compiled") == [
        "trainer.precision=fp32", "trainer.channels_last=true", "trainer.compile=true"]
    assert bench.variant_overrides("fp32, malloc as-is")[-1] == "trainer.reuse_memory=false"
    assert bench.variant_overrides("bf16") == ["trainer.precision=bf16", "trainer.channels_last=false"]
    assert bench.variant_overrides("fp16, compiled") is None


@pytest.mark.parametrize("variant, key", [
    ("fp32 + channels_last, compiled", "cpu-precision-fashion-mnist-avx2-compile"),
    ("fp32, malloc as-is", "cpu-precision-fashion-mnist-avx2-malloc"),
    ("fp32 + channels_last", "cpu-precision-fashion-mnist-avx2")])
def test_a_comparison_of_compiled_or_malloc_variants_gets_a_section_of_its_own(monkeypatch, variant, key):
    caught = {}
    monkeypatch.setattr(bench, "table_section", lambda k, title, *a, **kw: caught.update({k: title}))
    row = {"method": "simclr", "batch_size": 256, "ms": 900.0, "speedup": 1.0, "speedup_min": 1.0, "speedup_max": 1.0}
    bench.render({"data": "fashion-mnist", "steps": 15, "repeats": 3, "threads": 2, "native_bf16": False,
                  "cpu_capability": "AVX2", "caps": {},
                  "rows": [dict(row, variant="fp32"), dict(row, variant=variant)]}, None)
    assert list(caught) == [key]
