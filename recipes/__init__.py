"""The recipes shipped with quantkit (`quantkit recipes list` with no folder lists them), installed as the
`quantkit_recipes` package."""
