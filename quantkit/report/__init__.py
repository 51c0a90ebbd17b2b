"""The validation report: its model (`model`: what validate writes and push reads), and its renderings:
validation.md (`markdown`), validation.html (`html`), the model card's Evaluation part (`card`). Each check
adds its own tables and figures (quantkit.checks.base.Check, gathered by `sections`).

`model`, `plots` sit on a low floor (the checks import them); the renderers sit beside the checks. Nothing
is imported here, so importing the model never imports a renderer."""
