"""Runtimes are keyed by (format, runtime): a second runtime for a format is one class and one registry
line, chosen with `validate(..., runtime=NAME)` / `quantkit validate --runtime NAME`; the format names
its default. Done here with a throwaway runtime for compressed-tensors (docs/architecture.md, "Add a
runtime": the files this touched are listed there)."""

import pytest
from conftest import tiny_recipe_text

import quantkit
from quantkit.errors import ArtifactError
from quantkit.runtimes import RUNTIMES, runtime_for
from quantkit.runtimes.transformers import TransformersRuntime
from quantkit.validate import validate

pytestmark = pytest.mark.integration


class FloatScoringRuntime(TransformersRuntime):
    """A second compressed-tensors runtime: transformers again under another name, so its scores must
    equal the default runtime's on the same windows."""

    name = "transformers-again"


@pytest.fixture(scope="module")
def fp8_artifact(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("runtime")
    recipe = quantkit.parse_recipe(tiny_recipe_text(tiny_model, out / "out", "  - {method: fp8, name: f}\n"))
    [art] = quantkit.quantize(recipe)
    return art.path


def test_a_second_runtime_for_a_format_is_one_registry_line(fp8_artifact, monkeypatch):
    monkeypatch.setitem(RUNTIMES, ("compressed-tensors", FloatScoringRuntime.name),
                        f"{__name__}:{FloatScoringRuntime.__name__}")
    default = validate(fp8_artifact, max_tokens=64, context=64, write=False)
    again = validate(fp8_artifact, max_tokens=64, context=64, write=False, runtime=FloatScoringRuntime.name)
    assert [t.runtime for t in default.targets] == ["transformers"]  # the format's default
    assert [t.runtime for t in again.targets] == ["transformers-again"]
    for d, a in zip(default.targets[0].domains, again.targets[0].domains):
        assert a.kld_mean == pytest.approx(d.kld_mean, abs=1e-9) and a.ppl == pytest.approx(d.ppl, rel=1e-9)


def test_a_runtime_that_does_not_score_the_format_is_refused_naming_the_ones_that_do(fp8_artifact):
    with pytest.raises(ArtifactError, match="runtime 'llama.cpp' does not score format 'compressed-tensors'; "
                                            "runtimes for it: transformers"):
        validate(fp8_artifact, max_tokens=64, context=64, write=False, runtime="llama.cpp")
    with pytest.raises(ArtifactError, match="no runtime evaluates format 'safetensors'"):
        runtime_for("safetensors")
