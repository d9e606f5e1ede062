"""device_dtype: `dtype="auto"` picks bf16 where this device computes it natively and f32 where
bf16 matmuls would be emulated, from the real /proc/cpuinfo format (a file given in place of the
machine's), and pretraining, fine-tuning and inference all resolve it."""
from __future__ import annotations

import pytest

from bert_jax import device_dtype, family, loading
from bert_jax.configs import finetune as finetune_configs
from bert_jax.configs import pretrain as pretrain_configs

# Flag lines as /proc/cpuinfo writes them: an AVX-512 EPYC with bf16 and an AVX2-only EPYC.
AVX512_BF16 = ("fpu vme de pse tsc msr sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 "
               "avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16 avx512vnni")
AVX2_ONLY = "fpu vme de pse tsc msr sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2"


@pytest.fixture
def cpu_with(tmp_path, monkeypatch):
  """Points device_dtype at a cpuinfo file with the given flags line."""

  def make(flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n"
                    f"flags\t\t: {flags}\nbogomips\t: 4800.00\n\nprocessor\t: 1\n"
                    f"flags\t\t: {flags}\n")
    monkeypatch.setattr(device_dtype, "CPUINFO", str(path))
    device_dtype.cpu_flags.cache_clear()
    return path

  yield make
  device_dtype.cpu_flags.cache_clear()


def test_native_bf16_cpu_chooses_bf16(cpu_with):
  cpu_with(AVX512_BF16)
  assert "avx512_bf16" in device_dtype.cpu_flags()
  assert device_dtype.choose("cpu") == "bfloat16"
  assert "avx512_bf16" in device_dtype.describe("cpu")
  assert "-> bfloat16" in device_dtype.describe("cpu")


def test_avx2_only_cpu_chooses_f32(cpu_with):
  cpu_with(AVX2_ONLY)
  assert device_dtype.choose("cpu") == "float32"
  line = device_dtype.describe("cpu")
  assert "avx2" in line and "-> float32" in line and "emulated" in line


def test_amx_bf16_counts_and_no_cpuinfo_means_f32(cpu_with, monkeypatch, tmp_path):
  cpu_with(AVX2_ONLY + " amx_bf16 amx_tile")
  assert device_dtype.choose("cpu") == "bfloat16"
  monkeypatch.setattr(device_dtype, "CPUINFO", str(tmp_path / "absent"))
  device_dtype.cpu_flags.cache_clear()
  assert device_dtype.choose("cpu") == "float32"


def test_accelerators_choose_bf16_whatever_the_host_cpu(cpu_with):
  cpu_with(AVX2_ONLY)
  assert device_dtype.choose("tpu") == "bfloat16" and device_dtype.choose("gpu") == "bfloat16"
  assert device_dtype.resolve("float32", "tpu") == "float32"  # an explicit choice stays
  assert device_dtype.resolve(None) is None


@pytest.mark.parametrize("flags, want", [(AVX512_BF16, "bfloat16"), (AVX2_ONLY, "float32")])
def test_pretraining_finetuning_and_inference_resolve_auto(cpu_with, flags, want, minilm_dir):
  cpu_with(flags)
  for get_config, variant in ((pretrain_configs.get_config, "demo"),
                              (pretrain_configs.get_config, "modern_demo"),
                              (finetune_configs.get_config, "classification")):
    c = get_config(variant)
    assert c.model.dtype == "auto"
    assert family.model_config_from(c.model, 30522).dtype == want, variant
  model, _, _ = loading.load_pretrained(minilm_dir, "BertModel", dtype="auto")
  assert model.config.dtype == want
