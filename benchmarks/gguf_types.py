"""GGUF types on the embedded SmolLM2-135M: size, bits per weight, quantization time, perplexity
and KL divergence against the float model, with and without the calibration imatrix.

Everything goes through llama.cpp's own tools (the pinned toolchain): the reference logits
come from the F32 conversion of the float checkpoint, the held-out text from the built-in
`holdout` splits (never used for calibration), the imatrix from `builtin:mixed` train.

    python benchmarks/gguf_types.py                       # 64 x 256 calibration, 24 x 512 eval
    python benchmarks/gguf_types.py --types Q8_0 Q4_K_M --eval-chunks 8

Note: SmolLM2's float weights are a dequantized Q4_1, and its 576-wide tensors fall back
from K-quants; absolute figures are specific to this model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from quantkit.engines.base import EngineJob
from quantkit.engines.gguf import compute_imatrix, quantize_type
from quantkit.progress import NullReporter
from quantkit.recipe import CalibrationSpec, GGUFOutput, ModelSpec
from quantkit.sources.calibration import build_calibration, builtin_holdout_text
from quantkit.sources.models import load_tokenizer, resolve_model
from quantkit.toolchains.llamacpp import converted_base
from quantkit.toolchains.llamacpp_build import build_toolchain

DEFAULT_TYPES = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_K_S", "Q3_K_M", "IQ4_XS", "Q4_0"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", nargs="+", default=DEFAULT_TYPES)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-ctx", type=int, default=512)
    ap.add_argument("--eval-chunks", type=int, default=24)
    args = ap.parse_args()

    rep = NullReporter()
    t0 = time.perf_counter()
    tc = build_toolchain(rep)
    print(
        f"toolchain: {tc.version} (build {tc.info.get('build_seconds')} s when it was built; "
        f"ready in {time.perf_counter() - t0:.1f} s)"
    )
    model = resolve_model(ModelSpec(source="smollm2-135m"))
    cal = build_calibration(CalibrationSpec(num_samples=args.samples, seq_len=args.seq_len), load_tokenizer(model))

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        timings = {}
        for base_type in ("F32", "F16"):
            t0 = time.perf_counter()
            converted_base(tc, model, base_type, rep)
            timings[base_type] = time.perf_counter() - t0
        f32 = converted_base(tc, model, "F32", rep)
        f16 = converted_base(tc, model, "F16", rep)
        print(f"conversion (cached after the first run): F32 {timings['F32']:.1f} s, F16 {timings['F16']:.1f} s")

        t0 = time.perf_counter()
        imatrix = tmp / "imatrix.gguf"
        job = EngineJob(None, None, model, cal, tmp, rep)
        compute_imatrix(tc, f16, job, imatrix)
        print(f"imatrix: {len(cal.input_ids)} x {args.seq_len} calibration tokens in {time.perf_counter() - t0:.1f} s")

        text = tmp / "holdout.txt"
        text.write_text(builtin_holdout_text(args.eval_ctx * args.eval_chunks * 6))
        logits = tmp / "f32.logits"
        ref = tc.perplexity(f32, text, ctx=args.eval_ctx, chunks=args.eval_chunks, save_logits=logits)
        f16_kld = tc.kl_divergence(f16, logits, ctx=args.eval_ctx, chunks=args.eval_chunks)
        print(
            f"held-out eval: {args.eval_chunks} x {args.eval_ctx} tokens; float (F32) ppl {ref['ppl']:.3f}; "
            f"F16 ppl {f16_kld['ppl']:.3f} mean KLD {f16_kld['mean_kld']:.5f}"
        )

        rows = []
        for qtype in args.types:
            for use_imatrix in (False, True):
                out = GGUFOutput(method="gguf", types=[qtype], imatrix=use_imatrix)
                target = tmp / f"{qtype}-{use_imatrix}.gguf"
                t0 = time.perf_counter()
                info = quantize_type(tc, f16, target, qtype, out, imatrix if use_imatrix else None)
                seconds = time.perf_counter() - t0
                kld = tc.kl_divergence(target, logits, ctx=args.eval_ctx, chunks=args.eval_chunks)
                rows.append(
                    {
                        "type": qtype,
                        "imatrix": use_imatrix,
                        "mb": info["bytes"] / 1e6,
                        "bpw": info["bpw"],
                        "seconds": round(seconds, 2),
                        "fallback": info["fallback_tensors"],
                        **kld,
                    }
                )
                target.unlink()

    print(
        f"\n{'type':8s} {'imatrix':7s} {'MB':>7s} {'BPW':>6s} {'quant s':>7s} {'ppl':>8s} {'mean KLD':>9s} "
        f"{'p99 KLD':>8s} {'top-1 %':>7s}  fallback"
    )
    for r in rows:
        print(
            f"{r['type']:8s} {'yes' if r['imatrix'] else 'no':7s} {r['mb']:7.1f} {r['bpw'] or 0:6.2f} {r['seconds']:7.2f} "
            f"{r['ppl']:8.3f} {r['mean_kld']:9.5f} {r['p99_kld']:8.4f} {r['same_top_p']:7.2f}  {r['fallback'] or '-'}"
        )
    print(json.dumps({"float_ppl": ref["ppl"], "rows": rows}))


if __name__ == "__main__":
    main()
