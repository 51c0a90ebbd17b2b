"""Runs llama.cpp's `convert_hf_to_gguf.py` so that it cannot execute code from the model folder.

The converter calls `AutoTokenizer.from_pretrained(dir, trust_remote_code=True)` for some
architectures (Qwen, ChatGLM, InternLM, Hunyuan, ...), which imports any tokenizer module the folder
names in `auto_map`. Every such import goes through transformers' `get_class_from_dynamic_module`;
this launcher replaces it (in transformers and in every module that imported it by name) with a
refusal, unless quantkit was told the model is trusted (`model.trust_remote_code: true`, passed as
QUANTKIT_TRUST_REMOTE_CODE=1). Usage: python convert_guard.py CONVERTER [converter arguments...]
"""

from __future__ import annotations

import os
import runpy
import sys

REFUSAL_MARK = "quantkit refused to run code from the model folder"


def _refuse(class_reference, *args, **kwargs):
    raise SystemExit(f"{REFUSAL_MARK}: the converter asked transformers to import {class_reference!r} "
                     "(trust_remote_code=True inside llama.cpp's converter); set model.trust_remote_code: true "
                     "in the recipe only if you trust that code")


def _install() -> None:
    import importlib

    import transformers.dynamic_module_utils as dynamic

    dynamic.get_class_from_dynamic_module = _refuse
    for name in ("transformers.models.auto.auto_factory", "transformers.models.auto.tokenization_auto",
                 "transformers.models.auto.configuration_auto", "transformers.models.auto.processing_auto",
                 "transformers.models.auto.feature_extraction_auto", "transformers.models.auto.image_processing_auto"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "get_class_from_dynamic_module"):
            module.get_class_from_dynamic_module = _refuse
    for name, module in list(sys.modules.items()):  # any other transformers module that imported the name
        # vars(), not getattr(): transformers' lazy modules would import every model on attribute access
        if name.startswith("transformers.") and vars(module).get("get_class_from_dynamic_module") not in (None, _refuse):
            module.get_class_from_dynamic_module = _refuse


def main() -> None:
    converter, args = sys.argv[1], sys.argv[2:]
    if os.environ.get("QUANTKIT_TRUST_REMOTE_CODE") != "1":
        _install()
    sys.argv = [converter, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(converter)))
    runpy.run_path(converter, run_name="__main__")


if __name__ == "__main__":
    main()
