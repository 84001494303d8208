"""The theoretical peak that MFU divides by: the CPU arithmetic on injected /proc/cpuinfo texts, the GPU table,
unknown devices, summing over devices, and how the curriculum chooses between it and `peak_flops`."""

from __future__ import annotations

import dataclasses

import pytest

from experiments.configs import test as test_config
from sage_jax.train.curriculum.parse import curriculum_from_dict
from sage_jax.train.curriculum.stages import _peak_flops
from sage_jax.train.peak import cpu_peak, cpu_peak_from, devices_peak_flops, gpu_peak, theoretical_peak_flops

AVX2_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz
cpu MHz\t\t: 1200.000
siblings\t: 28
cpu cores\t: 14
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: a second processor, never read
"""

# This machine's first processor (AMD EPYC, Zen 5, in a VM: no cpufreq, no rated clock in the model name).
AVX512_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model name\t: AMD EPYC
cpu MHz\t\t: 2596.122
siblings\t: 2
cpu cores\t: 2
flags\t\t: fpu sse sse2 fma avx avx2 avx512f avx512dq avx512bw avx512vl
"""

ZEN4_CPUINFO = AVX512_CPUINFO.replace("cpu family\t: 26", "cpu family\t: 25")
ARM_CPUINFO = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes sve\nCPU implementer\t: 0x41\n"


@dataclasses.dataclass(frozen=True)
class FakeDevice:
    platform: str
    device_kind: str


def test_avx2_peak_is_cores_times_rated_clock_times_32():
    peak = cpu_peak_from(AVX2_CPUINFO, None, usable_cpus=8)
    # 8 hardware threads at 2 per core: 4 cores; the model name's 2.40 GHz, not the current 1.2 GHz.
    assert peak.flops == pytest.approx(4 * 2.4e9 * 32)
    assert peak.derivation.startswith("4 cores (8 usable hardware threads, 2 per core) x 2.40 GHz (the model "
                                      "name's rated clock) x 32 FP32 FLOP/cycle (AVX2: 2 FMA units x 8 lanes x 2")
    assert cpu_peak_from(AVX2_CPUINFO, "3300000\n", usable_cpus=8).flops == pytest.approx(4 * 3.3e9 * 32)
    assert cpu_peak_from(AVX2_CPUINFO, None, 8, "float64").flops == pytest.approx(4 * 2.4e9 * 16)


def test_avx512_peak_falls_back_on_the_current_clock_and_says_so():
    peak = cpu_peak_from(AVX512_CPUINFO, None, usable_cpus=2)
    assert peak.flops == pytest.approx(2 * 2.596122e9 * 64)
    assert peak.derivation == ("2 cores x 2.60 GHz (cpu MHz in /proc/cpuinfo: the current clock, no maximum "
                               "published) x 64 FP32 FLOP/cycle (AVX-512: 2 FMA units x 16 lanes x 2; the unit "
                               "count is assumed) = 332 GFLOP/s")
    fp64 = cpu_peak_from(AVX512_CPUINFO, None, 2, "float64")
    assert fp64.flops == pytest.approx(peak.flops / 2) and "32 FP64 FLOP/cycle" in fp64.derivation
    assert cpu_peak_from(ZEN4_CPUINFO, None, 2).flops == pytest.approx(2 * 2.596122e9 * 32)


def test_cpu_peak_reads_the_files_it_is_given(tmp_path):
    cpuinfo, max_freq = tmp_path / "cpuinfo", tmp_path / "cpuinfo_max_freq"
    cpuinfo.write_text(AVX2_CPUINFO)
    absent = cpu_peak(cpuinfo_path=str(cpuinfo), max_freq_path=str(tmp_path / "absent"))
    assert "rated clock" in absent.derivation
    max_freq.write_text("3300000\n")
    assert "3.30 GHz (cpuinfo_max_freq)" in cpu_peak(cpuinfo_path=str(cpuinfo),
                                                     max_freq_path=str(max_freq)).derivation
    assert cpu_peak(cpuinfo_path=str(tmp_path / "absent")).flops is None


def test_unknown_cpus_and_dtypes_give_no_peak_and_say_why():
    arm = cpu_peak_from(ARM_CPUINFO, None, 4)
    assert arm.flops is None and "vector ISA flags" in arm.derivation and "set peak_flops" in arm.derivation
    no_clock = cpu_peak_from(AVX512_CPUINFO.replace("cpu MHz\t\t: 2596.122\n", ""), None, 2)
    assert no_clock.flops is None and "clock frequency" in no_clock.derivation
    bf16 = cpu_peak_from(AVX512_CPUINFO, None, 2, "bfloat16")
    assert bf16.flops is None and "bfloat16" in bf16.derivation
    with pytest.raises(ValueError, match="no peak for dtype 'int8'"):
        cpu_peak_from(AVX512_CPUINFO, None, 2, "int8")


@pytest.mark.parametrize("kind, dtype, precision, tflops", [
    ("NVIDIA H200", "float32", None, 494.7),  # float32 matmuls run as TF32 at JAX's default precision
    ("NVIDIA H200", "float32", "highest", 67),
    ("NVIDIA H100 80GB HBM3", "bfloat16", None, 989.4),
    ("NVIDIA H100 PCIe", "bfloat16", None, 756),
    ("NVIDIA A100-SXM4-40GB", "float32", "float32", 19.5),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", None, 312),
])
def test_gpu_peaks_are_the_documented_dense_ones(kind, dtype, precision, tflops):
    peak = gpu_peak(kind, dtype, precision)
    assert peak.flops == pytest.approx(tflops * 1e12) and "dense" in peak.derivation


def test_unknown_gpus_give_no_peak_and_say_why():
    unknown = gpu_peak("Tesla T4")
    assert unknown.flops is None and "'Tesla T4'" in unknown.derivation and "set peak_flops" in unknown.derivation
    assert gpu_peak("NVIDIA H100 NVL").flops is None  # a different part from the SXM: not guessed
    assert "no documented float64 peak for NVIDIA L4" in gpu_peak("NVIDIA L4", "float64").derivation
    tpu = theoretical_peak_flops(FakeDevice("tpu", "TPU v4"))
    assert tpu.flops is None and "'TPU v4'" in tpu.derivation


def test_devices_sum_but_a_host_counts_once():
    a100 = FakeDevice("gpu", "NVIDIA A100-SXM4-40GB")
    both = devices_peak_flops([a100, a100], "bfloat16")
    assert both.flops == pytest.approx(2 * 312e12) and both.derivation.startswith("2 x NVIDIA A100")
    assert devices_peak_flops([a100, FakeDevice("gpu", "Tesla T4")], "bfloat16").flops is None
    cpu = FakeDevice("cpu", "cpu")
    assert devices_peak_flops([cpu] * 4) == theoretical_peak_flops(cpu)


def test_the_curriculum_uses_peak_flops_as_an_override_of_the_theoretical_peak(tmp_path):
    config = test_config.get_config()
    config.workdir = str(tmp_path)
    cfg = curriculum_from_dict(config.to_dict())
    assert cfg.peak_flops is None and cfg.measured_gemm_flops == 1.9e11
    assert _peak_flops(cfg, None) == theoretical_peak_flops(dtype=cfg.model.dtype).flops
    assert _peak_flops(dataclasses.replace(cfg, peak_flops=3e11), None) == 3e11
    for name in ("peak_flops", "measured_gemm_flops"):
        with pytest.raises(ValueError, match=f"CurriculumConfig.{name} must be a positive FLOP/s or None"):
            dataclasses.replace(cfg, **{name: 0.0})
