"""Model families: one folder per family (its source loading, reference, graph variants, tokenizer and prompt)."""
