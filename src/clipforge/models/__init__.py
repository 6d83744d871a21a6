"""Model library: registry, build, save/load, importers, tokenizer, preprocessing."""
