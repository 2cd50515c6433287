"""eval/bench_cpu_precision.py's variant names: what each runs and which RESULTS.md section it lands in."""
import pytest

from eval import bench_cpu_precision as bench


def test_variant_suffixes_add_their_override_and_unknown_names_are_refused():
    assert bench.variant_overrides("fp32 + channels_last, compiled") == [
        "trainer.precision=fp32", "trainer.channels_last=true", "trainer.compile=true"]
    assert bench.variant_overrides("fp32, malloc as-is")[-1] == "trainer.reuse_memory=false"
    assert bench.variant_overrides("bf16") == ["trainer.precision=bf16", "trainer.channels_last=false"]
    assert bench.variant_overrides("fp16, compiled") is None


CAPPED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


@pytest.mark.parametrize("variant, caps, key", [
    ("fp32 + channels_last, compiled", CAPPED, "cpu-precision-fashion-mnist-avx2-compile"),
    ("fp32, malloc as-is", CAPPED, "cpu-precision-fashion-mnist-avx2-malloc"),
    ("fp32 + channels_last", CAPPED, "cpu-precision-fashion-mnist-avx2"),
    ("fp32 + channels_last", {}, "cpu-precision-fashion-mnist-avx2-cpu"),   # a CPU that is itself AVX2-only
    ("fp32, malloc as-is", {}, "cpu-precision-fashion-mnist-avx2-cpu-malloc")])
def test_a_comparison_of_compiled_or_malloc_variants_gets_a_section_of_its_own(monkeypatch, variant, caps, key):
    caught = {}
    monkeypatch.setattr(bench, "table_section", lambda k, title, *a, **kw: caught.update({k: title}))
    row = {"method": "simclr", "batch_size": 256, "ms": 900.0, "speedup": 1.0, "speedup_min": 1.0, "speedup_max": 1.0}
    bench.render({"data": "fashion-mnist", "steps": 15, "repeats": 3, "threads": 2, "native_bf16": False,
                  "cpu_capability": "AVX2", "caps": caps,
                  "rows": [dict(row, variant="fp32"), dict(row, variant=variant)]}, None)
    assert list(caught) == [key]


def test_suite_timeline_records_a_tests_time_and_cpu_and_summarises_them(tmp_path, monkeypatch, capsys):
    """eval/suite_timeline.py: one JSON line per test with its wall and CPU time; the summary sets the heaviest
    first, beside the same test's time from another run."""
    import time

    from eval import suite_timeline

    path = tmp_path / "timeline.jsonl"
    monkeypatch.setenv("SUITE_TIMELINE", str(path))
    for test, work in (("t.py::light", 0.0), ("t.py::heavy", 0.3)):
        suite_timeline.pytest_runtest_logstart(test, None)
        end = time.process_time() + work
        while time.process_time() < end:   # CPU work, so the CPU column has something to read
            pass
        suite_timeline.pytest_runtest_logfinish(test, None)
    runs = suite_timeline.load(str(path))
    assert set(runs) == {"t.py::light", "t.py::heavy"}
    heavy = runs["t.py::heavy"]
    assert heavy["end"] - heavy["start"] >= 0.3 and heavy["cpu_s"] >= 0.25 and heavy["threads"] >= 1
    assert runs["t.py::light"]["cpu_s"] < 0.1
    suite_timeline.main([str(path), "--against", str(path), "--top", "1"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("2 tests") and out[2].endswith("t.py::heavy") and len(out) == 3
