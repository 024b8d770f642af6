"""Registry: the family registry (`families`), versioned checkpoints (`export`, `versions`), their verification
and Hub download (`load`), the model card (`card`), Hub publishing (`publish`) and `routerforge list` (`cli`)."""
