"""quantkit: quantize Hugging Face LLM checkpoints from declarative recipes.

Library first: everything the `quantkit` CLI does is a function here.

    import quantkit
    recipe = quantkit.load_recipe("recipes/smollm2-135m.yaml")
    artifacts = quantkit.quantize(recipe)
    quantkit.push("out/smollm2-135m-gguf", "oci://localhost:5000/models/smollm2:gguf", dry_run=True)

Public API (`__all__`; `help(quantkit.NAME)` documents each one):

Recipes
    load_recipe(path, overrides=())   read and check a recipe file (RecipeError names every problem)
    parse_recipe(text, source, overrides=())   the same for recipe text
    Recipe                            the checked recipe (a pydantic model)
    recipe_json_schema()              the recipe's JSON schema (docs/recipe.schema.json)

Quantizing
    plan(recipe, output_dir, only)    the jobs a run makes (each output of each cell, and where), without running it
    quantize(recipe, *, output_dir, only, force, reporter, ...)   write every output; returns the Artifacts
    QuantizeFailed                    raised when some outputs failed (the others were written)

Artifacts
    Artifact                          Artifact.load(folder) checks every file against quantkit.json

Publishing
    push(artifact, target, *, settings, options, dry_run)   to a Hugging Face repo or oci://HOST/NAME:TAG
    verify(source, *, key, digests_only)   a pushed artifact against its signed provenance attestation
    pull(ref, dest, *, force)         an OCI artifact back into a local folder, digests checked

Errors
    QuantkitError                     every error quantkit reports (exit_code: 2 bad input, 1 a failed run)
    RecipeError                       a recipe's problems, all of them

Validation and the serving check are modules: quantkit.validate (validate, validate_run) and
quantkit.serving.verb (run_serve_test). Names are imported on first use, so `import quantkit` (and the
CLI's start-up) stays fast.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_EXPORTS = {
    "Artifact": "quantkit.artifact",
    "QuantkitError": "quantkit.errors",
    "RecipeError": "quantkit.errors",
    "QuantizeFailed": "quantkit.quantize",
    "plan": "quantkit.jobs",
    "quantize": "quantkit.quantize",
    "Recipe": "quantkit.recipe",
    "recipe_json_schema": "quantkit.recipe",
    "load_recipe": "quantkit.recipe_loader",
    "parse_recipe": "quantkit.recipe_loader",
    "push": "quantkit.publish.verbs",
    "verify": "quantkit.publish.verbs",
    "pull": "quantkit.publish.verbs",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'quantkit' has no attribute {name!r}")


class _Facade(types.ModuleType):
    """`quantkit.quantize` is the function even after the module of the same name is imported: the import
    system binds a loaded submodule onto its package, which would hide the function behind it."""

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return  # the module stays reachable as sys.modules["quantkit.<name>"] and by `from ... import`
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Facade
