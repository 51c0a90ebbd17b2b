"""quantkit: quantize Hugging Face LLM checkpoints from declarative recipes.

Library first: everything the `quantkit` CLI does is a function here.

    import quantkit
    recipe = quantkit.load_recipe("recipes/smollm2-135m.yaml")
    artifacts = quantkit.quantize(recipe)
    quantkit.push("out/smollm2-135m-gguf", "oci://localhost:5000/models/smollm2:gguf", dry_run=True)
"""

from quantkit.artifact import Artifact
from quantkit.errors import QuantkitError, RecipeError
from quantkit.push import pull, push, verify
from quantkit.quantize import QuantizeFailed, plan, quantize
from quantkit.recipe import Recipe, recipe_json_schema
from quantkit.recipe_loader import load_recipe, parse_recipe

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "QuantizeFailed",
    "QuantkitError",
    "Recipe",
    "RecipeError",
    "load_recipe",
    "parse_recipe",
    "plan",
    "pull",
    "push",
    "quantize",
    "recipe_json_schema",
    "verify",
    "__version__",
]
