"""The interface every format implements, and the deployable target it yields."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar

from quantkit.files import human_bytes
from quantkit.formats.tensors import BaseTensor, CheckpointTensor, TensorMap

if TYPE_CHECKING:  # the manifest is read by attribute only (quantkit.artifact sits on a higher floor)
    from typing import Any as Manifest


@dataclass(frozen=True)
class Target:
    """One deployable model in an artifact: a compressed-tensors folder, or one GGUF file."""

    name: str  # "ARTIFACT" or "ARTIFACT/TYPE"
    path: Path
    format: str
    method: str
    scheme: str  # compressed-tensors scheme, or the GGUF type
    bytes: int
    bits: int | None = None  # nominal bits: the precision class its default gates come from


class Format:
    """One artifact format. Register an instance's class in `quantkit.formats.FORMATS`."""

    name: ClassVar[str]
    runtimes: ClassVar[tuple[str, ...]]  # runtimes (quantkit.runtimes) that score it; the first is the default
    vllm_quantization: ClassVar[str | None]  # the quantization method vLLM must report when it serves the artifact
    # why `validate` does not serve it in vLLM unless --serve asks (None: served whenever vLLM is there)
    serve_only_when_asked: ClassVar[str | None] = None
    lm_eval_unsupported: ClassVar[str | None] = None  # why lm-eval cannot score it (None: it can)
    transformers_reference: ClassVar[bool] = True  # transformers runs what vLLM runs (a greedy reference)
    library_name: ClassVar[str]  # the model card's `library_name`
    tags: ClassVar[tuple[str, ...]]  # the card's format tags
    oci_format: ClassVar[str]  # ModelPack config `format`
    several_models: ClassVar[bool] = False  # each target is a whole model (sizes and ratios are per target)

    @property
    def default_runtime(self) -> str:
        return self.runtimes[0]

    # ---------------------------------------------------------------- what an artifact holds

    def targets(self, manifest: "Manifest", folder: Path) -> list[Target]:
        return [Target(manifest.name, folder, manifest.format, manifest.method, manifest.scheme, manifest.size_bytes,
                       self.nominal_bits(manifest.scheme, manifest.output.get("bits")))]

    def manifest_problems(self, manifest: "Manifest") -> list[str]:
        """Fields of a manifest of this format that contradict each other."""
        return []

    def file_role(self, rel: str) -> str | None:
        """The OCI layer role of a file this format defines beyond weights, docs and configs (None: the
        generic rule decides)."""
        return None

    def nominal_bits(self, scheme: str, bits: int | None = None) -> int:
        raise NotImplementedError

    def kernel_class(self, quantization_config: dict) -> str | None:
        """The kernel class vLLM needs for a checkpoint of this format (W4A16, W8A8, FP8: quantkit.serving.support),
        from its config's `quantization_config`; None when quantkit has no rule for it (vLLM's own start decides)."""
        return None

    # ---------------------------------------------------------------- its tensors against the base's

    def artifact_tensors(self, target: Target) -> list[CheckpointTensor]:
        """Every tensor one target holds, from the headers (no tensor data read)."""
        raise NotImplementedError

    def map_tensors(self, base: list[BaseTensor], tensors: list[CheckpointTensor], output) -> TensorMap:
        """Each of `base` as `tensors` (one target's) hold it: quantized, kept in float (and by which rule), or a
        problem naming it; a tensor of `tensors` that no base tensor accounts for is a problem too. `output`:
        the recipe output that made it (quantkit.coverage accounts for tied and dropped tensors itself)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- how it is shown

    def size_lines(self, manifest: "Manifest", targets: list[Target]) -> list[str]:
        """`quantkit inspect`'s size lines."""
        float_bytes = manifest.base_model.weight_bytes
        if manifest.compression_ratio:
            return [f"size {human_bytes(manifest.size_bytes)} ({manifest.compression_ratio:.2f}x smaller than the "
                    f"float base, {human_bytes(float_bytes)})"]
        return [f"size {human_bytes(manifest.size_bytes)}"]

    def ratio_text(self, manifest: "Manifest", targets: list[Target]) -> str:
        """The compression column of `quantkit quantize`'s table."""
        return f"{manifest.compression_ratio:.2f}x" if manifest.compression_ratio else "-"

    def card_files(self, manifest: "Manifest", targets: list[Target], mean_kld: Callable[[str], float | None]) -> list[str]:
        """The model card's Files section."""
        out = ["## Files", "", "| file | size |", "|---|---:|"]
        out += [f"| `{rel}` | {human_bytes(rec.bytes)} |" for rel, rec in sorted(manifest.files.items())]
        ratio = f"; {manifest.compression_ratio}× smaller than the float base" if manifest.compression_ratio else ""
        return out + ["", f"Total {human_bytes(manifest.size_bytes)}{ratio}.", ""]

    def card_tags(self, targets: list[Target], scheme: str) -> list[str]:
        schemes = [t.scheme for t in targets] if self.several_models else [scheme]
        return [*self.tags, *(s.lower() for s in schemes)]

    def run_snippets(self, targets: list[Target], where: str, pulled: bool) -> list[str]:
        """The card's "How to run" commands; `pulled`: `where` is a local folder `quantkit pull` made."""
        raise NotImplementedError

    def toolchain(self, manifest: "Manifest") -> tuple[str, str] | None:
        """(tool, version) of a tool outside the Python libraries that made the artifact, for the card."""
        return None
